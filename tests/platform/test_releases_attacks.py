"""Signed releases end to end: real TUF metadata, a real HTTP server on 127.0.0.1, the vehicle's client.

Each test is named after what it prevents; the attacker edits the served files the way a compromised server
or mirror could, and the vehicle must refuse with the error that says why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from tuf.api.metadata import Metadata, TargetFile

from fleetloop.edge_agent.ota_verify import OtaClientConfig, fetch_verified_release
from fleetloop.platform.releases.api import utc_now
from fleetloop.platform.releases.cohorts import HashRange, VehicleList, cohort_bucket
from fleetloop.platform.releases.errors import (
    BadHash,
    ExpiredMetadata,
    NotAssigned,
    ReplayedMetadata,
    SignatureRejected,
    UnsupportedSchema,
)
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.keys import load_keys
from fleetloop.platform.releases.offline import verify_file
from fleetloop.platform.releases.repository import ReleaseRepository
from fleetloop.platform.releases.server import RangeRequestHandler
from fleetloop.platform.releases.signing import resign
from tests.platform.release_data import SCHEMA, flip_a_bit, release_meta, served_artifact

Publish = Callable[..., ReleaseFields]
Vehicle = Callable[..., OtaClientConfig]


def test_published_release_verifies_and_lands_in_the_shared_cache(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    fields = publish("3", vehicles=("v-0001", "v-0002"))
    cfg = vehicle()
    got = fetch_verified_release(cfg, "policy", "3", "v-0002")
    assert got.fields == fields and got.wave == 1
    assert got.path == cfg.cache_dir / "sha256" / fields.sha256
    assert got.path.read_bytes() == served_artifact(repo, fields).read_bytes()
    # a second vehicle of the shard reuses the verified file; nothing is left half-downloaded
    again = fetch_verified_release(cfg, "policy", "3", "v-0001")
    assert again.path == got.path
    assert list((cfg.cache_dir / "partial").glob("*.part")) == []


def test_flipped_byte_in_artifact_is_refused_and_not_cached(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    fields = publish("3")
    flip_a_bit(served_artifact(repo, fields))
    cfg = vehicle()
    with pytest.raises(BadHash, match="do not match the signed sha256"):
        fetch_verified_release(cfg, "policy", "3", "v-0001")
    assert not (cfg.cache_dir / "sha256" / fields.sha256).exists()


def test_tampered_target_metadata_is_refused(repo: ReleaseRepository, publish: Publish, vehicle: Vehicle) -> None:
    publish("3")
    targets_file = repo.metadata_dir / f"{repo.load('targets').signed.version}.targets.json"
    doc = json.loads(targets_file.read_bytes())
    doc["signed"]["targets"]["models/policy/3/artifact"]["custom"]["input_schema_version"] = SCHEMA + 1
    targets_file.write_text(json.dumps(doc))
    with pytest.raises(SignatureRejected):
        fetch_verified_release(vehicle(), "policy", "3", "v-0001")


def test_expired_timestamp_is_refused_until_the_repository_refreshes_it(
    repo: ReleaseRepository, make_artifact: Callable[..., Path], vehicle: Vehicle
) -> None:
    # a freeze attack: the server keeps offering metadata signed two days ago (the timestamp lives one day)
    fields = repo.publish("policy", "3", make_artifact("p3"), release_meta(), utc_now() - timedelta(days=2))
    repo.assign_wave(fields.release, 1, VehicleList(("v-0001",)), utc_now() - timedelta(days=2))
    cfg = vehicle()
    with pytest.raises(ExpiredMetadata, match="timestamp"):
        fetch_verified_release(cfg, "policy", "3", "v-0001")
    assert repo.refresh_timestamp(utc_now()) == ["timestamp"]
    assert fetch_verified_release(cfg, "policy", "3", "v-0001").fields.release == fields.release


def vehicle_past_two_releases(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle, keep: str
) -> tuple[OtaClientConfig, bytes]:
    """A vehicle that installed release 1 and then release 2; and the metadata file ``keep`` as release 1 had it."""
    publish("3")
    cfg = vehicle()
    fetch_verified_release(cfg, "policy", "3", "v-0001")
    old = (repo.metadata_dir / keep).read_bytes()
    publish("4")
    fetch_verified_release(cfg, "policy", "4", "v-0001")  # the vehicle now trusts the newer metadata
    return cfg, old


def test_replayed_old_timestamp_is_refused(repo: ReleaseRepository, publish: Publish, vehicle: Vehicle) -> None:
    cfg, old_timestamp = vehicle_past_two_releases(repo, publish, vehicle, "timestamp.json")
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(ReplayedMetadata, match="timestamp"):
        fetch_verified_release(cfg, "policy", "3", "v-0001")


def test_replayed_old_snapshot_is_refused(repo: ReleaseRepository, publish: Publish, vehicle: Vehicle) -> None:
    cfg, _ = vehicle_past_two_releases(repo, publish, vehicle, "snapshot.json")
    old_snapshot = (repo.metadata_dir / "snapshot.json").read_bytes()  # the one the vehicle trusts now
    publish("5")
    # the attacker serves that old snapshot under the name the new timestamp points to, hiding release 3
    current = repo.load("snapshot").signed.version
    (repo.metadata_dir / f"{current}.snapshot.json").write_bytes(old_snapshot)
    with pytest.raises(ReplayedMetadata):
        fetch_verified_release(cfg, "policy", "5", "v-0001")


def test_metadata_signed_by_revoked_targets_key_is_refused_after_rotation(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    publish("3")
    stolen = load_keys(repo.state_dir).signers["targets"][0]
    repo.rotate_key("targets", utc_now())
    cfg = vehicle()
    # legitimate metadata after the rotation still verifies from root version 1: the vehicle follows the chain
    assert fetch_verified_release(cfg, "policy", "3", "v-0001").fields.version == "3"
    publish("4")
    # the holder of the revoked key re-signs the current targets with a malicious artifact's hashes
    md = repo.load("targets")
    evil = TargetFile.from_data("models/policy/4/artifact", b"evil weights")
    evil.unrecognized_fields["custom"] = md.signed.targets["models/policy/4/artifact"].custom
    md.signed.targets["models/policy/4/artifact"] = evil
    md.sign(stolen)
    (repo.metadata_dir / f"{md.signed.version}.targets.json").write_bytes(md.to_bytes())
    with pytest.raises(SignatureRejected):
        fetch_verified_release(cfg, "policy", "4", "v-0001")


def test_root_signed_below_threshold_is_refused(repo: ReleaseRepository, publish: Publish, vehicle: Vehicle) -> None:
    publish("3")
    one_stolen_root_key = load_keys(repo.state_dir).signers["root"][0]
    root = repo.load("root")
    resign(root, [one_stolen_root_key], utc_now(), timedelta(days=365))  # 1 of the 2 signatures root needs
    (repo.metadata_dir / f"{root.signed.version}.root.json").write_bytes(root.to_bytes())
    with pytest.raises(SignatureRejected):
        fetch_verified_release(vehicle(), "policy", "3", "v-0001")


def test_root_rotation_is_followed_from_the_root_the_vehicle_was_built_with(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    old_root_keys = set(load_keys(repo.state_dir).keyids("root"))
    assert repo.rotate_key("root", utc_now()) == 2
    assert repo.rotate_key("timestamp", utc_now()) == 3
    publish("3")
    cfg = vehicle()
    assert fetch_verified_release(cfg, "policy", "3", "v-0001").wave == 1
    trusted: Metadata = Metadata.from_file(str(cfg.metadata_dir / "root.json"))
    assert trusted.signed.version == 3
    assert old_root_keys.isdisjoint(trusted.signed.roles["root"].keyids)


def test_vehicle_not_in_the_signed_assignment_installs_nothing(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    fields = publish("3", vehicles=("v-0001",))
    cfg = vehicle()
    with pytest.raises(NotAssigned, match="v-0002"):
        fetch_verified_release(cfg, "policy", "3", "v-0002")
    assert not (cfg.cache_dir / "sha256" / fields.sha256).exists()
    # a hash-range wave covers exactly the vehicles whose bucket falls in it
    others = [f"v-{i:04d}" for i in range(2, 100)]  # not in wave 1
    inside = next(v for v in others if cohort_bucket(v, 10_000) < 5_000)
    outside = next(v for v in others if cohort_bucket(v, 10_000) >= 5_000)
    repo.assign_wave(fields.release, 2, HashRange(0, 5_000), utc_now())
    assert fetch_verified_release(cfg, "policy", "3", inside).wave == 2
    with pytest.raises(NotAssigned, match="none of the 2 signed wave"):
        fetch_verified_release(cfg, "policy", "3", outside)


def test_release_without_any_wave_installs_nowhere(
    repo: ReleaseRepository, make_artifact: Callable[..., Path], vehicle: Vehicle
) -> None:
    repo.publish("policy", "3", make_artifact("p3"), release_meta(), utc_now())
    with pytest.raises(NotAssigned, match="none of the 0 signed wave"):
        fetch_verified_release(vehicle(), "policy", "3", "v-0001")


def test_unsupported_input_schema_is_refused_before_download(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    fields = publish("3", input_schema_version=SCHEMA + 1)
    cfg = vehicle()
    with pytest.raises(UnsupportedSchema, match=f"input schema {SCHEMA + 1}"):
        fetch_verified_release(cfg, "policy", "3", "v-0001")
    assert not (cfg.cache_dir / "sha256" / fields.sha256).exists()


def test_authorised_rollback_is_accepted_and_an_unsigned_one_is_not(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle
) -> None:
    v3 = publish("3")
    v4 = publish("4", parent_version="3")
    cfg = vehicle()
    running = fetch_verified_release(cfg, "policy", "4", "v-0001")
    assert running.fields.release == v4.release == 2
    # a command to go back to v3 alone: its release number is older than what the vehicle runs
    with pytest.raises(ReplayedMetadata, match="older than the installed release 2"):
        fetch_verified_release(cfg, "policy", "3", "v-0001", installed_release=running.fields.release)
    back = repo.republish("policy", "3", utc_now())
    repo.assign_wave(back.release, 1, VehicleList(("v-0001",)), utc_now())
    got = fetch_verified_release(cfg, "policy", "3", "v-0001", installed_release=running.fields.release)
    assert got.fields.release == 3 > running.fields.release
    assert got.fields.sha256 == v3.sha256 and got.path.read_bytes() == served_artifact(repo, v3).read_bytes()


class CutFirstTransferHandler(RangeRequestHandler):
    """Breaks off the first artifact transfer halfway (a lost link) and records every Range header it sees."""

    ranges: ClassVar[list[str | None]] = []
    cut: ClassVar[bool] = True

    def send_body(self, f, length_bytes: int) -> None:  # type: ignore[no-untyped-def]
        if self.path.endswith(".artifact"):
            type(self).ranges.append(self.headers.get("Range"))
            if type(self).cut:
                type(self).cut = False
                self.wfile.write(f.read(length_bytes // 2))
                self.wfile.flush()
                self.close_connection = True
                return
        super().send_body(f, length_bytes)


def test_interrupted_download_resumes_where_it_broke_off(
    repo: ReleaseRepository, publish: Publish, vehicle: Vehicle, serve: Callable[..., str]
) -> None:
    fields = publish("3")
    CutFirstTransferHandler.ranges, CutFirstTransferHandler.cut = [], True
    cfg = vehicle(serve(CutFirstTransferHandler))
    got = fetch_verified_release(cfg, "policy", "3", "v-0001")
    assert CutFirstTransferHandler.ranges == [None, f"bytes={fields.length_bytes // 2}-"]
    assert got.path.read_bytes() == served_artifact(repo, fields).read_bytes()


def test_offline_verify_accepts_the_release_and_refuses_a_flipped_byte(
    repo: ReleaseRepository, publish: Publish, tmp_path: Path
) -> None:
    fields = publish("3")
    copy = tmp_path / "downloaded.safetensors"
    shutil.copyfile(served_artifact(repo, fields), copy)
    assert verify_file(repo, copy) == fields
    data = bytearray(copy.read_bytes())
    data[0] ^= 0x80
    copy.write_bytes(bytes(data))
    with pytest.raises(BadHash, match="altered after signing"):
        verify_file(repo, copy)
