"""`demo` on a read-only root filesystem: one line naming the tmpfs it needs, not a traceback."""

from __future__ import annotations

import tempfile

import pytest

from proxy.cli import main


def test_demo_without_a_writable_temp_dir_says_to_mount_a_tmpfs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a read-only container leaves: no candidate directory is writable (/proc is not, even
    # for root). The container run itself is checked by .ci/image-check.
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: ["/proc"])
    monkeypatch.setattr(tempfile, "tempdir", None)

    status = main(["demo", "--port", "0", "--admin-port", "0"])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert "--tmpfs /tmp" in line
    assert "temporary directory" in line
    assert "Traceback" not in captured.err
