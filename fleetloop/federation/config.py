"""The settings of a federated run: what the server runs, what each vehicle trains, which faults a test injects.

All plain frozen dataclasses, validated once at construction with a message that says how to fix the value. The
server-side settings travel to the ServerApp with the app; everything a vehicle needs travels to it in each
training message's ConfigRecord (``ClientTrainConfig.to_record``), so a ClientApp reads nothing global.
Faults (attacks, dropout, stragglers) are the vehicles' own behaviour: they are given to the ClientApp, never to
the server, which sees only what arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetloop.platform.candidates import FEDERATION_EXPERIMENT
from fleetloop.platform.errors import UserInputError

__all__ = [
    "ATTACKS",
    "DP_MODES",
    "STRATEGIES",
    "AttackConfig",
    "ClientTrainConfig",
    "DpConfig",
    "RoundsConfig",
    "VehicleFaults",
]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Strategy names of ``--strategy`` (Flower's ``flwr.serverapp.strategy`` classes of the same name)."""
ATTACKS = ("sign-flip", "scale", "noise", "alie")
"""Byzantine behaviours a vehicle can be given (``fleetloop.federation.attacks``)."""
DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")
"""Flower's differential-privacy wrappers: where the update is clipped, and with a fixed or adaptive norm."""


@dataclass(frozen=True)
class ClientTrainConfig:
    """What a vehicle does with the global weights: local training on its own labelled buffer.

    Attributes:
        epochs: local passes over the vehicle's labelled frames.
        batch_size: frames per optimiser step.
        lr: local AdamW learning rate.
        max_seconds: wall-clock budget of one local update [s].
        min_frames: a vehicle with fewer valid labelled frames declines the round (its reply says so).
        proximal_weight: FedProx's mu, applied as the anchor term of ``train_imitation`` (the update is pulled
            towards the received global model's outputs); 0: none.
        parent_anchor_weight: pull every local update towards the outputs of the model the federation started
            from (the server sends its weights beside the global ones), as the central fine-tune pulls towards its
            parent (``TrainConfig.anchor_weight``, 30); FedProx's anchor moves with the global model round after
            round, this one does not (ADR 0193). Unused under FedProx (its mu anchors instead); 0: none.
        balance_hazard: weight a vehicle's hazard and normal frames equally, as the central fine-tune does.
    """

    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    max_seconds: float = 60.0
    min_frames: int = 32
    proximal_weight: float = 0.0
    parent_anchor_weight: float = 30.0
    balance_hazard: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserInputError(f"local epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (math.isfinite(self.parent_anchor_weight) and self.parent_anchor_weight >= 0):
            raise UserInputError(
                f"local parent_anchor_weight must be a finite number >= 0, got {self.parent_anchor_weight}"
            )
        if not (self.lr > 0 and self.max_seconds > 0 and self.proximal_weight >= 0 and self.min_frames >= 2):
            raise UserInputError(
                "local lr and max_seconds must be > 0, proximal_weight >= 0 and min_frames >= 2; got "
                f"lr={self.lr}, max_seconds={self.max_seconds}, proximal_weight={self.proximal_weight}, "
                f"min_frames={self.min_frames}"
            )


@dataclass(frozen=True)
class DpConfig:
    """Differential privacy through Flower's wrappers (``DP_MODES``).

    Attributes:
        mode: "off", or where clipping happens ("server-" / "client-") and how ("fixed" / "adaptive").
        noise_multiplier: Gaussian noise std over the clipping norm (z); the privacy cost per round falls with it.
        clipping_norm: L2 norm an update is clipped to (the initial norm when adaptive).
        target_delta: the delta the spent epsilon is reported at.
    """

    mode: str = "off"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    target_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise UserInputError(f"unknown privacy mode {self.mode!r}; choose one of {', '.join(DP_MODES)}")
        if self.enabled and not (self.noise_multiplier > 0 and self.clipping_norm > 0 and 0 < self.target_delta < 1):
            raise UserInputError(
                "with privacy on, noise_multiplier and clipping_norm must be > 0 and target_delta in (0, 1); got "
                f"{self.noise_multiplier}, {self.clipping_norm}, {self.target_delta}"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class AttackConfig:
    """Byzantine vehicles (a client-side behaviour; the server is never told).

    Attributes:
        kind: one of ``ATTACKS``.
        vehicle_ids: the attacking vehicles.
        scale: sign-flip sends ``g - scale * (w - g)``, scale sends ``g + scale * (w - g)`` (w: the honest update).
        noise_std: noise sends ``g + N(0, noise_std²)`` per weight.
        alie_z: ALIE's shift in standard deviations; None: the paper's z_max for the round's clients and attackers.
        alie_samples: ALIE estimates the honest mean and spread from this many updates on disjoint parts of the
            attacker's own buffer (it sees no other vehicle's update).
    """

    kind: str
    vehicle_ids: frozenset[int]
    scale: float = 4.0
    noise_std: float = 0.5
    alie_z: float | None = None
    alie_samples: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise UserInputError(f"unknown attack {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if self.scale <= 0 or self.noise_std <= 0 or self.alie_samples < 2:
            raise UserInputError("attack scale and noise_std must be > 0 and alie_samples >= 2")


@dataclass(frozen=True)
class VehicleFaults:
    """Availability faults of vehicles (client-side).

    Attributes:
        dropout: chance a sampled vehicle goes offline during a round (drawn per vehicle and round from ``seed``):
            it never replies.
        delay_s: vehicles that answer this much later (stragglers), by id.
        seed: keys the dropout draws.
    """

    dropout: float = 0.0
    delay_s: dict[int, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise UserInputError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class RoundsConfig:
    """One federated run (``run_rounds``).

    Attributes:
        rounds: rounds to run in this call (a later call continues the same federation).
        clients: vehicles taking part (the first ``clients`` usable buffers, by vehicle id).
        strategy: one of ``STRATEGIES``.
        fraction: share of the vehicles sampled per round (at least ``min_replies``).
        byzantine: share of the participating vehicles that attack (tests and benchmarks; 0: none).
        attack: their behaviour (``ATTACKS``).
        assumed_byzantine: attackers per round the robust strategies are told to tolerate (None: what
            ``byzantine`` implies for a round's sample; an operator's assumption, not knowledge).
        dropout: chance a sampled vehicle goes offline in a round.
        round_timeout_s: replies later than this are dropped as stragglers [s].
        node_wait_s: how long a round waits for vehicles to come online before it goes ahead with fewer [s].
        min_replies: a round with fewer valid replies keeps the global model unchanged.
        holdout_vehicles: vehicles (the last by id) whose buffers form the server's held-out set; never clients.
        buffer_dir: the per-vehicle buffers (None: ``<state_dir>/fleet/buffers``).
        buffer_max_age_s: a buffer saved longer ago than this is stale and skipped [s] (None: no limit).
        initial_model: model artifact to start from when the federation has no state yet (None: production).
        local: what each vehicle trains.
        dp: differential privacy.
        trimmed_beta: FedTrimmedAvg's cut fraction at each end.
        fedadam_eta: FedAdam's server learning rate.
        seed: keys sampling, attacker choice and local training.
        experiment: MLflow experiment of the rounds (validate finds the candidates of the default one only).
        model_name: registered model the result is a candidate of (None: the settings' model).
        restart: ignore saved federation state and start from ``initial_model`` / production.
    """

    rounds: int = 3
    clients: int = 10
    strategy: str = "fedavg"
    fraction: float = 1.0
    byzantine: float = 0.0
    attack: str = "sign-flip"
    assumed_byzantine: int | None = None
    dropout: float = 0.0
    round_timeout_s: float = 120.0
    node_wait_s: float = 10.0
    min_replies: int = 2
    holdout_vehicles: int = 2
    buffer_dir: Path | None = None
    buffer_max_age_s: float | None = None
    initial_model: Path | None = None
    local: ClientTrainConfig = field(default_factory=ClientTrainConfig)
    dp: DpConfig = field(default_factory=DpConfig)
    trimmed_beta: float = 0.2
    fedadam_eta: float = 0.01
    seed: int = 0
    experiment: str = FEDERATION_EXPERIMENT
    model_name: str | None = None
    restart: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserInputError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.attack not in ATTACKS:
            raise UserInputError(f"unknown attack {self.attack!r}; choose one of {', '.join(ATTACKS)}")
        if self.rounds < 1 or self.clients < 1:
            raise UserInputError(f"rounds and clients must be >= 1, got {self.rounds}, {self.clients}")
        if not 0 < self.fraction <= 1:
            raise UserInputError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.byzantine < 1:
            raise UserInputError(f"byzantine must be a share in [0, 1), got {self.byzantine}")
        if not 0 <= self.dropout < 1:
            raise UserInputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.round_timeout_s <= 0 or self.node_wait_s < 0:
            raise UserInputError("round_timeout_s must be > 0 and node_wait_s >= 0")
        if self.min_replies < 1 or self.holdout_vehicles < 1:
            raise UserInputError(
                "min_replies and holdout_vehicles must be >= 1 (the server evaluates on held-out data)"
            )
        if not 0 <= self.trimmed_beta < 0.5:
            raise UserInputError(f"trimmed_beta must be in [0, 0.5), got {self.trimmed_beta}")

    def sample_size(self, clients: int) -> int:
        """Vehicles sampled per round out of ``clients``: ``fraction`` of them, at least ``min_replies``."""
        return min(clients, max(self.min_replies, math.ceil(self.fraction * clients)))

    def attackers(self, clients: int) -> int:
        """Attacking vehicles among ``clients``."""
        return math.ceil(self.byzantine * clients) if self.byzantine > 0 else 0

    def tolerated(self, clients: int) -> int:
        """Attackers per round the robust strategies tolerate (``assumed_byzantine`` or the expected number in a
        round's sample)."""
        if self.assumed_byzantine is not None:
            return self.assumed_byzantine
        return math.ceil(self.byzantine * self.sample_size(clients)) if self.byzantine > 0 else 0

    def as_params(self) -> dict[str, Any]:
        """Flat ``name -> value`` for MLflow params."""
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if isinstance(v, ClientTrainConfig | DpConfig):
                out.update({f"{k}.{f}": getattr(v, f) for f in v.__dataclass_fields__})
            else:
                out[k] = v
        return out
