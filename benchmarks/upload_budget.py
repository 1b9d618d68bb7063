"""How a vehicle's upload budget behaves over a long drive: the share of frames each upload policy sends.

The on-board trigger state alone (``edge_agent.triggers``, no world, no fleet): ``--vehicles`` vehicles drive
``--hours`` of steady signals in clear weather, or in clear weather until ``--fog-after-min`` and in fog after it
(their own visibility estimate), with every trigger quiet, so only the random sample and the budget decide. The
table gives the share of frames uploaded so far at each mark, per policy (``sim run --uploads``), against the
budget: what a day of driving looks like, and that no drive of ten minutes or more goes over it (ADR 0121, 0194).

    python benchmarks/upload_budget.py                       # 256 vehicles, 2 hours, clear then fog after 60 min
    python benchmarks/upload_budget.py --hours 0.5 --vehicles 32
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from fleetloop.edge_agent.triggers import UPLOAD_POLICIES, TriggerInputs, TriggerState, triggers_step, upload_policy

DT_S = 0.1  # [s] the world's tick
MARKS_MIN = (1, 10, 30, 60, 120, 240, 480, 1440)  # minutes of driving at which the share is read


def drive(
    policy: str, vehicles: int, ticks: int, fog_after: int | None, budget: float, compiled: bool = True
) -> dict[int, float]:
    """Share of frames uploaded after each mark (ticks) for one policy: steady clear signals, fog from
    ``fog_after`` ticks on (None: never)."""
    cfg = upload_policy(policy, budget, DT_S)
    state = TriggerState.init(vehicles, cfg=cfg)
    zero = torch.zeros(vehicles)

    def signals(visibility_m: float) -> TriggerInputs:
        return TriggerInputs(
            fallback_started=torch.zeros(vehicles, dtype=torch.bool),
            ego_accel_mps2=zero,
            perceived_ttc_s=torch.full((vehicles,), float("inf")),
            model_accel_mps2=zero,
            fallback_accel_mps2=zero,
            model_valid=torch.ones(vehicles, dtype=torch.bool),
            uncertainty=zero,
            visibility_m=torch.full((vehicles,), visibility_m),
            friction=torch.full((vehicles,), 0.9),
        )

    clear, fog = signals(2000.0), signals(100.0)
    ids = torch.arange(vehicles)
    marks = {round(m * 60 / DT_S) for m in MARKS_MIN if m * 60 / DT_S <= ticks} | {ticks}
    out: dict[int, float] = {}
    for tick in range(ticks):
        inp = fog if fog_after is not None and tick >= fog_after else clear
        state, _ = triggers_step(cfg, state, inp, ids, tick, seed=5, compiled=compiled)
        if tick + 1 in marks:
            out[tick + 1] = float(state.uploaded.sum()) / (vehicles * (tick + 1))
    return out


def render(rows: dict[str, dict[int, float]], budget: float, sizes: str) -> str:
    marks = sorted({m for r in rows.values() for m in r})
    head = " | ".join(f"{m * DT_S / 60:g} min" for m in marks)
    lines = [
        f"upload budget over a drive ({sizes}); share of frames uploaded so far, budget {100 * budget:g} %",
        "",
        f"| policy | {head} |",
        "|---|" + "---:|" * len(marks),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[m]:.2f} %" for m in marks) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vehicles", type=int, default=256)
    p.add_argument("--hours", type=float, default=2.0, help="driving time [h]")
    p.add_argument("--fog-after-min", type=float, default=60.0, help="fog from this minute on (negative: never) [min]")
    p.add_argument("--budget", type=float, default=0.02, help="upload budget: share of frames")
    p.add_argument("--eager", action="store_true", help="do not compile the trigger step (short runs)")
    p.add_argument("--policies", default=",".join(UPLOAD_POLICIES), help="upload policies, comma-separated")
    a = p.parse_args(argv)
    policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    if not policies or any(x not in UPLOAD_POLICIES for x in policies):
        p.error(f"--policies: name policies of {', '.join(UPLOAD_POLICIES)}, got {a.policies!r}")
    if a.vehicles < 1 or not a.hours > 0:
        p.error("--vehicles and --hours must be positive")
    torch.set_num_threads(1)
    ticks = round(a.hours * 3600 / DT_S)
    fog_after = None if a.fog_after_min < 0 else round(a.fog_after_min * 60 / DT_S)
    t0 = time.monotonic()
    rows = {name: drive(name, a.vehicles, ticks, fog_after, a.budget, not a.eager) for name in policies}
    weather = "clear" if fog_after is None else f"clear, fog from {a.fog_after_min:g} min"
    print(render(rows, a.budget, f"{a.vehicles} vehicles, {a.hours:g} h, {weather}; {time.monotonic() - t0:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
