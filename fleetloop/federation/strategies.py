"""Strategies by name: Flower's ``flwr.serverapp.strategy`` classes, checked against the round before anything starts.

``check_plan`` is pure: it refuses (``UserInputError``, exit 2) a strategy that cannot work with the round's
sample (Bulyan needs ``n >= 4f + 3`` replies, Krum and MultiKrum ``n >= 2f + 3``, the median a majority of honest
replies) and warns where the choice is legal but will not do what was asked (FedAvg, FedProx or FedAdam asked to
tolerate attackers follow any of them; a trimmed mean that trims less than the attackers' share).

``build_strategy`` constructs the strategy so that sampling stays with the round runner
(``fleetloop.federation.sampling``): Flower's own node sampling waits without limit for ``min_available_nodes``,
so the strategy is built to take every node of the sampled view it is handed (fraction 1, minimum 1), and
client-side evaluation is off (the server evaluates on its held-out set). The DP wrappers wrap the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetloop.federation.config import RoundsConfig
from fleetloop.federation.task import VEHICLE_ID_KEY, WEIGHT_KEY
from fleetloop.platform.errors import UserInputError

if TYPE_CHECKING:
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy import Strategy

__all__ = ["ROBUST", "build_strategy", "check_plan", "inner_strategy", "mean_train_metrics"]

ROBUST = frozenset({"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"})
"""Strategies built to tolerate Byzantine replies."""
_AVERAGING = frozenset({"fedavg", "fedprox", "fedadam"})
FEDPROX_DEFAULT_MU = 1.0
"""FedProx's mu when ``local.proximal_weight`` is 0 (the vehicles apply it as ``train_imitation``'s anchor weight)."""


def check_plan(strategy: str, sample_size: int, tolerated: int, trimmed_beta: float = 0.2) -> list[str]:
    """Warnings for a strategy asked to aggregate ``sample_size`` replies tolerating ``tolerated`` attackers;
    raises ``UserInputError`` where it cannot work at all."""
    n, f = sample_size, tolerated
    warnings: list[str] = []
    if f < 0:
        raise UserInputError(f"attackers to tolerate must be >= 0, got {f}")
    if strategy == "bulyan" and n < 4 * f + 3:
        raise UserInputError(
            f"Bulyan tolerating {f} attacker(s) needs at least {4 * f + 3} replies a round (4f + 3), "
            f"the round samples {n}; sample more vehicles (--clients / --fraction) or choose krum or fedmedian"
        )
    if strategy in ("krum", "multikrum") and n < 2 * f + 3:
        raise UserInputError(
            f"{strategy} tolerating {f} attacker(s) needs at least {2 * f + 3} replies a round (2f + 3), "
            f"the round samples {n}; sample more vehicles or choose fedmedian"
        )
    if strategy == "fedmedian" and f > 0 and 2 * f >= n:
        raise UserInputError(
            f"the median of {n} replies cannot outvote {f} attacker(s) (needs a majority of honest replies); "
            "sample more vehicles"
        )
    if strategy in _AVERAGING and f > 0:
        warnings.append(
            f"{strategy} averages every reply: it tolerates no attacker, and {f} were expected per round; "
            f"choose one of {', '.join(sorted(ROBUST))} to tolerate them"
        )
    if strategy == "fedtrimmedavg" and f > 0 and trimmed_beta * n < f:
        warnings.append(
            f"fedtrimmedavg trims {trimmed_beta:.0%} at each end ({int(trimmed_beta * n)} of {n} replies), fewer "
            f"than the {f} attacker(s) expected; raise trimmed_beta above {f / n:.2f}"
        )
    return warnings


def mean_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The replies' scalar metrics averaged by ``weight_key``, without identifiers (a vehicle id is not a number
    to average) and with the total weight (examples) of the round."""
    from flwr.app import MetricRecord

    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]  # type: ignore[arg-type]
    total = sum(weights)
    out: dict[str, Any] = {}
    for r, w in zip(records, weights, strict=True):
        for key, value in next(iter(r.metric_records.values())).items():
            if key in (weight_key, VEHICLE_ID_KEY) or isinstance(value, list):
                continue
            out[key] = out.get(key, 0.0) + float(value) * w / total
    out[weight_key] = total
    return MetricRecord(out)


def build_strategy(cfg: RoundsConfig, sample_size: int) -> Strategy:
    """The strategy ``cfg.strategy`` (wrapped in ``cfg.dp``'s wrapper) for rounds of ``sample_size`` vehicles."""
    from flwr.serverapp import strategy as fs

    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": 1,
        "weighted_by_key": WEIGHT_KEY,
        "train_metrics_aggr_fn": mean_train_metrics,
    }
    f = cfg.tolerated(cfg.clients)
    name = cfg.strategy
    inner: Strategy
    if name == "fedavg":
        inner = fs.FedAvg(**common)
    elif name == "fedprox":
        inner = fs.FedProx(**common, proximal_mu=cfg.local.proximal_weight or FEDPROX_DEFAULT_MU)
    elif name == "fedadam":
        inner = fs.FedAdam(**common, eta=cfg.fedadam_eta)
    elif name == "fedmedian":
        inner = fs.FedMedian(**common)
    elif name == "fedtrimmedavg":
        inner = fs.FedTrimmedAvg(**common, beta=cfg.trimmed_beta)
    elif name == "krum":
        inner = fs.Krum(**common, num_malicious_nodes=f)
    elif name == "multikrum":
        inner = fs.MultiKrum(**common, num_malicious_nodes=f, num_nodes_to_select=max(1, sample_size - f))
    elif name == "bulyan":
        inner = fs.Bulyan(**common, num_malicious_nodes=f)
    else:  # RoundsConfig refuses other names; kept for a caller that bypasses it
        raise UserInputError(f"unknown strategy {name!r}")
    dp = cfg.dp
    if dp.mode == "server-fixed":
        return fs.DifferentialPrivacyServerSideFixedClipping(inner, dp.noise_multiplier, dp.clipping_norm, sample_size)
    if dp.mode == "client-fixed":
        return fs.DifferentialPrivacyClientSideFixedClipping(inner, dp.noise_multiplier, dp.clipping_norm, sample_size)
    if dp.mode == "server-adaptive":
        return fs.DifferentialPrivacyServerSideAdaptiveClipping(
            inner, dp.noise_multiplier, sample_size, initial_clipping_norm=dp.clipping_norm
        )
    if dp.mode == "client-adaptive":
        return fs.DifferentialPrivacyClientSideAdaptiveClipping(
            inner, dp.noise_multiplier, sample_size, initial_clipping_norm=dp.clipping_norm
        )
    return inner


def inner_strategy(strategy: Strategy) -> Strategy:
    """The aggregating strategy under a DP wrapper (the strategy itself when unwrapped)."""
    return getattr(strategy, "strategy", strategy)
