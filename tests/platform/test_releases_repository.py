"""The publisher's side: keys on disk, what publish refuses, the release number, the timestamp refresh, the server."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from fleetloop.platform.releases import api
from fleetloop.platform.releases.api import utc_now
from fleetloop.platform.releases.errors import BadReleaseInput, KeysMissing, ReleaseNotFound
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.keys import keys_dir
from fleetloop.platform.releases.repository import ReleaseRepository
from tests.conftest import free_port
from tests.platform.release_data import release_meta


def test_keys_are_private_files_in_a_private_directory(repo: ReleaseRepository) -> None:
    d = keys_dir(repo.state_dir)
    assert d.stat().st_mode & 0o777 == 0o700
    pems = sorted(p.name for p in d.glob("*.pem"))
    assert pems == [
        "rollout.pem",
        "root-1.pem",
        "root-2.pem",
        "root-3.pem",
        "snapshot.pem",
        "targets.pem",
        "timestamp.pem",
    ]
    assert {p.stat().st_mode & 0o777 for p in d.glob("*.pem")} == {0o600}
    root = repo.load("root").signed
    assert root.roles["root"].threshold == 2 and len(root.roles["root"].keyids) == 3


def test_initialising_twice_refuses_to_overwrite_the_keys(repo: ReleaseRepository) -> None:
    with pytest.raises(BadReleaseInput, match="already exist"):
        ReleaseRepository.initialise(repo.state_dir, utc_now())


def test_repository_not_initialised_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(KeysMissing, match="ota keys init"):
        ReleaseRepository(tmp_path)


def test_other_bytes_under_a_published_version_are_refused(
    repo: ReleaseRepository, publish: Callable[..., ReleaseFields], make_artifact: Callable[..., Path]
) -> None:
    publish("3")
    with pytest.raises(BadReleaseInput, match="immutable"):
        repo.publish("policy", "3", make_artifact("other"), release_meta(), utc_now())
    assert [p.name for p in (repo.targets_dir / "models/policy/3").iterdir() if p.name.startswith(".")] == []


def test_float_metric_in_release_metadata_is_refused_before_anything_is_signed(
    repo: ReleaseRepository, make_artifact: Callable[..., Path]
) -> None:
    version_before = repo.load("targets").signed.version
    with pytest.raises(BadReleaseInput, match=r"collision_rate = 0\.01"):
        repo.publish("policy", "3", make_artifact("p"), release_meta(collision_rate=0.01), utc_now())
    with pytest.raises(BadReleaseInput, match="lacks run_id"):
        repo.publish(
            "policy", "3", make_artifact("p"), {k: v for k, v in release_meta().items() if k != "run_id"}, utc_now()
        )
    assert repo.load("targets").signed.version == version_before


def test_release_numbers_only_grow_through_rollbacks(
    repo: ReleaseRepository, publish: Callable[..., ReleaseFields]
) -> None:
    assert [publish(v).release for v in ("3", "4")] == [1, 2]
    assert repo.republish("policy", "3", utc_now()).release == 3
    assert publish("5").release == 4
    listed = repo.releases()
    assert [(s.fields.version, s.fields.release) for s in listed] == [("4", 2), ("3", 3), ("5", 4)]
    assert [w.wave for w in listed[-1].waves] == [1]
    with pytest.raises(ReleaseNotFound):
        repo.republish("policy", "9", utc_now())


def test_timestamp_refresh_resigns_only_what_is_due(repo: ReleaseRepository) -> None:
    now = utc_now()
    assert repo.refresh_timestamp(now) == []
    version = repo.load("timestamp").signed.version
    assert repo.refresh_timestamp(now + timedelta(hours=19)) == ["timestamp"]
    ts = repo.load("timestamp").signed
    assert ts.version == version + 1 and ts.expires == now + timedelta(hours=19, days=1)
    assert repo.refresh_timestamp(now + timedelta(days=6, hours=19)) == ["snapshot", "timestamp"]


def test_rotated_keys_replace_the_old_files_and_verify_still_passes(
    repo: ReleaseRepository, publish: Callable[..., ReleaseFields]
) -> None:
    fields = publish("3")
    before = (keys_dir(repo.state_dir) / "snapshot.pem").read_bytes()
    assert api.rotate_key(repo.state_dir, "snapshot") == 2
    assert (keys_dir(repo.state_dir) / "snapshot.pem").read_bytes() != before
    assert not (keys_dir(repo.state_dir) / "pending").exists()
    artifact = repo.targets_dir / "models/policy/3" / f"{fields.sha256}.artifact"
    assert api.verify_file(repo.state_dir, artifact) == fields
    with pytest.raises(BadReleaseInput, match="unknown role"):
        api.rotate_key(repo.state_dir, "mirror")


def test_server_module_serves_the_repository_with_byte_ranges(
    repo: ReleaseRepository, publish: Callable[..., ReleaseFields]
) -> None:
    fields = publish("3")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetloop.platform.releases.server", "--dir", str(repo.root_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/targets/models/policy/3/{fields.sha256}.artifact"
        whole = (repo.targets_dir / "models/policy/3" / f"{fields.sha256}.artifact").read_bytes()
        deadline = time.monotonic() + 20
        while True:
            try:
                req = urllib.request.Request(url, headers={"Range": "bytes=10-19"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    assert resp.status == 206
                    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
                    assert resp.read() == whole[10:20]
                break
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Range": f"bytes={len(whole)}-"}), timeout=5)
        assert err.value.code == 416
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/../keys/targets.pem", timeout=5)
        assert err.value.code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
