"""A small fleet for the controller's integration tests: vehicles that send heartbeats with chosen event rates and
obey OTA commands (switching the version they report), over the real broker. Independent of the simulator: the
controller is judged on the heartbeats alone.

Each beat covers ``BEAT_KM``; a vehicle's collisions per beat are Poisson with the rate of its arm and stratum
(``rates``: (version, stratum) -> collisions per km), or exactly ``fixed_per_beat`` when given.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from fleetloop.platform.bus import FLEET_HEALTH, OTA_COMMANDS, OTA_STATUS, BusConsumer, BusProducer, FleetHealth
from fleetloop.platform.bus.events import OtaCommand, OtaStatus
from fleetloop.platform.settings import Settings

BEAT_KM = 0.25
BEAT_S = 10.0


@dataclass
class Fleet:
    """``n`` vehicles ``<tag>-<i>`` on ``version``; vehicle i drives stratum ``strata[i % len(strata)]``."""

    settings: Settings
    n: int
    version: int
    strata: tuple[str, ...] = ("clear/urban_open", "fog/highway_traffic")
    rates: dict[tuple[int, str], float] = field(default_factory=dict)  # collisions per km
    fixed_per_beat: int | None = None
    seed: int = 0
    tag: str = field(default_factory=lambda: "v" + uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        self.ids = [f"{self.tag}-{i}" for i in range(self.n)]
        self.versions = dict.fromkeys(self.ids, self.version)
        self.seq = dict.fromkeys(self.ids, 0)
        self.silent: set[str] = set()
        self.sent: list[FleetHealth] = []
        self.commands: list[OtaCommand] = []
        self.rng = np.random.default_rng(self.seed)
        self.producer = BusProducer(self.settings, client_id="test-fleet")
        self.consumer = BusConsumer(self.settings, [OTA_COMMANDS], group_id=f"fleet-{self.tag}", client_id="test")

    def stratum(self, vid: str) -> str:
        return self.strata[int(vid.rsplit("-", 1)[1]) % len(self.strata)]

    def beat(self, vid: str, **overrides: object) -> FleetHealth:
        self.seq[vid] += 1
        cond, scen = self.stratum(vid).split("/")
        ver = self.versions[vid]
        if self.fixed_per_beat is not None:
            hits = self.fixed_per_beat
        else:
            hits = int(self.rng.poisson(self.rates.get((ver, self.stratum(vid)), 1.0) * BEAT_KM))
        fields: dict[str, object] = {
            "vehicle_id": vid,
            "model_version": ver,
            "beat_seq": self.seq[vid],
            "period_s": BEAT_S,
            "distance_m": BEAT_KM * 1000,
            "planned_distance_m": BEAT_KM * 1000,
            "collisions": hits,
            "est_visibility_m": 150.0 if cond == "fog" else 900.0,
            "est_light": 1.0,
            "est_friction": 0.9,
            "condition_class": cond,
            "scenario_class": scen,
            "source": "test-fleet",
            **overrides,
        }
        return FleetHealth(**fields)  # type: ignore[arg-type]

    def round(self) -> None:
        """Every vehicle that is not silent sends one beat; then commands are read and obeyed."""
        for vid in self.ids:
            if vid not in self.silent:
                hb = self.beat(vid)
                self.sent.append(hb)
                self.producer.send(FLEET_HEALTH, hb)
        self.producer.flush()
        self.obey()

    def send(self, hb: FleetHealth) -> None:
        self.producer.send(FLEET_HEALTH, hb)
        self.producer.flush()

    def obey(self) -> None:
        polled = self.consumer.poll(0.2)
        for d in polled.deliveries:
            cmd = d.value
            if isinstance(cmd, OtaCommand) and cmd.vehicle_id in self.versions:
                self.commands.append(cmd)
                self.versions[cmd.vehicle_id] = cmd.version
                status = OtaStatus(
                    rollout_id=cmd.rollout_id,
                    vehicle_id=cmd.vehicle_id,
                    version=cmd.version,
                    state="committed",
                    source="test-fleet",
                )
                self.producer.send(OTA_STATUS, status)
        self.producer.flush()
        self.consumer.commit(polled)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
