"""Printing job summaries the same way for every command, with the counters' labels (etl/runlog.py)."""
from __future__ import annotations

from collections.abc import Mapping

GROUPS = ("removed", "errors")  # `group.member` counters, printed as a total and one line per member


def print_counts(title: str, counts: Mapping[str, float]) -> None:
    """`counts` as aligned `label  value` lines in the labels' order; `errors.<kind>` (and `removed.<reason>`)
    keys are summed under one heading, each kind below it by its name (the `errors.kind` value)."""
    from etl.runlog import COUNTER_LABELS, counter_label

    plain = {k: v for k, v in counts.items() if "." not in k and k not in GROUPS}
    grouped = {g: {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith(g + ".")} for g in GROUPS}
    order = list(COUNTER_LABELS)
    keys = sorted(plain, key=lambda k: (order.index(k) if k in order else len(order), k))
    lines = [(counter_label(k), _fmt(k, plain[k])) for k in keys]
    for group, members in grouped.items():
        if members or group == "errors":
            lines.append((counter_label(group), _fmt(group, sum(members.values()))))
            lines += [(f"  {m}", _fmt(m, members[m])) for m in sorted(members)]
    width = max(len(label) for label, _ in lines) + 2
    print(f"{title}:")
    for label, value in lines:
        print(f"  {label:<{width}} {value}")


def _fmt(key: str, v: float) -> str:
    if key.endswith("bytes_added"):
        return _size(v)
    return f"{v:,.3f}" if isinstance(v, float) and not v.is_integer() else f"{int(v):,}"


def _size(n: float) -> str:
    units = ["bytes", "KB", "MB", "GB", "TB"]
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{int(n):,} bytes" if step == 0 else f"{n:,.1f} {units[step]}"
