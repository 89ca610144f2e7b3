"""Propagation: publish -> N plugin processes enforcing, p50/p99, long-poll vs plain polling behind nginx.

    python tools/bench_propagation.py            # 10 and 50 plugins, 5 publishes each
    python tools/bench_propagation.py --quick    # 10 plugins, 3 publishes
    python tools/bench_propagation.py --json     # one JSON line (for tools/bench.py)

Each plugin is a real `blocklist-plugin sync` daemon with its own cache. The time of
one plugin for one publish runs from the moment the new manifest.json was written
(its mtime; for nginx: the moment the mirror copy finished) to the moment that plugin's cache
state.json named the new version (its mtime, read once a poll every 5 ms sees the version).
Until 2026-12-01 the end was the moment the poll saw it, and polling began only once
`publish` returned, so every figure was at least publish's own time after its manifest. Plain polling uses
poll_interval 1 s, the smallest allowed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.nginx_mirror import mirror, start_nginx, stop_nginx  # noqa: E402

GOAL_P99 = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def state_version(cache: Path) -> int:
    try:
        return int(json.loads((cache / "lists" / "bench" / "state.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return 0


def state_written(cache: Path, version: int, seen: float) -> float:
    """When the plugin made `version` current: state.json's mtime, if it still names that version."""
    path = cache / "lists" / "bench" / "state.json"
    try:
        mtime = path.stat().st_mtime
        return mtime if state_version(cache) == version else seen
    except OSError:
        return seen


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Run:
    def __init__(self, tmp: Path, entries: int) -> None:
        self.tmp = tmp
        self.home = tmp / "hotline"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), BLOCKLIST_ACTOR="bench")
        self.hotline("init", "--list", "bench")
        rows = tmp / "rows.txt"
        rows.write_text("".join(f"http://h{i % 997}.bench.test/p/{i}.html\n" for i in range(entries)))
        self.hotline("import", str(rows), "--list", "bench")
        self.hotline("publish")
        self.key = tmp / "hotline.pub"
        self.key.write_text(self.hotline("key", "export"))
        self.procs: list[subprocess.Popen] = []
        self.counter = 0

    def hotline(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "blocklist", "--home", str(self.home), *args],
                              check=True, capture_output=True, text=True, env=self.env).stdout

    def start_plugins(self, n: int, source: str, long_poll: float, tag: str) -> list[Path]:
        caches = []
        for i in range(n):
            d = self.tmp / f"{tag}-{i}"
            d.mkdir()
            shutil.copy(self.key, d / "hotline.pub")
            (d / "plugin.yaml").write_text(
                f"source: {source}\npublic_key_file: hotline.pub\nlists: [bench]\ncache_dir: cache\n"
                f"node_id: {tag}-{i}\npoll_interval: 1\nlong_poll: {long_poll}\nadmin: {{listen: null}}\n")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "resolver_plugin", "-c", str(d / "plugin.yaml"), "sync"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env))
            caches.append(d / "cache")
        return caches

    def stop_plugins(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []

    def measure(self, caches: list[Path], publishes: int, after_publish=lambda: False) -> list[float]:
        deadline = time.monotonic() + 60
        current = json.loads(self.hotline("lists", "--json"))[0]["published_version"]
        while any(state_version(c) != current for c in caches):  # every plugin at the start line
            if time.monotonic() > deadline:
                raise RuntimeError("plugins did not reach the starting version")
            time.sleep(0.05)
        times: list[float] = []
        for _ in range(publishes):
            self.counter += 1
            self.hotline("add", f"http://new{self.counter}.bench.test/x.html", "--list", "bench")
            version = int(self.hotline("publish").split()[-1])
            # t0: the new manifest appeared (publish replaces it before it returns)
            t0 = (self.home / "publish" / "manifest.json").stat().st_mtime
            if after_publish():  # a mirror copy: t0 is when the copy finished
                t0 = time.time()
            pending = {c: None for c in caches}
            while pending and time.time() - t0 < 30:
                for c in list(pending):
                    if state_version(c) >= version:
                        # when that plugin wrote it, not when we looked: most plugins hold the
                        # version before `publish` has returned (its store commit comes after
                        # the manifest), and looking only starts then
                        times.append(state_written(c, version, time.time()) - t0)
                        del pending[c]
                time.sleep(0.005)
            if pending:
                raise RuntimeError(f"{len(pending)} plugins did not reach version {version} in 30 s")
            time.sleep(0.3)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--entries", type=int, default=10000)
    args = parser.parse_args()
    sizes = [10] if args.quick else [10, 50]
    publishes = 3 if args.quick else 5
    result: dict = {"entries": args.entries, "publishes": publishes, "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = Run(tmp, args.entries)
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "blocklist", "--home", str(run.home), "serve",
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=run.env)
        nginx_program = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx_port = free_port()
        nginx = start_nginx(nginx_program, tmp / "nginx", nginx_port) if os.path.exists(nginx_program) else None
        try:
            wait_port(port)
            for n in sizes:
                caches = run.start_plugins(n, f"http://127.0.0.1:{port}/", 25, f"lp{n}")
                times = run.measure(caches, publishes)
                run.stop_plugins()
                result["runs"].append(_row("long-poll (blocklist serve)", n, times))
            if nginx is not None:
                wait_port(nginx_port)
                www = tmp / "nginx" / "www"
                mirror(run.home / "publish", www)
                for n in sizes:
                    caches = run.start_plugins(n, f"http://127.0.0.1:{nginx_port}/", 0, f"poll{n}")
                    times = run.measure(caches, publishes, lambda: mirror(run.home / "publish", www) or True)
                    run.stop_plugins()
                    result["runs"].append(_row("plain polling (nginx, 1 s)", n, times))
            else:
                result["nginx"] = "nginx not installed: plain-polling runs skipped"
        finally:
            run.stop_plugins()
            serve.send_signal(signal.SIGTERM)
            serve.wait(10)
            if nginx is not None:
                stop_nginx(nginx)
    for row in result["runs"]:
        label = f"propagation p99, {row['plugins']} plugins, {row['mode']}"
        goal = row["mode"].startswith("long-poll") and row["plugins"] >= 50
        result["summary"][label] = {"figure": f"{row['p99_s']:.3f} s (p50 {row['p50_s']:.3f} s)",
                                    "goal": f"< {GOAL_P99} s" if goal else "",
                                    "met": (row["p99_s"] < GOAL_P99) if goal else None}
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))


def _row(mode: str, n: int, times: list[float]) -> dict:
    return {"mode": mode, "plugins": n, "samples": len(times), "p50_s": round(percentile(times, 50), 3),
            "p99_s": round(percentile(times, 99), 3), "max_s": round(max(times), 3)}


if __name__ == "__main__":
    main()
