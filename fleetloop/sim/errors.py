"""Errors of the world, grouped by who is at fault.

    SimError                 base of every error ``fleetloop.sim`` raises on purpose
    ├── ScenarioError        a scenario / weather description is invalid (also a ValueError)
    └── StateError           a state or control tensor does not fit the world (also a ValueError)

``sim`` imports nothing else of fleetloop, so the CLI maps these onto its own exit codes
(both are bad input: exit 2). Every message says what was wrong and what to do.
"""

from __future__ import annotations

__all__ = ["ScenarioError", "SimError", "StateError"]


class SimError(Exception):
    """Base of every error the world raises on purpose."""


class ScenarioError(SimError, ValueError):
    """A scenario, weather or hazard description is invalid; fix the description."""


class StateError(SimError, ValueError):
    """A state, control tensor or step size does not fit the world it is used with."""
