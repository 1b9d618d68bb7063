"""Shared fixtures of the federation tests: a small fleet's saved on-board buffers, a starting model, and an
in-process grid that runs the real ClientApp function for each message (for the tests of round logic that need
no Ray; the simulation-engine round is in test_simulation_round.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fleetloop.edge_agent.buffer import OnboardBuffer
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import save_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig

VEHICLES = 12
TICKS = 200


@pytest.fixture(autouse=True, scope="session")
def _task_identity() -> None:
    """Flower 1.42 stamps every Message with the process's task identity, which its runtime sets (as
    ``run_simulation`` does); tests that build messages outside a runtime set one."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1


def save_per_vehicle(buffer: OnboardBuffer, directory: Path) -> list[Path]:
    """Split a fleet's buffer into one saved buffer per vehicle (``<directory>/vehicle-<id>``), as a fleet run
    with one vehicle per shard leaves them."""
    frames = buffer.frames()
    out = []
    for vid in buffer.vehicle_ids.tolist():
        rows = frames["vehicle_id"] == vid
        one = OnboardBuffer(np.array([vid]), buffer.capacity)
        for i in np.flatnonzero(rows):
            one.append({k: v[i : i + 1] for k, v in frames.items() if k != "vehicle_id"})
        out.append(one.save(directory / f"vehicle-{vid}").parent)
    return out


@pytest.fixture(scope="session")
def fleet_buffers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-vehicle fleet driven 200 ticks (20 s) on the mixed scenarios, one saved buffer per vehicle."""
    cfg = FleetConfig(scenario="mixed", seed=3, buffer_frames=256, progress_reference=False, ground_truth_audit=False)
    runner = FleetRunner(cfg, range(VEHICLES))
    runner.run(TICKS)
    d = tmp_path_factory.mktemp("buffers")
    save_per_vehicle(runner.buffer, d)
    return d


CONDITION_FLEETS = {"clear": [0, 1, 2, 3, 4, 10], "fog": [5, 6, 7, 8, 9, 11]}
"""Non-IID by condition: each vehicle drives in one weather only; clients 0-4 clear, 5-9 fog; the held-out
vehicles (the last two by id) one of each."""


@pytest.fixture(scope="session")
def condition_buffers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 vehicles' saved buffers, partitioned by condition (``CONDITION_FLEETS``), 200 ticks each."""
    d = tmp_path_factory.mktemp("condition-buffers")
    for weather, ids in CONDITION_FLEETS.items():
        cfg = FleetConfig(
            scenario="mixed",
            weather=weather,
            seed=3,
            buffer_frames=256,
            progress_reference=False,
            ground_truth_audit=False,
        )
        runner = FleetRunner(cfg, ids)
        runner.run(TICKS)
        save_per_vehicle(runner.buffer, d)
    return d


@pytest.fixture(scope="session")
def initial_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained policy (seeded) as a model artifact: the federation's starting point."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FusionPolicy(PolicyConfig())
    return save_artifact(tmp_path_factory.mktemp("model") / "initial.safetensors", model)


class InProcessGrid:
    """A grid whose nodes run ``client(msg, context)`` in this process when a message is sent (node i is
    partition i); ``late`` nodes never answer within the timeout (stragglers)."""

    def __init__(self, nodes: int, client: Callable[[Message, Context], Message], late: Iterable[int] = ()) -> None:
        self.node_ids = list(range(101, 101 + nodes))
        self.client = client
        self.late = set(late)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            pid = self.node_ids.index(msg.metadata.dst_node_id)
            if pid in self.late:
                continue
            ctx = Context(
                run_id=1,
                node_id=msg.metadata.dst_node_id,
                node_config={"partition-id": pid},
                state=RecordDict(),
                run_config={},
            )
            try:
                replies.append(self.client(msg, ctx))
            except Exception as e:  # as Flower's runtime does: a raising ClientApp answers with an error
                from flwr.app import Error

                replies.append(Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg))
        return replies
