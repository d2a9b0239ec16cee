"""Test hook: die like SIGKILL right after a remote write, before the ledger records it.

`BPP_TEST_CRASH_AFTER` names the write points (`create`, `label`, `stock`, … see each writer's module doc):
one point, several (`create,label`) or `*` for every point; `@p` makes each pass crash with probability p
(`*@0.02`, the chaos run). Unset, as in production, it costs one environment lookup per write.
"""

from __future__ import annotations

import os
import random

CRASH_ENV = "BPP_TEST_CRASH_AFTER"


def should_crash(step: str, setting: str | None) -> bool:
    """Whether `setting` (the env value) asks for a crash at `step` this time."""
    if not setting:
        return False
    points, _, probability = setting.partition("@")
    if step not in points.split(",") and points != "*":
        return False
    return not probability or random.random() < float(probability)


def crash_point(step: str) -> None:
    """Exit with 137, as a SIGKILL would, when the test hook asks for it at `step`."""
    if should_crash(step, os.environ.get(CRASH_ENV)):
        os._exit(137)
