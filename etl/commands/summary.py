"""Printing job summaries the same way for every command."""
from __future__ import annotations

from collections.abc import Mapping


def print_counts(title: str, counts: Mapping[str, float]) -> None:
    """`counts` as aligned lines; `errors.<kind>` keys are grouped under one `errors` heading."""
    plain = {k: v for k, v in counts.items() if not k.startswith("errors.")}
    errors = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("errors.")}
    print(f"{title}:")
    width = max([len(k) for k in [*plain, *errors]] + [6]) + 2
    for key in sorted(plain):
        print(f"  {key:<{width}} {_fmt(plain[key])}")
    print(f"  {'errors':<{width}} {_fmt(sum(errors.values()))}")
    for kind in sorted(errors):
        print(f"    {kind:<{width - 2}} {_fmt(errors[kind])}")


def _fmt(v: float) -> str:
    return f"{v:,.3f}" if isinstance(v, float) and not v.is_integer() else f"{int(v):,}"
