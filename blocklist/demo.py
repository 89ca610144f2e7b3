"""`blocklist demo`: the whole chain on this machine, with sample data, in a few seconds.

hotline init + import + publish -> `blocklist serve` -> `blocklist-plugin sync`
(long-poll) -> checks and the filtering proxy -> a live change reaching the plugin
-> `blocklist-plugin status` and `blocklist fleet`. Every program runs as a real
process on 127.0.0.1; the work directory is kept so the files can be explored.
Exits 0 when every step gave the expected answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import click

from blocklist.core.table import render

CHECKS = [  # (url, blocked?) -- variants a user might try, listed and not
    ("http://images.bad.example/gallery/photo-0001.jpg", True),
    ("HTTP://IMAGES.BAD.EXAMPLE:80/gallery/./photo-0001.jpg#top", True),
    ("http://images.bad.example/gallery/photo-0003.jpg", False),
    ("http://forum.mixed.example/thread.php?id=4521", True),
    ("http://forum.mixed.example/thread.php?id=4522", False),
    ("http://forum.mixed.example/users/uploader77/album/2/pic.png", True),
    ("http://forum.mixed.example/users/someone-else/", False),
    ("http://www.entirely-bad.test/anything", True),
    ("http://cdn.files.example/a/b/c/d/e/f/evil.zip?download=1", True),
    ("http://3238003210/hidden/file.html", True),          # 193.0.2.10 as one number
    ("http://bücher.example/verboten.html", True),           # IDN in Unicode
    ("http://good.example/", False),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, workdir: Path, echo: Callable[[str], None]) -> None:
        self.dir = workdir
        self.echo = echo
        self.home = workdir / "hotline"
        self.plugin_dir = workdir / "isp"
        self.procs: list[subprocess.Popen] = []
        self.failures: list[str] = []
        self.env = dict(os.environ, BLOCKLIST_ACTOR="demo")

    # -- processes

    def hotline(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run([sys.executable, "-m", "blocklist", "--home", str(self.home), *args], check)

    def plugin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run([sys.executable, "-m", "resolver_plugin", "-c", str(self.plugin_dir / "plugin.yaml"),
                          *args], check)

    def _run(self, argv: list[str], check: bool) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise click.ClickException(f"{' '.join(argv[2:])} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def start(self, argv: list[str], log: str) -> subprocess.Popen:
        out = open(self.dir / log, "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def expect(self, ok: bool, what: str) -> str:
        if not ok:
            self.failures.append(what)
        return "ok" if ok else "UNEXPECTED"

    def section(self, title: str) -> None:
        self.echo(f"\n== {title}")

    # -- steps

    def run(self) -> int:
        self.section(f"hotline: a list of sample URLs ({self.home})")
        self.hotline("init", "--list", "iwf")
        sample = self.dir / "sample.csv"
        sample.write_bytes(resources.files("blocklist").joinpath("demo/sample.csv").read_bytes())
        self.echo(self.hotline("import", str(sample), "--list", "iwf").stdout.strip())
        self.echo(self.hotline("lists").stdout.rstrip())
        self.echo("published: " + self.hotline("publish").stdout.strip())

        port = free_port()
        self.start([sys.executable, "-m", "blocklist", "--home", str(self.home), "serve", "--port", str(port)],
                   "serve.log")
        self.wait_http(f"http://127.0.0.1:{port}/manifest.json", "blocklist serve")
        self.echo(f"blocklist serve: http://127.0.0.1:{port}/ (publish dir, long-poll, /fleet)")

        self.section("ISP: blocklist-plugin sync (verifies every signature and hash)")
        proxy_port, admin_port = free_port(), free_port()
        self.write_plugin_config(port, proxy_port, admin_port)
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.plugin("sync", "--once")
        self.start([sys.executable, "-m", "resolver_plugin", "-c", str(self.plugin_dir / "plugin.yaml"), "sync"],
                   "sync.log")
        self.echo(f"cache: {self.plugin_dir / 'cache'}; sync daemon long-polls the hotline")

        self.section("checks: `blocklist-plugin check URL` (exit 0 blocked, 1 allowed)")
        rows = []
        for url, expected in CHECKS:
            blocked = self.plugin("check", url, check=False).returncode == 0
            rows.append([url, "BLOCKED" if blocked else "allowed", self.expect(blocked == expected, f"check {url}")])
        self.echo(render(["URL", "VERDICT", ""], rows))

        self.proxy_step(proxy_port)
        self.live_change_step()

        self.section("operators: blocklist-plugin status")
        self.wait_for(lambda: self.plugin("status", check=False).returncode == 0, 10, "status OK")
        status = self.plugin("status", check=False)
        self.echo(status.stdout.rstrip())
        self.expect(status.returncode == 0, "status OK")
        self.section("operators: blocklist fleet (which node enforces which version)")
        self.wait_for(lambda: self.hotline("fleet", check=False).returncode == 0, 10, "fleet OK")
        fleet = self.hotline("fleet", check=False)
        self.echo(fleet.stdout.rstrip())
        self.expect(fleet.returncode == 0 and "demo-isp-1" in fleet.stdout, "fleet shows the node in sync")
        self.echo(f"admin endpoint: {self.admin_url}/status  /metrics  /healthz")
        return 0

    def write_plugin_config(self, port: int, proxy_port: int, admin_port: int) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        (self.plugin_dir / "hotline.pub").write_text(self.hotline("key", "export").stdout)
        token = self.plugin_dir / "demo-isp-1.token"  # registered: the fleet records its polls
        token.touch(mode=0o600)
        token.write_text(self.hotline("node", "add", "demo-isp-1").stdout)
        (self.plugin_dir / "plugin.yaml").write_text(
            f"source: http://127.0.0.1:{port}/\npublic_key_file: hotline.pub\nlists: [iwf]\n"
            f"cache_dir: cache\nnode_id: demo-isp-1\nnode_token_file: demo-isp-1.token\n"
            f"poll_interval: 5\nlong_poll: 20\n"
            f"proxy:\n  listen: 127.0.0.1:{proxy_port}\n  appeal_url: https://hotline.example/appeal\n"
            # the demo's "internet" is on loopback, which a proxy does not connect to unless told
            f"  allow_private_destinations: [127.0.0.0/8]\n"
            f"admin:\n  listen: 127.0.0.1:{admin_port}\n")

    def proxy_step(self, proxy_port: int) -> None:
        self.section("the filtering proxy (Cleanfeed stage 2): `blocklist-plugin proxy`")
        with origin_server() as origin:
            self.start([sys.executable, "-m", "resolver_plugin", "-c", str(self.plugin_dir / "plugin.yaml"),
                        "proxy"], "proxy.log")
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"}))
            self.wait_for(lambda: _port_open(proxy_port), 15, "proxy listening")
            rows = []
            for url, expected in [(f"{origin}/hello.html", 200),
                                  ("http://images.bad.example/gallery/photo-0002.jpg", 451)]:
                status, body = _fetch(opener, url)
                rows.append([url, status, body.strip()[:60], self.expect(status == expected, f"proxy {url}")])
            self.echo(render(["URL (through the proxy)", "STATUS", "BODY", ""], rows))

    def live_change_step(self) -> None:
        self.section("a live change: add, publish, and the plugin enforces it")
        new_url = "http://images.bad.example/gallery/photo-0003.jpg"
        self.hotline("add", new_url, "--list", "iwf", "--reason", "demo: live change")
        t0 = time.monotonic()
        version = self.hotline("publish").stdout.strip()
        want = int(version.split()[-1])
        self.wait_for(lambda: self.enforced("iwf") == want, 10, "sync to enforce the new version")
        elapsed = time.monotonic() - t0
        blocked = self.plugin("check", new_url, check=False).returncode == 0
        self.echo(f"published {version}; the plugin enforced it {elapsed * 1000:.0f} ms later; "
                  f"{new_url} is now {'BLOCKED' if blocked else 'allowed'} "
                  f"[{self.expect(blocked, 'live change blocked')}]")

    def enforced(self, name: str) -> int:
        return _enforced(self.admin_url, name)

    # -- waiting

    def wait_for(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        self.failures.append(f"timed out waiting for {what}")

    def wait_http(self, url: str, what: str) -> None:
        def ready() -> bool:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return True
            except OSError:
                return False
        self.wait_for(ready, 15, what)


def _enforced(admin_url: str, name: str) -> int:
    """The version of list `name` the plugin enforces, as its admin endpoint's /status says."""
    request = urllib.request.Request(admin_url + "/status", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            lists = json.load(resp)["lists"]
        return next(int(item["enforced"]) for item in lists if item["list"] == name)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return 0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _fetch(opener: urllib.request.OpenerDirector, url: str) -> tuple[int, str]:
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read(200).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        text = err.read(4000).decode("utf-8", "replace")
        title = text.split("<title>", 1)[-1].split("</title>", 1)[0] if "<title>" in text else text
        return err.code, " ".join(title.split())
    except OSError as err:
        return 0, str(err)


@contextlib.contextmanager
def origin_server() -> Iterator[str]:
    """A stand-in for "the internet": one page on 127.0.0.1."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"hello from the origin server\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def run_demo(workdir: Path, echo: Callable[[str], None] = click.echo) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(workdir, echo)
    try:
        demo.run()
    finally:
        demo.stop_all()
    echo("")
    if demo.failures:
        echo("demo: UNEXPECTED results: " + "; ".join(demo.failures))
        echo(f"logs: {workdir}/*.log")
        return 1
    echo(f"demo: every step gave the expected answer. Files and logs: {workdir}")
    return 0
