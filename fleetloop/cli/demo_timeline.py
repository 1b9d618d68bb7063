"""The demo's one picture: the story's steps on the wall clock, and the fleet's safety rates over simulated time
before and after the loop turned (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_timeline"]

_DRIVE_STYLE = {
    "before": ("tab:red", "production before the loop"),
    "after": ("tab:green", "the new model, wave by wave"),
    "degraded": ("tab:purple", "the degraded model's rollout"),
}


def plot_timeline(path: Path, steps: list[dict[str, Any]], drives: dict[str, dict[str, Any]]) -> Path:
    """Write the PNG to ``path``.

    ``steps``: ``{"title", "start_s", "end_s", "skipped"}`` per story step (wall clock since the demo started);
    ``drives``: "before" / "after" / "degraded" -> a drive step's summary (its ``timeline`` and ``fog_onset_s``;
    a rollout drive's ``rollout.waves``: when each wave started and the outcome, in simulated s)."""
    # Imported when plotting: matplotlib costs ~1 s (measured) that no other demo step needs.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rates, ax_steps) = plt.subplots(2, 1, figsize=(9, 6.2), gridspec_kw={"height_ratios": [3, 2]})
    where = ax_rates.get_xaxis_transform()  # x in data, y in axes fraction
    fog_s = None
    for key, d in drives.items():
        color, label = _DRIVE_STYLE.get(key, ("tab:blue", key))
        pts = d.get("timeline") or []
        t = [p["t_s"] for p in pts]
        ax_rates.plot(
            t,
            [p["collisions_plus_near_misses_per_vehicle_h"] for p in pts],
            color=color,
            marker="o",
            ms=3,
            label=f"{label} (v{d['model']}): collisions + near misses",
        )
        ax_rates.plot(
            t,
            [p["fallback_activations_per_vehicle_h"] for p in pts],
            color=color,
            ls="--",
            label=f"{label}: fallback activations",
        )
        fog_s = d.get("fog_onset_s", fog_s)
        for i, w in enumerate((d.get("rollout") or {}).get("waves", [])):  # the rollout's waves on the drive's clock
            ax_rates.axvline(w["t_s"], color=color, lw=0.8, ls=":")
            ax_rates.text(w["t_s"], 0.9 - 0.07 * i, f" {w['label']}", color=color, fontsize=7, transform=where)
    if fog_s is not None:
        ax_rates.axvspan(fog_s, ax_rates.get_xlim()[1], color="0.88", zorder=0)
        ax_rates.text(fog_s, 0.97, "  the fog bank forms (thick after 60 s)", va="top", fontsize=8, transform=where)
    ax_rates.set_xlabel("simulated time [s]")
    ax_rates.set_ylabel("events per vehicle-hour")
    ax_rates.set_title("the fleet's safety rates, clear weather then fog")
    ax_rates.legend(fontsize=7, loc="center right", framealpha=0.9)

    for i, s in enumerate(steps):
        width = max(s["end_s"] - s["start_s"], 0.5)
        ax_steps.barh(
            i,
            width,
            left=s["start_s"],
            color="0.8" if s["skipped"] else "tab:blue",
            hatch="//" if s["skipped"] else None,
        )
        label = s["title"] + (" (skipped)" if s["skipped"] else "")
        ax_steps.text(s["start_s"] + width, i, f" {label}", va="center", fontsize=7)
    ax_steps.set_yticks([])
    ax_steps.invert_yaxis()
    ax_steps.set_xlabel("wall-clock time since the demo started [s]")
    ax_steps.set_title("the story's steps")
    right = max((s["end_s"] for s in steps), default=1.0)
    ax_steps.set_xlim(0, right * 1.45)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
