"""The crash test hook's setting: which write points it names and how often it fires."""

from __future__ import annotations

import random

from billbee_pulpo_pipeline.defs.crash import should_crash


def test_unset_or_other_points_never_crash():
    assert not should_crash("create", None)
    assert not should_crash("create", "")
    assert not should_crash("create", "cancel,label")


def test_named_points_and_star_always_crash():
    assert should_crash("create", "create")
    assert should_crash("label", "create,label")
    assert should_crash("stock", "*")


def test_a_probability_crashes_about_that_often():
    random.seed(7)
    hits = sum(should_crash("create", "*@0.1") for _ in range(5000))
    assert 350 < hits < 650
    assert not any(should_crash("create", "*@0") for _ in range(100))
