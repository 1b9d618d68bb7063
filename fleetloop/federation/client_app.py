"""The vehicle's side of a round: a Flower ClientApp that trains on the vehicle's own buffer.

On a training message the vehicle (on the simulation engine the ``partition-id`` of its node picks its id and
buffer from the message's ``vehicle-ids`` / ``buffer-paths``; on the deployment engine a SuperNode is one vehicle,
named with its buffer in its node config, ``vehicle-id`` / ``buffer-path``) opens its on-board buffer read-only,
labels the frames on board with the hindsight labeller, trains a copy of the received global model, and replies
with the new weights and ``REPLY_METRICS`` only. It never changes the model it drives with (it builds a separate
one from the received weights) and never writes to its buffer.

Everything the vehicle needs arrives in the message's ConfigRecord (``CONFIG_KEYS``) or its node config; the
ClientApp is built with the vehicle-side behaviours a test or benchmark gives it (an attack, availability faults,
the client half of a DP wrapper), which the server never learns.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

from fleetloop.edge_agent.policy import PolicyConfig
from fleetloop.federation.attacks import attack_update
from fleetloop.federation.buffers import vehicle_frames
from fleetloop.federation.config import AttackConfig, ClientTrainConfig, VehicleFaults
from fleetloop.federation.records import array_record, numpy_arrays
from fleetloop.federation.task import (
    PARENT_RECORD,
    VEHICLE_ID_KEY,
    WEIGHT_KEY,
    frames_in,
    labelled_data,
    local_update,
    model_from_arrays,
)

__all__ = ["CONFIG_KEYS", "NotInThisRun", "TooFewFrames", "VehicleOffline", "make_client_app", "train_config_record"]

CONFIG_KEYS = ("vehicle-ids", "buffer-paths", "policy-config", "local-config", "seed", "round-size")
"""What a training message's ConfigRecord carries for the vehicles (besides Flower's ``server-round``)."""


class VehicleOffline(RuntimeError):
    """The vehicle went offline during the round (an injected availability fault): no reply."""


class NotInThisRun(RuntimeError):
    """A SuperNode whose vehicle is not among the run's clients (a held-out vehicle, or one served since)."""


class TooFewFrames(RuntimeError):
    """The vehicle holds too few valid labelled frames to train this round."""


def train_config_record(
    vehicle_ids: list[int],
    buffer_paths: list[str],
    policy: PolicyConfig,
    local: ClientTrainConfig,
    seed: int,
    round_size: int,
) -> ConfigRecord:
    """The ConfigRecord every training message of a run carries."""
    return ConfigRecord(
        {
            "vehicle-ids": vehicle_ids,
            "buffer-paths": buffer_paths,
            "policy-config": json.dumps(policy.to_dict()),
            "local-config": json.dumps(local.__dict__),
            "seed": seed,
            "round-size": round_size,
        }
    )


def _vehicle(context: Context, cfg: ConfigRecord) -> tuple[int, Path]:
    """This node's vehicle id and buffer: its own (a deployed SuperNode) or its partition's (simulation)."""
    ids = [int(v) for v in cfg["vehicle-ids"]]  # type: ignore[union-attr]
    node = context.node_config
    if "vehicle-id" in node:
        vid = int(node["vehicle-id"])
        if vid not in ids:
            raise NotInThisRun(f"vehicle {vid} is not among this run's clients {ids}")
        return vid, Path(str(node["buffer-path"]))
    pid = int(node["partition-id"])
    return ids[pid], Path(str(cfg["buffer-paths"][pid]))  # type: ignore[index]


def vehicle_train(msg: Message, context: Context, attack: AttackConfig | None, faults: VehicleFaults | None) -> Message:
    """One vehicle's training round (see the module doc)."""
    cfg = msg.content["config"]
    server_round = int(cfg["server-round"])  # type: ignore[arg-type]
    vid, path = _vehicle(context, cfg)  # type: ignore[arg-type]
    seed = int(cfg["seed"])  # type: ignore[arg-type]
    if faults is not None:
        if faults.dropout > 0 and np.random.default_rng([faults.seed, server_round, vid]).random() < faults.dropout:
            raise VehicleOffline(f"vehicle {vid} went offline in round {server_round}")
        time.sleep(faults.delay_s.get(vid, 0.0))
    local = ClientTrainConfig(**json.loads(str(cfg["local-config"])))
    policy = PolicyConfig.from_dict(json.loads(str(cfg["policy-config"])))
    global_arrays = numpy_arrays(msg.content["arrays"])  # type: ignore[arg-type]
    global_model = model_from_arrays(global_arrays, policy)
    data = labelled_data(vehicle_frames(path, vid))
    n = frames_in(data)
    if n < local.min_frames:
        raise TooFewFrames(f"vehicle {vid}: {n} valid labelled frames, fewer than {local.min_frames}")
    proximal = float(cfg.get("proximal-mu", local.proximal_weight))  # type: ignore[arg-type]
    parent = None
    if PARENT_RECORD in msg.content:
        parent = model_from_arrays(numpy_arrays(msg.content[PARENT_RECORD]), policy)  # type: ignore[arg-type]
    train_seed = (seed * 1_000_003 + server_round * 10_007 + vid) % (2**31)
    result = local_update(global_model, data, local, train_seed, proximal, parent)
    arrays = result.arrays
    if attack is not None and vid in attack.vehicle_ids:
        arrays = _attack(
            attack, global_arrays, result.arrays, data, local, global_model, train_seed, proximal, cfg, parent
        )
    metrics: dict[str, Any] = {
        WEIGHT_KEY: result.frames,
        VEHICLE_ID_KEY: vid,
        "train-loss-first": result.loss_first,
        "train-loss-last": result.loss_last,
        "train-seconds": result.seconds,
    }
    content = RecordDict({"arrays": array_record(arrays), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def _attack(
    attack: AttackConfig,
    global_arrays: dict[str, np.ndarray],
    honest: dict[str, np.ndarray],
    data: dict[str, Any],
    local: ClientTrainConfig,
    global_model: Any,
    seed: int,
    proximal: float,
    cfg: Any,
    parent: Any = None,
) -> dict[str, np.ndarray]:
    samples: list[dict[str, np.ndarray]] = []
    if attack.kind == "alie":
        # The attacker sees no other update: it estimates the honest spread from updates on parts of its own data.
        parts = np.array_split(np.arange(frames_in(data)), attack.alie_samples)
        for i, idx in enumerate(parts):
            if len(idx) >= 2:
                sub = {k: v[idx] for k, v in data.items()}
                samples.append(local_update(global_model, sub, local, seed + 7919 * (i + 1), proximal, parent).arrays)
    round_size = int(cfg["round-size"])
    return attack_update(
        attack,
        global_arrays,
        honest,
        np.random.default_rng(seed),
        honest_samples=samples,
        clients=round_size,
        attackers=min(len(attack.vehicle_ids), round_size),
    )


def make_client_app(
    attack: AttackConfig | None = None, faults: VehicleFaults | None = None, dp_mode: str = "off"
) -> ClientApp:
    """The vehicles' ClientApp, with the vehicle-side behaviours of a run (none by default), and the client half
    of a client-side DP wrapper (``dp_mode`` "client-fixed" / "client-adaptive": the update is clipped on board)."""
    if dp_mode == "client-fixed":
        app = ClientApp(mods=[fixedclipping_mod])
    elif dp_mode == "client-adaptive":
        app = ClientApp(mods=[adaptiveclipping_mod])
    else:
        app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return vehicle_train(msg, context, attack, faults)

    return app
