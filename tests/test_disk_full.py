"""A full disk under the hotline home: a clear error, no corrupt state, recovery when space returns."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import IN_CI, Hotline
from tests.test_faults_hotline import published_state


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs; needs root (CI runs as root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("disk-full tests need root to mount a tmpfs")
        pytest.skip("disk-full tests need root to mount a tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def grow(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def test_hotline_on_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    hotline = Hotline(small_disk / "home", CliRunner())
    hotline.run("init")
    hotline.run("add", "http://first.example/page.html")
    hotline.run("publish")
    big = tmp_path / "big.txt"
    big.write_text("".join(f"http://host{i % 300}.example/some/long/path/number/{i}.html\n" for i in range(60000)))

    result = hotline.run("import", str(big), ok=None)
    assert result.exit_code == 3, result.output
    assert "full" in result.output.lower() and "Traceback" not in result.output
    assert len(json.loads(hotline.run("ls", "--json").output)) == 1  # nothing partial

    grow(small_disk, "64m")
    hotline.run("import", str(big))
    st = os.statvfs(small_disk)
    used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
    grow(small_disk, f"{used_kib + 400}k")  # room for the store's journal, not for a snapshot and delta
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "Traceback" not in result.output, result.output
    assert "No space left on device" in result.output
    assert published_state(hotline)[1] == 1  # still exactly the old version

    grow(small_disk, "64m")
    assert hotline.run("publish").stdout.strip() == "default 2"
    assert published_state(hotline)[1] == 2
    assert len(json.loads(hotline.run("ls", "--json").output)) == 60001
