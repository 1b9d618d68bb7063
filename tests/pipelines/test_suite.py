"""The frozen held-out suite: stable identity, refused when changed, held out by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetloop.pipelines.suite import (
    HELD_OUT_SEED_BASE,
    NCAP_CCR,
    HeldOutSuite,
    default_suite,
    frozen_suite,
    load_suite,
    suite_dir,
    tiny_suite,
)
from fleetloop.platform.errors import DataError, UserInputError


def test_the_default_suite_holds_the_ccr_matrix_and_unseen_intensities_over_several_seeds() -> None:
    s = default_suite()
    assert len(s.seeds) >= 3
    assert {sl.scenario for sl in s.slices} >= {NCAP_CCR}
    strengths = {st for sl in s.slices for _, st in sl.condition.patches}
    assert strengths and all(0 < x < 1 for x in strengths - {1.0})  # intermediate, steady intensities
    assert {sl.condition.data_condition for sl in s.slices} >= {"clear", "fog"}


def test_the_hash_is_stable_and_changes_with_the_content() -> None:
    assert default_suite().content_hash == default_suite().content_hash
    assert default_suite(seeds=3).content_hash != default_suite(seeds=4).content_hash


def test_a_stored_suite_survives_a_round_trip(tmp_path: Path) -> None:
    first = frozen_suite(tmp_path, tiny_suite())
    again = frozen_suite(tmp_path, tiny_suite())
    assert again == first and again.content_hash == first.content_hash


def test_a_frozen_suite_that_was_edited_is_refused(tmp_path: Path) -> None:
    frozen_suite(tmp_path, tiny_suite())
    path = suite_dir(tmp_path) / "heldout-tiny.json"
    d = json.loads(path.read_bytes())
    d["seeds"] = [HELD_OUT_SEED_BASE + 7]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="must not change"):
        load_suite(path)


def test_a_suite_seed_outside_the_held_out_range_is_refused() -> None:
    s = tiny_suite()
    with pytest.raises(UserInputError, match="held-out range"):
        HeldOutSuite(s.name, s.slices, (1,))
