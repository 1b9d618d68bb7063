"""Scrape targets in Prometheus file_sd format: the format Prometheus reads, and stale files pruned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetloop.platform.errors import SetupError
from fleetloop.platform.metrics.targets import (
    format_address,
    list_targets,
    pid_alive,
    prune_stale_targets,
    register_target,
    remove_target,
    targets_dir,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_target_file_is_one_file_sd_group_with_string_labels(tmp_path: Path) -> None:
    path = register_target(tmp_path, "kafka", "127.0.0.1:19099", {"service": "broker"}, pid=os.getpid())
    assert path == tmp_path / "metrics" / "targets" / f"kafka-{os.getpid()}.json"
    groups = json.loads(path.read_text())
    # file_sd: a list of groups, each with "targets" (host:port strings) and "labels" (string -> string).
    assert groups == [
        {
            "targets": ["127.0.0.1:19099"],
            "labels": {"process": "kafka", "pid": str(os.getpid()), "service": "broker"},
        }
    ]
    assert all(isinstance(v, str) for v in groups[0]["labels"].values())


def test_registering_again_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    register_target(tmp_path, "sim", "127.0.0.1:1111", pid=os.getpid())
    path = register_target(tmp_path, "sim", "127.0.0.1:2222", pid=os.getpid())
    assert json.loads(path.read_text())[0]["targets"] == ["127.0.0.1:2222"]
    assert sorted(p.name for p in targets_dir(tmp_path).iterdir()) == [path.name]


def test_a_target_without_pid_is_named_after_the_process_and_never_pruned(tmp_path: Path) -> None:
    path = register_target(tmp_path, "external-mlflow", "10.0.0.5:5000")
    assert path.name == "external-mlflow.json"
    assert prune_stale_targets(tmp_path) == []
    (target,) = list_targets(tmp_path).targets
    assert target.pid is None and target.alive is None
    assert remove_target(path) is True
    assert remove_target(path) is False


def test_prune_removes_targets_of_dead_processes_only(tmp_path: Path) -> None:
    dead = _dead_pid()
    live = register_target(tmp_path, "stage", "127.0.0.1:3000", pid=os.getpid())
    stale = register_target(tmp_path, "stage", "127.0.0.1:3001", pid=dead)
    leftover_tmp = targets_dir(tmp_path) / f".stage-{dead}.{dead}.tmp"
    leftover_tmp.write_text("[")
    listing = list_targets(tmp_path)
    assert {(t.pid, t.alive) for t in listing.targets} == {(os.getpid(), True), (dead, False)}
    assert sorted(prune_stale_targets(tmp_path)) == sorted([stale, leftover_tmp])
    assert live.exists() and not stale.exists() and not leftover_tmp.exists()


def test_a_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped: kill(pid, 0) still succeeds, /proc says Z.
        for _ in range(200):
            if Path(f"/proc/{child.pid}/stat").read_text().split(") ")[-1].startswith("Z"):
                break
            import time

            time.sleep(0.01)
        assert pid_alive(child.pid) is False
    finally:
        child.wait()
    assert pid_alive(os.getpid()) is True


def test_unreadable_target_files_are_reported_not_hidden(tmp_path: Path) -> None:
    register_target(tmp_path, "ok", "127.0.0.1:4000", pid=os.getpid())
    bad = targets_dir(tmp_path) / "hand-edited.json"
    bad.write_text('{"targets": "nope"}')
    listing = list_targets(tmp_path)
    assert [t.name for t in listing.targets] == ["ok"]
    assert [p for p, _ in listing.unreadable] == [bad]
    assert "one target group" in listing.unreadable[0][1]


def test_listing_an_empty_state_dir_is_empty(tmp_path: Path) -> None:
    listing = list_targets(tmp_path / "never-used")
    assert listing.targets == [] and listing.unreadable == []


@pytest.mark.parametrize(
    ("name", "address", "labels", "says"),
    [
        ("../etc", "127.0.0.1:1", None, "target name"),
        ("", "127.0.0.1:1", None, "target name"),
        ("sim", "127.0.0.1", None, "host:port"),
        ("sim", "127.0.0.1:0", None, "host:port"),
        ("sim", "127.0.0.1:70000", None, "host:port"),
        ("sim", "127.0.0.1:1", {"bad label": "x"}, "not an identifier"),
        ("sim", "127.0.0.1:1", {"shard": 3}, "must be strings"),
    ],
)
def test_bad_targets_are_refused_with_a_clear_message(
    tmp_path: Path, name: str, address: str, labels: dict[str, str] | None, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        register_target(tmp_path, name, address, labels)
    assert not targets_dir(tmp_path).exists() or list(targets_dir(tmp_path).iterdir()) == []


def test_an_unwritable_state_dir_is_a_setup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(SetupError, match="cannot write the metrics target file"):
        register_target(blocker, "sim", "127.0.0.1:1", pid=os.getpid())


def test_ipv6_addresses_are_bracketed() -> None:
    assert format_address("::1", 9100) == "[::1]:9100"
    assert format_address("127.0.0.1", 9100) == "127.0.0.1:9100"
