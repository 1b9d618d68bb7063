"""Number options of every command: finite, within the range that means something, or exit 2 naming the option.

click's ``IntRange`` / ``FloatRange`` let ``nan`` through (every comparison with NaN is false) and ``float`` takes
``inf``; a NaN duration then surfaces deep inside a run as a traceback. Every ``int`` / ``float`` option and
argument of the ``fleetloop`` command declares its type here instead::

    minutes: float = typer.Option(1.0, "--minutes", click_type=POSITIVE_FLOAT, help="Simulated minutes.")

and a bad value stops the command before it does anything, with click's usage error (exit 2)::

    Invalid value for '--minutes': nan is not a finite number; valid: a number > 0.

``tests/unit/test_cli_number_options.py`` walks the whole typer app, so a new number option without one of these
types fails the suite.
"""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = [
    "ANY_INT",
    "COUNT",
    "NON_NEGATIVE_FLOAT",
    "POSITIVE_FLOAT",
    "POSITIVE_INT",
    "SHARE",
    "UNIT_INTERVAL",
    "Number",
    "at_least",
]


class Number(click.ParamType):
    """An ``int`` or ``float`` that is finite and inside ``[low, high]`` (an end excluded when ``*_open``).

    Args:
        kind: ``int`` or ``float``.
        low / high: the bounds (None: unbounded on that side).
        low_open / high_open: exclude that bound (``low=0, low_open=True``: strictly positive).
    """

    def __init__(
        self,
        kind: type[int] | type[float],
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
    ) -> None:
        if kind not in (int, float):
            raise TypeError(f"a number option is an int or a float, not {kind.__name__}")
        self.kind = kind
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.name = "integer" if kind is int else "float"

    def valid(self) -> str:
        """The valid range in words: ``a number > 0``, ``an integer >= 1``, ``a number in (0, 1]``."""
        what = "an integer" if self.kind is int else "a number"
        lo = None if self.low is None else ("> " if self.low_open else ">= ") + _num(self.low)
        hi = None if self.high is None else ("< " if self.high_open else "<= ") + _num(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if lo or hi:
            return f"{what} {lo or hi}"
        return "any integer" if self.kind is int else "any finite number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number; valid: {self.valid()}", param, ctx)
        try:
            x = value if isinstance(value, self.kind) else self.kind(str(value).strip())
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            self.fail(f"{value!r} is not {what}; valid: {self.valid()}", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value} is not a finite number; valid: {self.valid()}", param, ctx)
        below = self.low is not None and (x <= self.low if self.low_open else x < self.low)
        above = self.high is not None and (x >= self.high if self.high_open else x > self.high)
        if below or above:
            self.fail(f"{value} is out of range; valid: {self.valid()}", param, ctx)
        return x

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "INTEGER" if self.kind is int else "FLOAT"

    def __repr__(self) -> str:
        return f"Number({self.valid()})"


def _num(x: float) -> str:
    return f"{x:g}"


def at_least(low: float, kind: type[int] | type[float] = int) -> Number:
    """``low`` or more (e.g. ``--min-new-frames`` from 2)."""
    return Number(kind, low)


ANY_INT = Number(int)  # seeds: every integer keys a different draw
POSITIVE_INT = Number(int, 1)  # counts of things that must exist: vehicles, shards, ticks, waves
COUNT = Number(int, 0)  # sizes and limits where 0 means something (none / all)
POSITIVE_FLOAT = Number(float, 0, low_open=True)  # durations and budgets
NON_NEGATIVE_FLOAT = Number(float, 0)  # ages
SHARE = Number(float, 0, 1, low_open=True)  # a fraction of the fleet
UNIT_INTERVAL = Number(float, 0, 1)  # a probability or a share that may be none
