"""A full disk under the hotline home: a clear error, no corrupt state, recovery when space returns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import Hotline, mounted_tmpfs, resize_tmpfs
from tests.support.artifacts import published_state


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "small", "3m") as mnt:
        yield mnt


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

    resize_tmpfs(small_disk, "64m")
    hotline.run("import", str(big))
    st = os.statvfs(small_disk)
    used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
    resize_tmpfs(small_disk, f"{used_kib + 400}k")  # room for the store's journal, not for a snapshot and delta
    result = hotline.run("publish", ok=None)
    assert result.exit_code == 3 and "Traceback" not in result.output, result.output
    assert "No space left on device" in result.output
    assert published_state(hotline)[1] == 1  # still exactly the old version

    resize_tmpfs(small_disk, "64m")
    assert hotline.run("publish").stdout.strip() == "default 2"
    assert published_state(hotline)[1] == 2
    assert len(json.loads(hotline.run("ls", "--json").output)) == 60001
