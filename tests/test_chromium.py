"""A real browser through the proxy: headless Debian Chromium opens a listed URL and gets the block page,
which says who blocks (the list's title, legal basis and appeal link, signed by the hotline).

The screenshot is kept in tests/artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.conftest import require_program
from tests.support.proxy import RunningProxy, start_proxy

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
HOME_CALLS = ("google.com", "googleapis.com", "gstatic.com", "gvt1.com", "chromium.org")


def chromium_args(proxy: RunningProxy, profile: Path) -> list[str]:
    return [require_program("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
            "--no-pings", "--disable-client-side-phishing-detection",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
            f"--user-data-dir={profile}",
            f"--proxy-server={proxy.url}",
            "--proxy-bypass-list=<-loopback>",  # Chromium bypasses proxies for loopback unless told not to
            "--window-size=1200,800"]


async def run_chromium(args: list[str], timeout: float = 60) -> bytes:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium did not finish within {timeout} s")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


@pytest.fixture
def browser_proxy(hotline, plugin, origin, tmp_path):  # noqa: F811 - pytest fixture injection
    hotline.run("add", f"http://{origin}/blocked.html")
    # Chromium still calls home (time, updates, sign-in) through the proxy: keep those on this machine.
    hotline.run("add", "--scope", "domain", *(f"http://{d}/" for d in HOME_CALLS))
    hotline.run("lists", "set", "default", "--title", "Example Hotline <Trust>",
                "--legal-basis", "Court order 12/2024 under the Example Act, s. 7",
                "--appeal-url", "https://hotline.example/appeal?list=default")
    hotline.run("publish")
    plugin.write_config()
    plugin.install_published()
    running = start_proxy(plugin, tmp_path)
    yield running
    running.stop()


async def test_chromium_shows_the_block_page(browser_proxy: RunningProxy, origin: str, tmp_path: Path) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    blocked = f"http://{origin}/blocked.html"
    args = chromium_args(browser_proxy, tmp_path / "profile")

    dom = (await run_chromium([*args, "--dump-dom", blocked])).decode()
    assert "Access to this page is blocked" in dom
    assert "<code>default</code>" in dom
    assert "Blocked by <strong>Example Hotline &lt;Trust&gt;</strong>" in dom  # escaped: text, not markup
    assert "Legal basis: Court order 12/2024 under the Example Act, s. 7" in dom
    assert 'href="https://hotline.example/appeal?list=default"' in dom
    assert "blocked.html" not in dom

    shot = tmp_path / "blocked.png"
    await run_chromium([*args, f"--screenshot={shot}", blocked])
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    shutil.copy(shot, ARTIFACTS / "chromium-block-page.png")

    allowed = (await run_chromium([*args, "--dump-dom", f"http://{origin}/fine.html"])).decode()
    assert "origin content at /fine.html" in allowed
    access = browser_proxy.access_log.read_text()
    assert "blocked list=default" in access and "blocked.html" not in access
    forwarded = [line.split()[3] for line in access.splitlines() if line.endswith(" allowed")]
    assert all(url.startswith(f"http://{origin}/") for url in forwarded), forwarded  # nothing left 127.0.0.1
