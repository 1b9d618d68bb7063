"""The pure stage policy: every (from, to) pair, the genesis rule, production replacement, the aliases."""

from __future__ import annotations

import itertools

import pytest

from fleetloop.platform.errors import TransitionNotAllowed, UserInputError
from fleetloop.platform.registry.stages import (
    AliasChange,
    RegistrySnapshot,
    Stage,
    StageChange,
    allowed_targets,
    parse_stage,
    plan_transition,
)

C, S, K, P, A, R = Stage.CANDIDATE, Stage.STAGING, Stage.CANARY, Stage.PRODUCTION, Stage.ARCHIVED, Stage.REJECTED

# The table of docs/registry.md, written out independently of the implementation: plain promotions (no force,
# not via a rollout) once the genesis release has happened.
PLAIN_ALLOWED: set[tuple[Stage | None, Stage]] = {
    (None, C),
    (C, S),
    (C, R),
    (S, K),
    (S, R),
    (S, A),
    (K, S),
    (K, R),
    (A, S),
}
ALL_PAIRS = [(a, b) for a, b in itertools.product([None, *Stage], list(Stage)) if a is not b]


def snap(stages: dict[str, Stage | None], aliases: dict[str, str] | None = None, *, had_production: bool = True):
    return RegistrySnapshot(stages=stages, aliases=aliases or {}, had_production=had_production)


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS, ids=lambda s: s.value if s else "none")
def test_plain_promotion_follows_the_table(src: Stage | None, dst: Stage) -> None:
    state = snap({"1": src})
    if (src, dst) in PLAIN_ALLOWED:
        plan = plan_transition(state, "1", dst, reason="r")
        assert plan.changes[0] == StageChange("1", src, dst, "r")
    else:
        with pytest.raises(TransitionNotAllowed):
            plan_transition(state, "1", dst, reason="r")


@pytest.mark.parametrize(("src", "dst"), ALL_PAIRS, ids=lambda s: s.value if s else "none")
def test_force_with_a_reason_overrides_any_pair_and_says_so(src: Stage | None, dst: Stage) -> None:
    plan = plan_transition(snap({"1": src}), "1", dst, reason="incident 42", force=True)
    first = plan.changes[0]
    assert (first.version, first.from_stage, first.to_stage, first.reason) == ("1", src, dst, "incident 42")
    assert first.forced == ((src, dst) not in PLAIN_ALLOWED)


def test_force_without_a_reason_is_refused() -> None:
    with pytest.raises(UserInputError, match="--reason"):
        plan_transition(snap({"1": C}), "1", P, force=True, reason="  ")


def test_refusal_says_what_is_allowed_and_how_to_force() -> None:
    with pytest.raises(TransitionNotAllowed) as err:
        plan_transition(snap({"1": C}), "1", K)
    msg = str(err.value)
    assert "from candidate to canary" in msg
    assert "may go to: staging, rejected" in msg
    assert "--force" in msg and "--reason" in msg


def test_rejected_is_final_without_force() -> None:
    with pytest.raises(TransitionNotAllowed, match="nowhere"):
        plan_transition(snap({"1": R}), "1", S)
    assert allowed_targets(R, genesis_open=True) == []


# -- genesis ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [C, S])
def test_genesis_release_goes_straight_to_production_when_none_ever_was(src: Stage) -> None:
    plan = plan_transition(snap({"1": src, "2": C}, had_production=False), "1", P, reason="first model")
    assert plan.changes == (StageChange("1", src, P, "first model", genesis=True),)
    assert plan.aliases == (AliasChange("production", "1"),)


def test_no_second_genesis_while_a_production_exists() -> None:
    with pytest.raises(TransitionNotAllowed, match="version 1 is in production"):
        plan_transition(snap({"1": P, "2": C}, had_production=True), "2", P)


