"""The stage policy of the model registry: pure functions, no I/O, no clock.

A version's stage moves only along the edges of :data:`ALLOWED`; a few edges carry a condition:

- ``candidate|staging -> production`` only as the *genesis* release, while no version is or ever was in production;
- ``canary -> production`` only through a rollout (``via_rollout=True``, passed by the OTA controller);
- ``production -> archived`` happens when another version becomes production; asked for alone it would
  leave the fleet without a production model, so it needs ``force``.

``force`` (with a reason) allows any change of stage. Whatever the route, :func:`plan_transition` also plans the
side effects that keep the registry consistent: at most one version in production and one in canary, and the
``production`` / ``canary`` aliases pointing at exactly those versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from fleetloop.platform.errors import TransitionNotAllowed, UserInputError

__all__ = [
    "ALLOWED",
    "MANAGED_ALIASES",
    "AliasChange",
    "RegistrySnapshot",
    "Stage",
    "StageChange",
    "TransitionPlan",
    "allowed_targets",
    "desired_aliases",
    "parse_stage",
    "plan_transition",
]


class Stage(StrEnum):
    """Where a model version stands in its life."""

    CANDIDATE = "candidate"
    STAGING = "staging"
    CANARY = "canary"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    REJECTED = "rejected"


# The edges a plain promotion may take. ``None`` is a version registered outside fleetloop (no stage tag yet):
# it can only be adopted as a candidate. Conditional edges are listed here and checked in plan_transition.
ALLOWED: Mapping[Stage | None, frozenset[Stage]] = {
    None: frozenset({Stage.CANDIDATE}),
    Stage.CANDIDATE: frozenset({Stage.STAGING, Stage.REJECTED, Stage.PRODUCTION}),
    Stage.STAGING: frozenset({Stage.CANARY, Stage.REJECTED, Stage.ARCHIVED, Stage.PRODUCTION}),
    Stage.CANARY: frozenset({Stage.PRODUCTION, Stage.STAGING, Stage.REJECTED}),
    Stage.PRODUCTION: frozenset({Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.STAGING}),
    Stage.REJECTED: frozenset(),
}

# Aliases the registry owns: each points at the one version in the stage of the same name, or is absent.
MANAGED_ALIASES: tuple[Stage, ...] = (Stage.PRODUCTION, Stage.CANARY)

_GENESIS_FROM = frozenset({Stage.CANDIDATE, Stage.STAGING})


def parse_stage(value: str) -> Stage:
    """The stage named ``value`` (case-insensitive), or a UserInputError that lists the stages."""
    try:
        return Stage(value.strip().lower())
    except ValueError:
        names = ", ".join(s.value for s in Stage)
        raise UserInputError(f"{value!r} is not a stage; use one of: {names}") from None


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the policy needs to know about one registered model, read at one moment."""

    stages: Mapping[str, Stage | None]
    """Stage of every version (``None``: registered outside fleetloop, no stage tag)."""
    aliases: Mapping[str, str]
    """Alias -> version, as the registry holds them now (all aliases, managed or not)."""
    had_production: bool
    """Whether any version was ever in production (from the transition log); ends the genesis window."""


@dataclass(frozen=True)
class StageChange:
    """One version moving from one stage to another, with why."""

    version: str
    from_stage: Stage | None
    to_stage: Stage
    reason: str
    forced: bool = False
    genesis: bool = False
    via_rollout: bool = False
    caused_by: str | None = None
    """The version whose promotion caused this change (a replaced production, a displaced canary)."""


@dataclass(frozen=True)
class AliasChange:
    """Point ``alias`` at ``version``, or remove it when ``version`` is None."""

    alias: str
    version: str | None


@dataclass(frozen=True)
class TransitionPlan:
    """What one promotion does, in the order the shell must carry it out."""

    changes: tuple[StageChange, ...]
    """The requested change first (absent when the version is already there), then its side effects."""
    aliases: tuple[AliasChange, ...]
    """Alias moves that make the managed aliases match the stages after ``changes``."""

    @property
    def is_noop(self) -> bool:
        return not self.changes and not self.aliases


def allowed_targets(current: Stage | None, *, genesis_open: bool, via_rollout: bool = False) -> list[Stage]:
    """Stages a version in ``current`` may move to without force, given the conditions as they stand."""
    return [
        s
        for s in Stage
        if s is not current
        and _edge_refusal(current, s, genesis_open=genesis_open, via_rollout=via_rollout, in_production=[]) is None
    ]


def desired_aliases(stages: Mapping[str, Stage | None]) -> dict[str, str]:
    """The managed aliases implied by ``stages``: each points at the single version in that stage."""
    out: dict[str, str] = {}
    for stage in MANAGED_ALIASES:
        holders = sorted((v for v, s in stages.items() if s is stage), key=_version_key)
        if holders:
            # The policy keeps one holder; if a crash left two, the newest wins and the next plan archives the rest.
            out[stage.value] = holders[-1]
    return out


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (-1, v)


