"""Every number option of every `fleetloop` command refuses NaN, infinity and values outside its range, with exit 2
and a message naming the option and the valid range, before the command does anything.

The options are found by walking the typer app, so an option added later is covered without touching this file."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import click
import pytest
import typer

from fleetloop.cli.main import app, main
from fleetloop.cli.validate_args import Number


def _commands(cmd: click.Command, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


ROOT = typer.main.get_command(app)
NUMBER_PARAMS = [
    (path, p)
    for path, cmd in _commands(ROOT, ())
    for p in cmd.params
    if isinstance(p.type, click.types.IntParamType | click.types.FloatParamType | Number)
]
FLOAT_PARAMS = [(path, p) for path, p in NUMBER_PARAMS if p.type.name == "float"]  # Number(float) is named so too
BOUNDED_PARAMS = [(path, p) for path, p in NUMBER_PARAMS if isinstance(p.type, Number) and p.type.low is not None]


def _id(item: tuple[tuple[str, ...], click.Parameter]) -> str:
    return " ".join((*item[0], item[1].opts[0]))


@pytest.fixture
def fleetloop(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """Run the console entry point in this process; (exit code, stderr)."""

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["fleetloop", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        return int(exited.value.code or 0), capsys.readouterr().err

    return run


def _bad(path: tuple[str, ...], param: click.Parameter, value: str) -> list[str]:
    # Only the bad value on the line (after placeholders for the arguments before it): click converts it first, in
    # command-line order, before checking what is missing, so the command itself never runs.
    if not isinstance(param, click.Argument):
        return [*path, param.opts[0], value]
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    before = [p for p in cmd.params[: cmd.params.index(param)] if isinstance(p, click.Argument)]
    return [*path, *("x" for _ in before), value]


def _named(param: click.Parameter, output: str) -> bool:
    return any(f"'{o}" in output for o in param.opts) or f"'{(param.name or '').upper()}" in output


def test_the_walk_finds_the_options_users_meet() -> None:
    found = {_id(i) for i in NUMBER_PARAMS}
    assert {"sim run --minutes", "sim run --vehicles", "demo --minutes", "ota assign --share"} <= found


@pytest.mark.parametrize("item", NUMBER_PARAMS, ids=_id)
def test_every_number_option_declares_its_valid_range(item: tuple[tuple[str, ...], click.Parameter]) -> None:
    param = item[1]
    assert isinstance(param.type, Number), (
        f"{_id(item)} is a plain {param.type.name}; give it click_type= one of fleetloop.cli.validate_args "
        "(NaN and infinity pass click's own number types)"
    )


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("item", FLOAT_PARAMS, ids=_id)
def test_float_options_refuse_nan_and_infinity(
    fleetloop: Callable[..., tuple[int, str]], item: tuple[tuple[str, ...], click.Parameter], bad: str
) -> None:
    path, param = item
    assert isinstance(param.type, Number), f"{_id(item)} would take {bad}: declare it with a Number type"
    code, err = fleetloop(*_bad(path, param, bad))
    assert code == 2, err
    assert _named(param, err), err
    assert f"is not a finite number; valid: {param.type.valid()}" in err


@pytest.mark.parametrize("item", BOUNDED_PARAMS, ids=_id)
def test_values_below_the_range_are_refused(
    fleetloop: Callable[..., tuple[int, str]], item: tuple[tuple[str, ...], click.Parameter]
) -> None:
    path, param = item
    kind = param.type
    assert isinstance(kind, Number) and kind.low is not None
    below = kind.low if kind.low_open else kind.low - 1
    code, err = fleetloop(*_bad(path, param, str(kind.kind(below))))
    assert code == 2, err
    assert _named(param, err), err
    assert f"is out of range; valid: {kind.valid()}" in err


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_sim_run_minutes_says_what_is_valid(fleetloop: Callable[..., tuple[int, str]], bad: str) -> None:
    code, err = fleetloop("sim", "run", "--minutes", bad)
    assert code == 2
    why = "is out of range" if bad == "-1" else "is not a finite number"
    assert f"Invalid value for '--minutes': {bad} {why}; valid: a number > 0" in err


@pytest.mark.parametrize(
    ("kind", "text", "want"),
    [
        (Number(float, 0, low_open=True), "1e-9", 1e-9),
        (Number(float, 0, 1, low_open=True), "1", 1.0),
        (Number(int, 1), " 7 ", 7),
        (Number(int), "-3", -3),
    ],
)
def test_values_inside_the_range_pass_through(kind: Number, text: str, want: float) -> None:
    got = kind.convert(text, None, None)
    assert got == want and type(got) is kind.kind and math.isfinite(got)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (Number(float, 0, low_open=True), "a number > 0"),
        (Number(int, 0), "an integer >= 0"),
        (Number(float, 0, 1, low_open=True), "a number in (0, 1]"),
        (Number(int), "any integer"),
        (Number(float), "any finite number"),
    ],
)
def test_the_range_in_words(kind: Number, words: str) -> None:
    assert kind.valid() == words


def test_a_demo_fleet_too_small_to_judge_a_canary_is_refused(fleetloop: Callable[..., tuple[int, str]]) -> None:
    code, err = fleetloop("demo", "--vehicles", "4")  # its rollout once promoted the degraded model
    assert code == 2
    assert "Invalid value for '--vehicles': 4 is out of range; valid: an integer >= 16" in err
