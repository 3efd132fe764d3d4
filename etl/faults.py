"""Fault injection for crash-consistency tests: die like kill -9 at a named commit point.

`MMLAKE_FAULT=after_samples:3` makes the process exit abruptly (os._exit, no cleanup, no flush) the
3rd time it passes the point `after_samples`. Unset (always, in production) it costs one dict lookup.
"""
from __future__ import annotations

import os
from collections import Counter

ENV = "MMLAKE_FAULT"
_passed: Counter = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _passed[name] += 1
    if _passed[name] >= int(nth or 1):
        os._exit(137)