def _refusal(version: str, current: Stage | None, to: Stage, why: str, genesis_open: bool) -> TransitionNotAllowed:
    here = current.value if current else "no stage"
    allowed = [s.value for s in allowed_targets(current, genesis_open=genesis_open)]
    if current is Stage.CANARY:
        allowed.append("production (through a rollout)")
    listed = ", ".join(allowed) if allowed else "nowhere (a final stage)"
    return TransitionNotAllowed(
        f"version {version} cannot go from {here} to {to.value}: {why}. "
        f"From {here} it may go to: {listed}. "
        "To override the policy, repeat with --force and --reason TEXT (force=True, reason=... in code)."
    )


def plan_transition(
    snapshot: RegistrySnapshot,
    version: str,
    to: Stage,
    *,
    reason: str = "",
    force: bool = False,
    via_rollout: bool = False,
) -> TransitionPlan:
    """Plan moving ``version`` to stage ``to``, or raise TransitionNotAllowed saying what is allowed instead.

    A version already in ``to`` gives a plan without a requested change that only repairs side effects
    (aliases, a second production left by an interrupted promotion), so a retried promotion completes.
    """
    reason = reason.strip()
    if force and not reason:
        raise UserInputError("a forced transition needs a reason; repeat with --reason TEXT (reason=... in code)")
    if version not in snapshot.stages:
        raise UserInputError(f"version {version} is not in the snapshot")  # the shell checks existence first
    current = snapshot.stages[version]
    in_production = [v for v, s in snapshot.stages.items() if s is Stage.PRODUCTION]
    genesis_open = not in_production and not snapshot.had_production

    changes: list[StageChange] = []
    if current is not to:
        refusal = _edge_refusal(
            current, to, genesis_open=genesis_open, via_rollout=via_rollout, in_production=in_production
        )
        if refusal is not None and not force:
            raise _refusal(version, current, to, refusal, genesis_open)
        changes.append(
            StageChange(
                version=version,
                from_stage=current,
                to_stage=to,
                reason=reason,
                # Only where force overrode the policy: a forced move along an open edge is an ordinary one.
                forced=refusal is not None,
                genesis=refusal is None and to is Stage.PRODUCTION and current in _GENESIS_FROM,
                via_rollout=refusal is None and current is Stage.CANARY and to is Stage.PRODUCTION,
            )
        )

    # Side effects: one production, one canary.
    if to is Stage.PRODUCTION:
        for other in sorted(in_production, key=_version_key):
            if other != version:
                changes.append(
                    StageChange(
                        version=other,
                        from_stage=Stage.PRODUCTION,
                        to_stage=Stage.ARCHIVED,
                        reason=f"replaced in production by version {version}",
                        forced=False,
                        caused_by=version,
                    )
                )
    if to is Stage.CANARY:
        others = sorted((v for v, s in snapshot.stages.items() if s is Stage.CANARY and v != version), key=_version_key)
        if others and current is not Stage.CANARY and not force:
            raise _refusal(
                version,
                current,
                to,
                f"version {others[0]} is already in canary; finish its rollout or roll it back (-> staging) first",
                genesis_open,
            )
        for other in others:
            changes.append(
                StageChange(
                    version=other,
                    from_stage=Stage.CANARY,
                    to_stage=Stage.STAGING,
                    reason=f"displaced from canary by version {version}",
                    forced=force,
                    caused_by=version,
                )
            )

    after = dict(snapshot.stages)
    for c in changes:
        after[c.version] = c.to_stage
    want = desired_aliases(after)
    alias_moves: list[AliasChange] = []
    for stage in MANAGED_ALIASES:
        have, need = snapshot.aliases.get(stage.value), want.get(stage.value)
        if have != need:
            alias_moves.append(AliasChange(stage.value, need))
    return TransitionPlan(changes=tuple(changes), aliases=tuple(alias_moves))


def _edge_refusal(
    current: Stage | None, to: Stage, *, genesis_open: bool, via_rollout: bool, in_production: list[str]
) -> str | None:
    """Why the policy refuses ``current -> to`` (None: it allows it)."""
    if to not in ALLOWED[current]:
        return "the stage policy has no such edge"
    if to is Stage.PRODUCTION and current in _GENESIS_FROM and not genesis_open:
        held = f"version {in_production[0]} is in production" if in_production else "the genesis release happened"
        return f"{held}; a new version reaches production only through a canary rollout"
    if to is Stage.PRODUCTION and current is Stage.CANARY and not via_rollout:
        return "canary reaches production only through a rollout (`fleetloop ota rollout`)"
    if current is Stage.PRODUCTION and to is Stage.ARCHIVED:
        return "production is archived when another version replaces it; archiving it alone leaves no production"
    return None
