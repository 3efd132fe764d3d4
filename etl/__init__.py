"""mmlake: a Lance data lake for multimodal (vision-language) training data."""

import os

# Lance's Rust logger warns on routine events ("No existing dataset ..., it will be created") when a
# job creates a table; keep errors only unless the user asks for more.
os.environ.setdefault("LANCE_LOG", "error")

__version__ = "0.1.0"
