"""``run_rounds(settings, cfg) -> RoundsResult``: federated rounds on either of Flower's engines, end to end.

    preflight: usable vehicle buffers (missing / stale / corrupt ones skipped, counted); held-out vehicles set
    aside; the strategy checked against the round size (errors before anything starts, warnings returned)
    start: the saved federation state (round counter, weights, strategy moments) or the initial / production model
    rounds: the ServerApp looping ``federated_round`` (``rounds.server_loop``), on the simulation engine
    (``run_simulation``, Ray backend, one CPU per vehicle) or the deployment engine (the job submitted to the
    running SuperLink, its status polled until it ends: ``deployment``); after each round: MLflow metrics at
    step = round, the state saved atomically, the caller's ``on_round``
    end: the global model as an artifact (lineage: rounds, vehicles, parent version) logged to the run, and a
    ``model.trained`` event (origin "federated") for the caller to announce

MLflow is reached only through ``fleetloop.platform.tracking``. Every number in the result is also in the run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fleetloop.edge_agent.calibration import calibration_of, carried_calibration
from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, load_artifact, save_artifact
from fleetloop.edge_agent.policy import ARCHITECTURE, PolicyConfig
from fleetloop.federation.buffers import BufferScan, VehicleBuffer, buffer_dir, scan_buffers
from fleetloop.federation.client_app import make_client_app
from fleetloop.federation.config import AttackConfig, RoundsConfig, VehicleFaults
from fleetloop.federation.deployment import DeploymentTarget, check_deployable, run_deployed
from fleetloop.federation.rounds import RoundsJob, heldout_data, privacy_report, server_loop
from fleetloop.federation.server_app import RoundReport, finite_or_none, make_server_app
from fleetloop.federation.state_store import FederationState, load_state, state_path
from fleetloop.federation.strategies import check_plan
from fleetloop.federation.task import evaluate_heldout, model_from_arrays, model_to_arrays
from fleetloop.platform.bus.events import ModelTrained
from fleetloop.platform.candidates import (
    ARTIFACT_DIR,
    ARTIFACT_FILE,
    MODEL_TAG,
    ORIGIN_TAG,
    PARENT_VERSION_TAG,
    PARTICIPANTS_COUNT_TAG,
    ROUNDS_TAG,
)
from fleetloop.platform.errors import NotFoundError, SetupError, UserInputError
from fleetloop.platform.registry import open_registry
from fleetloop.platform.tracking import open_tracking

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings
    from fleetloop.platform.tracking import Tracking

__all__ = ["Preflight", "RoundsResult", "backend_config", "preflight", "run_rounds"]

OBJECT_STORE_BYTES = 128 * 1024 * 1024  # Ray's object store, bounded: a policy is ~30 kB, 2 cores share the box


def backend_config(cpus: int = 2) -> dict[str, Any]:
    """The Ray backend of ``run_simulation`` sized for a small machine: one CPU per vehicle (Flower's default is
    two), ``cpus`` in all, a bounded object store, no dashboard, workers' output kept out of the driver's."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 0,
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "log_to_driver": False,
        },
    }


@dataclass(frozen=True)
class Preflight:
    """What a run will use, known before anything starts."""

    scan: BufferScan
    clients: list[VehicleBuffer]
    heldout: list[VehicleBuffer]
    sample_size: int
    tolerated: int
    attackers: list[int]
    warnings: list[str]


def preflight(settings: Settings, cfg: RoundsConfig, *, now_s: float | None = None) -> Preflight:
    """Scan the buffers, split clients from held-out vehicles, check the strategy (``UserInputError`` when it cannot
    work); no service is contacted."""
    directory = cfg.buffer_dir or buffer_dir(settings.state_dir)
    scan = scan_buffers(directory, now_s=time.time() if now_s is None else now_s, max_age_s=cfg.buffer_max_age_s)
    usable = scan.vehicles
    if len(usable) < cfg.holdout_vehicles + cfg.min_replies:
        raise UserInputError(
            f"{len(usable)} usable vehicle buffer(s) in {directory} (skipped: {dict(scan.skipped) or 'none'}); a round "
            f"needs {cfg.min_replies} client(s) and {cfg.holdout_vehicles} held-out vehicle(s): run "
            "`fleetloop sim run --buffer-seconds 25` with this state directory first"
        )
    heldout = usable[-cfg.holdout_vehicles :]
    clients = usable[: -cfg.holdout_vehicles][: cfg.clients]
    size = cfg.sample_size(len(clients))
    tolerated = cfg.tolerated(len(clients))
    warnings = check_plan(cfg.strategy, size, tolerated, cfg.trimmed_beta)
    if len(clients) < cfg.clients:
        warnings.insert(0, f"{cfg.clients} vehicles asked for, {len(clients)} have usable buffers")
    n_attack = cfg.attackers(len(clients))
    ids = [v.vehicle_id for v in clients]
    attackers = sorted(int(i) for i in np.random.default_rng(cfg.seed).choice(ids, n_attack, replace=False))
    return Preflight(scan, clients, heldout, size, tolerated, attackers, warnings)