def test_no_second_genesis_after_production_was_archived() -> None:
    # The genesis window closes for good: a fleet that had a production model gets the next one through a rollout.
    with pytest.raises(TransitionNotAllowed, match="genesis release happened"):
        plan_transition(snap({"1": A, "2": C}, had_production=True), "2", P)


def test_forced_jump_to_production_is_marked_forced_not_genesis() -> None:
    plan = plan_transition(snap({"1": P, "2": C}), "2", P, force=True, reason="hotfix")
    assert plan.changes[0].forced and not plan.changes[0].genesis


# -- canary and production --------------------------------------------------------------------------


def test_canary_reaches_production_only_through_a_rollout() -> None:
    state = snap({"1": P, "2": K}, {"production": "1", "canary": "2"})
    with pytest.raises(TransitionNotAllowed, match="through a rollout"):
        plan_transition(state, "2", P)
    plan = plan_transition(state, "2", P, via_rollout=True, reason="rollout finished")
    assert plan.changes == (
        StageChange("2", K, P, "rollout finished", via_rollout=True),
        StageChange("1", P, A, "replaced in production by version 2", caused_by="2"),
    )
    assert set(plan.aliases) == {AliasChange("production", "2"), AliasChange("canary", None)}


def test_production_is_not_archived_alone_without_force() -> None:
    state = snap({"1": P}, {"production": "1"})
    with pytest.raises(TransitionNotAllowed, match="leaves no production"):
        plan_transition(state, "1", A)
    plan = plan_transition(state, "1", A, force=True, reason="recall")
    assert plan.changes == (StageChange("1", P, A, "recall", forced=True),)
    assert plan.aliases == (AliasChange("production", None),)


def test_canary_rollback_to_staging_removes_the_canary_alias() -> None:
    plan = plan_transition(snap({"1": P, "2": K}, {"production": "1", "canary": "2"}), "2", S, reason="regressed")
    assert plan.changes == (StageChange("2", K, S, "regressed"),)
    assert plan.aliases == (AliasChange("canary", None),)


def test_promotion_to_canary_sets_the_alias() -> None:
    plan = plan_transition(snap({"1": P, "2": S}, {"production": "1"}), "2", K)
    assert plan.aliases == (AliasChange("canary", "2"),)


def test_only_one_canary_at_a_time() -> None:
    state = snap({"1": P, "2": K, "3": S}, {"production": "1", "canary": "2"})
    with pytest.raises(TransitionNotAllowed, match="version 2 is already in canary"):
        plan_transition(state, "3", K)
    plan = plan_transition(state, "3", K, force=True, reason="urgent fix")
    assert plan.changes[1] == StageChange("2", K, S, "displaced from canary by version 3", forced=True, caused_by="3")
    assert plan.aliases == (AliasChange("canary", "3"),)


# -- retries and repair -----------------------------------------------------------------------------


def test_repeating_a_finished_promotion_does_nothing() -> None:
    plan = plan_transition(snap({"1": P, "2": S}, {"production": "1"}), "1", P)
    assert plan.is_noop


def test_repeating_an_interrupted_promotion_completes_it() -> None:
    # Crash after version 2 became production but before version 1 was archived and the alias moved.
    state = snap({"1": P, "2": P}, {"production": "1"})
    plan = plan_transition(state, "2", P, via_rollout=True)
    assert plan.changes == (StageChange("1", P, A, "replaced in production by version 2", caused_by="2"),)
    assert plan.aliases == (AliasChange("production", "2"),)


def test_unmanaged_aliases_are_left_alone() -> None:
    plan = plan_transition(snap({"1": C}, {"champion": "1"}, had_production=False), "1", P)
    assert plan.aliases == (AliasChange("production", "1"),)


def test_parse_stage_accepts_any_case_and_lists_stages_on_error() -> None:
    assert parse_stage(" Staging ") is S
    with pytest.raises(UserInputError, match="candidate, staging, canary, production, archived, rejected"):
        parse_stage("prod")
