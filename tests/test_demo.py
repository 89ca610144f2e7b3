"""`blocklist demo` runs the whole chain with real processes and every step answers as expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "blocklist", "demo", "--dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every step gave the expected answer" in out
    assert "UNEXPECTED" not in out
    assert "451" in out and "BLOCKLIST OK" in out and "demo-isp-1" in out
    # the plugin side never logs a listed URL
    for log in (tmp_path / "demo").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "photo-0001" not in text and "uploader77" not in text, log.name