@dataclass
class RoundsResult:
    """What ``run_rounds`` did."""

    model_name: str
    strategy: str
    first_round: int
    last_round: int
    rounds: list[RoundReport]
    participants: list[int]
    """Vehicles whose updates were aggregated, over every round of the federation so far."""
    parent_version: str | None
    heldout_before: dict[str, float]
    heldout_after: dict[str, float]
    skipped_vehicles: dict[str, int]
    warnings: list[str]
    attackers: list[int]
    privacy: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    artifact_path: str = ""
    event: ModelTrained | None = None
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null)."""

        def clean(d: Mapping[str, float]) -> dict[str, float | None]:
            return {k: finite_or_none(v) for k, v in d.items()}

        return {
            "model_name": self.model_name,
            "strategy": self.strategy,
            "first_round": self.first_round,
            "last_round": self.last_round,
            "rounds": [
                {**r.__dict__, "heldout": clean(r.heldout), "train_metrics": clean(r.train_metrics)}
                for r in self.rounds
            ],
            "participants": self.participants,
            "parent_version": self.parent_version,
            "heldout_before": clean(self.heldout_before),
            "heldout_after": clean(self.heldout_after),
            "skipped_vehicles": self.skipped_vehicles,
            "warnings": self.warnings,
            "attackers": self.attackers,
            "privacy": self.privacy,
            "run_id": self.run_id,
            "artifact_path": self.artifact_path,
            "event": None if self.event is None else self.event.__dict__,
            "wall_s": self.wall_s,
        }


def _start(settings: Settings, cfg: RoundsConfig, name: str, workdir: Path) -> FederationState:
    """The saved federation, or a new one from ``cfg.initial_model`` / the production model."""
    path = state_path(settings.state_dir, name)
    saved = None if cfg.restart else load_state(path)
    if saved is not None:
        if saved.strategy != cfg.strategy:
            raise UserInputError(
                f"the federation of {name} ran {saved.strategy} until round {saved.server_round}; continue with "
                f"--strategy {saved.strategy}, or pass --restart to start a new federation with {cfg.strategy}"
            )
        return saved
    if cfg.initial_model is not None:
        loaded = load_artifact(cfg.initial_model)
        parent = loaded.metadata.model_version
    else:
        try:
            info = open_registry(settings).production(name)
        except NotFoundError as e:
            raise SetupError(
                f"no federation state and no production version of {name} to start from ({e}); "
                "`fleetloop model bootstrap` makes one"
            ) from e
        loaded = load_artifact(open_registry(settings).download_model(name, info.version, workdir / "parent"))
        parent = str(info.version)
    return FederationState(
        strategy=cfg.strategy,
        server_round=0,
        arrays=model_to_arrays(loaded.model),
        hyperparameters=loaded.model.config.to_dict(),
        parent_version=parent,
        parent_arrays=model_to_arrays(loaded.model),
        parent_calibration=calibration_of(loaded.metadata.metrics),
    )


def run_rounds(
    settings: Settings,
    cfg: RoundsConfig,
    *,
    checked: Preflight | None = None,
    faults: VehicleFaults | None = None,
    tracking: Tracking | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    deployment: DeploymentTarget | None = None,
) -> RoundsResult:
    """Run ``cfg.rounds`` rounds of the federation of ``cfg.model_name`` (see the module doc): on Flower's
    simulation engine, or with ``deployment`` on the running SuperLink and its SuperNodes (``deployment``)."""
    t0 = time.perf_counter()
    name = cfg.model_name or settings.model_name
    pre = checked or preflight(settings, cfg)
    if deployment is not None:
        check_deployable(cfg)
    tracking = tracking or open_tracking(settings)  # fails fast (ServiceUnavailable) when MLflow is down
    with tempfile.TemporaryDirectory(prefix="fleetloop-fl-") as tmp:
        state = _start(settings, cfg, name, Path(tmp))
    policy = PolicyConfig.from_dict(state.hyperparameters)
    heldout = heldout_data(pre.heldout)
    before = evaluate_heldout(model_from_arrays(state.arrays, policy), heldout)
    first = state.server_round
    reports: list[RoundReport] = []

    def record(report: RoundReport) -> None:
        reports.append(report)
        if on_round is not None:
            on_round(report)

    tags = {
        "fleetloop.stage": "federation",
        MODEL_TAG: name,
        ORIGIN_TAG: "federated",
        "fleetloop.strategy": cfg.strategy,
        "fleetloop.engine": "simulation" if deployment is None else "deployment",
    }
    with tracking.run(cfg.experiment, run_name=f"fl-{name}-r{first + 1}-{first + cfg.rounds}", tags=tags) as run_id:
        tracking.log(
            run_id,
            params={
                **cfg.as_params(),
                "clients.usable": len(pre.clients),
                "sample_size": pre.sample_size,
                "tolerated": pre.tolerated,
                "attackers": json.dumps(pre.attackers),
                "parent_version": state.parent_version or "none",
                "first_round": first + 1,
            },
            metrics={f"before_{k}": v for k, v in before.items() if np.isfinite(v)},
            tags={f"fleetloop.skipped.{k.replace(' ', '_')}": str(n) for k, n in pre.scan.skipped.items()},
            step=first,
        )
        job = RoundsJob(
            settings=settings,
            cfg=cfg,
            model_name=name,
            clients=pre.clients,
            heldout=pre.heldout,
            sample_size=pre.sample_size,
            expected_nodes=len(pre.clients) if deployment is None else len(deployment.vehicles),
            state=state,
            run_id=run_id,
        )
        if deployment is None:
            _simulate(job, tracking, record, pre, faults)
        else:
            run_deployed(job, deployment, record)
        if reports:  # the loop saved the state after each round
            state = load_state(state_path(settings.state_dir, name)) or state
        privacy = privacy_report(cfg, state.privacy_releases)
        after = reports[-1].heldout if reports else before
        artifact = _save_candidate(settings, name, state, policy, run_id, cfg, after, reports, heldout)
        tracking.log_artifact(run_id, artifact, ARTIFACT_DIR)
        lineage = {
            "rounds": [first + 1, state.server_round],
            "participants": state.participants,
            "parent_version": state.parent_version,
            "strategy": cfg.strategy,
            "privacy": privacy,
        }
        tracking.log_dict(run_id, lineage, "lineage.json")
        tracking.log(run_id, tags=_lineage_tags(state))
    event = ModelTrained(
        model_name=name,
        run_id=run_id,
        artifact_uri=str(artifact.resolve()),
        origin="federated",
        source="federation",
    )
    return RoundsResult(
        model_name=name,
        strategy=cfg.strategy,
        first_round=first + 1,
        last_round=state.server_round,
        rounds=reports,
        participants=state.participants,
        parent_version=state.parent_version,
        heldout_before=before,
        heldout_after=after,
        skipped_vehicles=dict(Counter(pre.scan.skipped)),
        warnings=pre.warnings,
        attackers=pre.attackers,
        privacy=privacy,
        run_id=run_id,
        artifact_path=str(artifact),
        event=event,
        wall_s=time.perf_counter() - t0,
    )


def _simulate(
    job: RoundsJob,
    tracking: Tracking,
    on_round: Callable[[RoundReport], None],
    pre: Preflight,
    faults: VehicleFaults | None,
) -> None:
    """The job on Flower's simulation engine: ``run_simulation`` (Ray), the vehicles' faults and attacks
    injected into the ClientApp."""
    from flwr.simulation import run_simulation  # Ray and Flower's runtime: about 2 s, only when rounds run

    # Ray 2.55 warns (FutureWarning, at ray.init) about overriding accelerator variables unless this is set;
    # the vehicles use no GPU, so the future behaviour is the wanted one.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cfg = job.cfg
    faults = faults or VehicleFaults(dropout=cfg.dropout, seed=cfg.seed)
    attack = AttackConfig(kind=cfg.attack, vehicle_ids=frozenset(pre.attackers)) if pre.attackers else None
    run_simulation(
        server_app=make_server_app(server_loop(job, tracking, on_round)),
        client_app=make_client_app(attack, faults, cfg.dp.mode),
        num_supernodes=len(job.clients),
        backend_config=backend_config(),  # type: ignore[arg-type]
    )


def _lineage_tags(state: FederationState) -> dict[str, str]:
    """The candidate contract's federated lineage (``platform.candidates``), set last: a finished run carries it."""
    return {
        ROUNDS_TAG: str(state.server_round),
        PARTICIPANTS_COUNT_TAG: str(len(state.participants)),
        PARENT_VERSION_TAG: state.parent_version or "none",
        "fleetloop.participants": json.dumps(state.participants),
    }


