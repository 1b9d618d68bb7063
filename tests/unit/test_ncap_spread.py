"""The NCAP spread benchmark's arithmetic: the worst loss of a pair and the gate's self-rejections per margin."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ncap_spread.py"
spec = importlib.util.spec_from_file_location("ncap_spread", SCRIPT)
assert spec is not None and spec.loader is not None
ncap_spread = importlib.util.module_from_spec(spec)
sys.modules["ncap_spread"] = ncap_spread
spec.loader.exec_module(ncap_spread)


def seed(ccrs: float, cpna: float) -> dict[str, dict[str, float]]:
    return {"clear": {"CCRs": ccrs, "CPNA": 10.0}, "fog_0.8": {"CCRs": 45.0, "CPNA": cpna}}


def test_the_worst_loss_is_the_largest_drop_of_any_condition_and_group() -> None:
    assert ncap_spread.worst_loss(seed(45.0, 10.0), seed(44.5, 9.0)) == 1.0
    assert ncap_spread.worst_loss(seed(44.0, 9.0), seed(45.0, 10.0)) == 0.0  # gains and ties only: no loss


def test_self_rejections_count_ordered_pairs_over_the_margin() -> None:
    per_seed = [seed(45.0, 10.0), seed(45.0, 9.5), seed(44.75, 10.0)]
    # pairs (baseline, candidate) losing more than the margin: (0,1) 0.5, (2,1) 0.5, (0,2) 0.25, (1,2) 0.25
    assert ncap_spread.rejected_share(per_seed, 0.0) == (4, 6)
    assert ncap_spread.rejected_share(per_seed, 0.25) == (2, 6)
    assert ncap_spread.rejected_share(per_seed, 0.5) == (0, 6)


def test_spread_rows_give_min_max_and_spread_per_condition_and_group() -> None:
    rows = ncap_spread.spread_rows([seed(45.0, 10.0), seed(44.0, 9.5)])
    fog = next(r for r in rows if r["condition"] == "fog_0.8" and r["group"] == "CPNA")
    assert (fog["min"], fog["max"], fog["spread"]) == (9.5, 10.0, 0.5)
