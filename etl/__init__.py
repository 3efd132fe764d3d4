"""mmlake: a Lance data lake for multimodal (vision-language) training data."""

__version__ = "0.1.0"