def _save_candidate(
    settings: Settings,
    name: str,
    state: FederationState,
    policy: PolicyConfig,
    run_id: str,
    cfg: RoundsConfig,
    heldout: Mapping[str, float],
    reports: list[RoundReport],
    heldout_frames: dict[str, torch.Tensor],
) -> Path:
    """The global model after the last round, as a candidate artifact with the federation's lineage and its
    hand-over calibration, carried from the parent's and measured on the server's held-out frames (without it
    the arbiter would fall back to its default threshold and the candidate would drive where its parent hands
    over)."""
    model = model_from_arrays(state.arrays, policy)
    examples = sum(r.train_metrics.get("num-examples", 0.0) for r in reports)
    parent = model_from_arrays(state.parent_arrays, policy) if state.parent_arrays else None
    calibration = carried_calibration(model, heldout_frames, parent, state.parent_calibration)
    meta = ArtifactMetadata(
        architecture=ARCHITECTURE,
        hyperparameters=policy.to_dict(),
        input_schema_version=INPUT_SCHEMA_VERSION,
        parent_version=state.parent_version,
        training_run_id=run_id,
        metrics={**{k: float(v) for k, v in heldout.items()}, **calibration, "frames": float(examples)},
        notes={
            "role": "candidate",
            "origin": "federated",
            "strategy": cfg.strategy,
            "rounds": str(state.server_round),
            "participants": ",".join(str(v) for v in state.participants),
        },
    )
    dst = state_path(settings.state_dir, name).parent / "candidates" / f"round-{state.server_round}" / ARTIFACT_FILE
    return save_artifact(dst, model, meta)
