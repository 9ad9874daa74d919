"""``mlinfra backup-volume serve`` as its pod runs it, as a real process: the token from the mounted file, never
argv; an upload its predecessor never finished removed at start; objects served to the token's holder; SIGTERM
ends it cleanly; a pod missing its directory or token exits 2 with the reason."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.target import TargetError
from mlinfra.backups import volume_cli
from mlinfra.stores.volumeserver import ROOT_ENV, TOKEN_FILE_ENV

pytestmark = pytest.mark.unit

TOKEN = "volume-token-that-must-stay-in-its-file"


def _env(root: Path, token_file: Path) -> dict[str, str]:
    return {**os.environ, ROOT_ENV: str(root), TOKEN_FILE_ENV: str(token_file)}


def test_the_server_sweeps_leftovers_serves_the_token_holder_and_stops_on_sigterm(tmp_path: Path) -> None:
    root, token_file = tmp_path / "claim", tmp_path / "token"
    (root / "ns" / "store").mkdir(parents=True)
    (root / "ns" / "store" / ".tmp-manifest.json.abc").write_bytes(b"half an upload")
    (root / "ns" / "store" / "kept").write_bytes(b"a finished object")
    token_file.write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "mlinfra", "backup-volume", "serve", "--port", "0"]
    proc = subprocess.Popen(
        argv, env=_env(root, token_file), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("removed 1 unfinished upload"), lines
        port = int(re.search(r":(\d+)$", lines[1].strip()).group(1))  # type: ignore[union-attr]
        assert TOKEN not in " ".join(argv)
        assert not (root / "ns" / "store" / ".tmp-manifest.json.abc").exists()
        target = HttpTarget(host="127.0.0.1", port=port, token=TOKEN, where="the test's volume", timeout=5)
        sink = io.BytesIO()
        target.get("ns/store/kept", sink)
        assert sink.getvalue() == b"a finished object"
        with pytest.raises(TargetError, match="token refused"):
            HttpTarget(host="127.0.0.1", port=port, token="wrong-token", where="w", timeout=5).check()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert TOKEN not in out


@pytest.mark.parametrize("missing", ["root", "token"])
def test_a_pod_without_its_claim_or_token_exits_2_with_the_reason(
    tmp_path: Path, missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, token_file = tmp_path / "claim", tmp_path / "token"
    if missing != "root":
        root.mkdir()
    if missing != "token":
        token_file.write_text(TOKEN)
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token_file))
    assert volume_cli.run(0, host="127.0.0.1") == 2
    assert ("is not a directory" if missing == "root" else "cannot read the token file") in capsys.readouterr().out
