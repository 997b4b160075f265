"""The README's optuna-dashboard command on a committed study's storage: it serves on loopback
and lists the same tuning studies the storage holds."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from conftest import REPO

STUDY = REPO / "results" / "movie_to_amazon_minilm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_lists_a_committed_studys_tunings(tmp_path):
    exe = Path(sys.executable).with_name("optuna-dashboard")
    if not exe.exists():
        pytest.skip("optuna-dashboard is not installed (pip install 'transfer-bench[dashboard]')")
    db = tmp_path / "optuna.db"
    shutil.copy(STUDY / "optuna.db", db)  # the dashboard may write; the committed file stays
    url = f"sqlite:///{db}"
    port = _free_port()
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.load(r)
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert body is not None, "the dashboard never answered"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    listed = sorted(s["study_name"] for s in body["study_summaries"])
    assert listed == sorted(optuna.get_all_study_names(url)) and len(listed) > 10
    assert all(name.startswith("movie_to_amazon_minilm/") for name in listed)
