"""kill -9 of `blocklist import` and `blocklist publish` at random points: nothing lost, nothing half-done.

Each run kills a real `python -m blocklist` process at a random moment inside its
work, then checks that the store holds all of the import or none of it, that the
publish directory is exactly one consistent signed version, and that re-running
the command completes. 10 runs each by default, 50 with --soak.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from blocklist.core.canary import with_canary
from blocklist.core.format.digestset import set_checksum
from blocklist.home import Home
from blocklist.publish import current_manifest
from blocklist.store import Store
from tests.conftest import Hotline
from tests.support.artifacts import published_state

ROOT = Path(__file__).resolve().parent.parent


def start(hotline: Hotline, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "blocklist", "--home", str(hotline.home),
                             "--actor", "killer", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def run_and_kill(hotline: Hotline, delay: float, *args: str) -> bool:
    """Start the command, kill -9 it after `delay` s; True if it was still running."""
    proc = start(hotline, *args)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        return True


def timed(hotline: Hotline, *args: str) -> float:
    t0 = time.monotonic()
    assert start(hotline, *args).wait(timeout=120) == 0
    return time.monotonic() - t0


def entry_count(hotline: Hotline) -> int:
    store = Store(hotline.home / "store.sqlite")
    try:
        return store.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        store.close()


def test_kill_during_import(hotline: Hotline, tmp_path: Path, soak: bool) -> None:
    runs = 50 if soak else 10
    rng = random.Random(11)
    size = 3000

    def make_file(i: int) -> Path:
        f = tmp_path / f"import-{i}.txt"
        f.write_text("".join(f"http://h{j % 50}.run{i}.example/p/{j}.html\n" for j in range(size)))
        return f

    duration = timed(hotline, "import", str(make_file(0)))
    expected = size
    killed = 0
    for i in range(1, runs + 1):
        f = make_file(i)
        killed += run_and_kill(hotline, rng.uniform(0.05, duration), "import", str(f))
        assert entry_count(hotline) in (expected, expected + size)  # all or nothing
        assert start(hotline, "import", str(f)).wait(timeout=120) == 0  # re-running completes
        expected += size
        assert entry_count(hotline) == expected
    assert killed >= runs // 2, f"only {killed} of {runs} runs were killed mid-import"


def test_kill_during_publish(hotline: Hotline, tmp_path: Path, soak: bool) -> None:
    runs = 50 if soak else 10
    rng = random.Random(12)
    seed = tmp_path / "seed.txt"
    seed.write_text("".join(f"http://h{j % 400}.seed.example/p/{j}.html\n" for j in range(30000)))
    hotline.run("import", str(seed))
    hotline.run("publish")
    hotline.run("add", "http://timing.example/page.html")
    duration = timed(hotline, "publish")  # a delta publish, like every killed run below
    _, version = published_state(hotline)
    killed = 0
    for i in range(runs):
        hotline.run("add", f"http://new{i}.example/page.html")
        killed += run_and_kill(hotline, rng.uniform(0.05, duration * 1.2), "publish")
        _, after_kill = published_state(hotline)
        assert after_kill in (version, version + 1)  # the old version or the new, never between
        assert start(hotline, "publish").wait(timeout=120) == 0
        _, rerun = published_state(hotline)
        assert rerun == version + 1  # the change is published exactly once
        version = rerun
        # what the store holds is exactly what is published, and recorded
        home = Home(hotline.home)
        store = Store(home.store_path)
        info = store.require_list("default")
        manifest = current_manifest(home, home.signing_key())
        assert manifest.lists["default"].checksum == set_checksum(*with_canary(info.name, info.salt,
                                                                               *store.digest_sets(info)))
        assert store.last_published(info) == version
        store.close()
    assert version == 2 + runs
    assert killed >= runs // 3, f"only {killed} of {runs} runs were killed mid-publish"
