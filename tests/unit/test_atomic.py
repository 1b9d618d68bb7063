"""A durable atomic write leaves the old or the new content, never a mix, and no temp file behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleetloop.platform import atomic


def test_writes_new_content_and_leaves_only_the_target(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    assert atomic.write_text_atomic(path, "new ✓") == path
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failure_before_the_rename_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        atomic.write_bytes_atomic(path, b"new content that never lands")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failure_while_writing_leaves_the_target_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "first.bin"

    def full_disk(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", full_disk)
    with pytest.raises(OSError):
        atomic.write_bytes_atomic(path, b"x" * 10)
    assert list(tmp_path.iterdir()) == []


def test_the_file_and_then_its_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, bool]] = []  # (what the fd points at, is it a folder)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    path = tmp_path / "manifest.json"
    atomic.write_bytes_atomic(path, memoryview(b"abc"))
    assert len(synced) == 2
    (file_fd_path, file_is_dir), (dir_fd_path, dir_is_dir) = synced
    assert not file_is_dir and Path(file_fd_path).name.endswith(f".{os.getpid()}.tmp")
    assert dir_is_dir and Path(dir_fd_path) == tmp_path
    assert path.read_bytes() == b"abc"


def test_large_and_non_byte_buffers_are_written_whole(tmp_path: Path) -> None:
    import array

    data = array.array("d", range(300_000))  # 2.4 MB of 8-byte items: several os.write calls may be needed
    path = atomic.write_bytes_atomic(tmp_path / "big.bin", memoryview(data))
    assert path.read_bytes() == data.tobytes()


def test_temp_names_never_match_the_real_files_glob(tmp_path: Path) -> None:
    names = {atomic.temp_path_for(tmp_path / "a.json").name for _ in range(50)}
    assert len(names) == 50  # fresh per call, so two threads never share one
    assert all(n.startswith(".a.json.") and n.endswith(f".{os.getpid()}.tmp") for n in names)
