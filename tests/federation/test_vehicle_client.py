"""The vehicle's side: what leaves it (weights and counts only), and that it leaves its buffer as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.federation.client_app import TooFewFrames, VehicleOffline, train_config_record, vehicle_train
from fleetloop.federation.config import AttackConfig, ClientTrainConfig, VehicleFaults
from fleetloop.federation.task import REPLY_METRICS, model_to_arrays
from fleetloop.platform.errors import UserInputError

LOCAL = ClientTrainConfig(epochs=1, min_frames=16)


def train_message(
    paths: list[Path], ids: list[int], initial_model: Path, local: ClientTrainConfig = LOCAL, parent: bool = True
) -> Message:
    """A round-1 training message as the server sends it: the global weights (the initial model), the config and,
    when the vehicles anchor to it (``parent``), the starting weights as record ``parent``."""
    model = load_artifact(initial_model).model
    cfg = train_config_record(ids, [str(p) for p in paths], model.config, local, seed=0, round_size=len(ids))
    cfg["server-round"] = 1
    arrays = ArrayRecord({k: Array(v) for k, v in model_to_arrays(model).items()})
    content = RecordDict({"arrays": arrays, "config": cfg})
    if parent and local.parent_anchor_weight > 0:
        content["parent"] = ArrayRecord({k: Array(v) for k, v in model_to_arrays(model).items()})
    return Message(content=content, dst_node_id=7, message_type="train")


def context(pid: int) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": pid}, state=RecordDict(), run_config={})


def digest(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_the_server_receives_weights_and_counts_only_no_frame_label_or_position(
    fleet_buffers: Path, initial_model: Path
) -> None:
    path = fleet_buffers / "vehicle-4"
    before = digest(path)
    msg = train_message([path], [4], initial_model)
    out = vehicle_train(msg, context(0), None, None)
    content = out.content
    reference = model_to_arrays(load_artifact(initial_model).model)
    assert list(content.config_records) == []
    assert len(content.array_records) == 1 and len(content.metric_records) == 1
    arrays = next(iter(content.array_records.values()))
    # Exactly the model's tensors, each the model's shape: nothing frame-sized rides along.
    assert {k: tuple(a.shape) for k, a in arrays.items()} == {k: v.shape for k, v in reference.items()}
    metrics = next(iter(content.metric_records.values()))
    assert set(metrics) <= REPLY_METRICS
    assert all(not isinstance(v, list) for v in metrics.values())  # no per-frame series
    assert metrics["vehicle-id"] == 4 and metrics["num-examples"] > 0
    assert any(not np.array_equal(arrays[k].numpy(), reference[k]) for k in reference)  # it did train
    assert digest(path) == before  # the buffer is read, never written


def test_a_vehicle_with_too_few_labelled_frames_declines(fleet_buffers: Path, initial_model: Path) -> None:
    msg = train_message([fleet_buffers / "vehicle-1"], [1], initial_model, ClientTrainConfig(min_frames=100_000))
    with pytest.raises(TooFewFrames):
        vehicle_train(msg, context(0), None, None)


def test_an_offline_vehicle_does_not_reply(fleet_buffers: Path, initial_model: Path) -> None:
    msg = train_message([fleet_buffers / "vehicle-1"], [1], initial_model)
    with pytest.raises(VehicleOffline):
        vehicle_train(msg, context(0), None, VehicleFaults(dropout=0.999))


def test_a_sign_flip_vehicle_sends_its_update_reversed(fleet_buffers: Path, initial_model: Path) -> None:
    msg = train_message([fleet_buffers / "vehicle-2"], [2], initial_model)
    honest = next(iter(vehicle_train(msg, context(0), None, None).content.array_records.values()))
    attack = AttackConfig(kind="sign-flip", vehicle_ids=frozenset({2}), scale=2.0)
    flipped = next(iter(vehicle_train(msg, context(0), attack, None).content.array_records.values()))
    g = model_to_arrays(load_artifact(initial_model).model)
    for k in g:
        np.testing.assert_allclose(flipped[k].numpy() - g[k], -2.0 * (honest[k].numpy() - g[k]), atol=1e-5)


def _distance(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum((arrays[k].numpy() - v) ** 2) for k, v in reference.items()))


def test_an_update_anchored_to_the_parent_stays_closer_to_it(fleet_buffers: Path, initial_model: Path) -> None:
    """The parent anchor pulls the local update towards the starting model's outputs, as the central fine-tune's
    anchor does: with a heavy anchor and a hazard-balanced loss the update moves the weights less."""
    path, parent = fleet_buffers / "vehicle-3", model_to_arrays(load_artifact(initial_model).model)
    free = ClientTrainConfig(epochs=2, min_frames=16, lr=1e-2, balance_hazard=True, parent_anchor_weight=0.0)
    anchored = ClientTrainConfig(epochs=2, min_frames=16, lr=1e-2, balance_hazard=True, parent_anchor_weight=1e3)
    out = {}
    for name, local in (("free", free), ("anchored", anchored)):
        msg = train_message([path], [3], initial_model, local)
        out[name] = next(iter(vehicle_train(msg, context(0), None, None).content.array_records.values()))
    assert 0 < _distance(out["anchored"], parent) < _distance(out["free"], parent)


def test_a_parent_anchor_without_the_parent_weights_is_an_error(fleet_buffers: Path, initial_model: Path) -> None:
    local = ClientTrainConfig(epochs=1, min_frames=16, parent_anchor_weight=30.0)
    msg = train_message([fleet_buffers / "vehicle-3"], [3], initial_model, local, parent=False)
    with pytest.raises(ValueError, match="starting weights"):
        vehicle_train(msg, context(0), None, None)
    with pytest.raises(UserInputError, match="parent_anchor_weight"):
        ClientTrainConfig(parent_anchor_weight=-1.0)
