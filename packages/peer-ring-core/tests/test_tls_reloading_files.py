"""peer_ring.core.tls.ReloadingFiles with a loader of its own (what an application's HTTPS
listener does): reload on change only, at most once per interval, keep the previous material
when the loader refuses the new files (one warning per bad state), and read_pem's checks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from peer_ring.core.testing import write_file_atomically
from peer_ring.core.tls import ReloadingFiles, read_pem

PEM = b"-----BEGIN THING-----\nAAAA\n-----END THING-----\n"


def test_reloads_changed_files_once_per_interval_and_keeps_the_last_good_material(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "material.pem"
    path.write_bytes(PEM)
    now = [0.0]

    def load() -> bytes:
        data = read_pem(str(path), "material")
        if b"BAD" in data:
            raise ValueError("refused by the loader")
        return data

    log = logging.getLogger("test.reloading")
    files = ReloadingFiles(
        [str(path)], load, reload_interval=5.0, monotonic=lambda: now[0], label="X", logger=log
    )
    assert files.current == PEM and files.version == 0

    # Every state has a size of its own: a replaced file may get a freed inode back, and
    # mtimes are coarse (a few ms), so only the size tells these fast writes apart.
    renewed = PEM.replace(b"AAAA", b"BBBBBB")
    write_file_atomically(path, renewed)
    assert not files.refresh()  # within the interval: not even looked at
    now[0] = 5.0
    assert files.refresh() and files.current == renewed and files.version == 1
    assert not files.refresh()  # unchanged (and within the new interval)

    with caplog.at_level(logging.WARNING, logger="test.reloading"):
        # Only what is logged from here on: the INFO line of the reload above is captured too
        # whenever the root logger is at INFO (--log-level=INFO, or a test run before in the
        # same process).
        caplog.clear()
        for i, bad in enumerate([PEM[:20], PEM.replace(b"AAAA", b"BAD!!!!!")]):
            write_file_atomically(path, bad)
            for _ in range(3):  # the same bad state, several connections
                now[0] += 5.0
                assert not files.refresh()
            assert files.current == renewed and files.version == 1
            assert len(caplog.records) == i + 1
        os.unlink(path)  # mid-rotation: the file is gone
        now[0] += 5.0
        assert not files.refresh()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("X: keeping the previous certificate: material file")
    assert "incomplete" in messages[0]
    assert "refused by the loader" in messages[1]
    assert "cannot stat" in messages[2]

    write_file_atomically(path, PEM)
    now[0] += 5.0
    assert files.refresh() and files.current == PEM and files.version == 2


def test_construction_fails_when_the_files_cannot_be_loaded(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        ReloadingFiles([str(tmp_path / "absent.pem")], lambda: b"")
    (tmp_path / "empty.pem").write_bytes(b"no pem here")
    with pytest.raises(ValueError, match="holds no PEM block"):
        read_pem(str(tmp_path / "empty.pem"), "certificate")
