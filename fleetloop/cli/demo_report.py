"""The demo's closing report: before/after per condition, and where to look next."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fleetloop.platform.settings import Settings

__all__ = ["REPORT_COLUMNS", "before_after", "render_before_after", "where_next"]

REPORT_COLUMNS = {  # key in a drive's by_condition row -> column heading
    "collisions_per_1000_km": "collisions",
    "near_misses_per_1000_km": "near misses",
    "phantom_brakes_per_1000_km": "phantom brakes",
    "fallback_activations_per_1000_km": "fallback acts",
    "progress_vs_expert": "progress",
}


def before_after(
    before: dict[str, Any], after: dict[str, Any], degraded: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per condition both drives met: each column's value before and after, and on the degraded model
    while its canaries drove it (``degraded``: its rollout drive; "-" where they met no such condition)."""
    rows = []
    nan = dict.fromkeys(REPORT_COLUMNS, math.nan)
    for cond in before["by_condition"]:
        if cond not in after["by_condition"]:
            continue
        sides = {"before": before["by_condition"][cond], "after": after["by_condition"][cond]}
        if degraded is not None and degraded.get("by_condition") is not None:
            sides["degraded"] = degraded["by_condition"].get(cond, nan)
        rows.append({"condition": cond, **{k: {side: r[k] for side, r in sides.items()} for k in REPORT_COLUMNS}})
    return rows


def _num(x: float | None, key: str) -> str:
    if x is None or math.isnan(x):  # None: under a km driven in the condition (no rate)
        return "-"
    return f"{x:.3f}" if key == "progress_vs_expert" else f"{x:,.0f}"


def render_before_after(
    console: Console, rows: list[dict[str, Any]], before_v: str, after_v: str, degraded_v: str | None = None
) -> None:
    """The table: per condition, rates per 1,000 km and progress against the expert, before and after (one row
    per condition when production did not change), and the degraded model's on its canaries until rolled back."""
    t = Table(
        title="the fleet before and after, per 1,000 km (progress: share of the expert's distance)", box=box.SIMPLE_HEAD
    )
    t.add_column("condition")
    t.add_column("model")
    for heading in REPORT_COLUMNS.values():
        t.add_column(heading, justify="right")
    sides = [("before", f"before v{before_v}")]
    if before_v != after_v:
        sides.append(("after", f"after v{after_v}"))
    if degraded_v is not None:
        sides.append(("degraded", f"degraded v{degraded_v}"))
    for r in rows:
        for i, (side, label) in enumerate(sides):
            if side not in r["progress_vs_expert"]:
                continue
            t.add_row(r["condition"] if i == 0 else "", label, *(_num(r[k][side], k) for k in REPORT_COLUMNS))
    console.print(t)


def where_next(settings: Settings) -> list[str]:
    """Where to look next, with this stack's addresses."""
    name = settings.model_name
    return [
        "`fleetloop watch` — a live dashboard: fleet throughput, safety rates, fallback reasons, the pipeline, alerts",
        "`fleetloop status` — the stack; `fleetloop down` stops it",
        f"MLflow: {settings.tracking_uri} — the training and validation runs",
        f"Prometheus: {settings.prometheus_uri} — the fleet's metrics (where installed)",
        f"`fleetloop model history {name}` — every stage transition with who, when and why",
        f"`fleetloop ota history {name}` — every rollout: each wave's verdict with its evidence",
        "`fleetloop ota releases` — the signed releases and their waves",
    ]
