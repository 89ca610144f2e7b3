"""What one request costs the proxy: CPU-seconds and instructions per request, load-independently.

    python tools/proxy_cost.py                         # ours and Squid, CPU-us per request
    python tools/proxy_cost.py --callgrind --requests 3000 --only ours   # instructions per request
    python tools/proxy_cost.py --cprofile /tmp/prof --only ours          # where Python time goes

The same origin, list and requests as tools/bench_proxy.py (1 KiB objects, the `allowed` and
`blocked` mixes), but a fixed number of requests instead of a fixed time: `--connections`
keep-alive clients send `--requests` requests in all after a warm-up. Measured on the proxy's
process (one worker):

- CPU-seconds (utime + stime from /proc/PID/stat, sampled around the run) per request, in
  microseconds. What a request costs does not depend on how busy the machine is, so this is
  usable on a shared machine, though noisier than on an idle one (cache effects, clock ticks);
- with `--callgrind`: each proxy runs under `valgrind --tool=callgrind` (Squid as one process,
  `squid -N`), its counters are zeroed after the warm-up (`callgrind_control -z`) and dumped
  after the run (`-d`): user-space instructions per request, the figure that does not move with
  load at all (kernel time is not in it). Squid's by difference (see measure_squid_grind);
- with `--cprofile DIR` (ours only): the proxy runs under `python -m cProfile`, DIR/proxy.prof
  written when it stops, to read with pstats (warm-up and both mixes together).

With `--rounds N` the proxies run in turn N times and the cheapest round of each is kept, so
that a busy machine bends both alike. Ours is started as bench_proxy starts it (`proxy.workers: 1`,
access log off); Squid likewise.
Figures measured here under load are for before/after comparisons of our own code, not results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench_proxy import (  # noqa: E402
    BLOCKED_HOST,
    PLUGIN_MAIN,
    SQUID_CONF,
    SQUID_USER,
    Client,
    Ours,
    Squid,
    Target,
    cpu_between,
    free_port,
    prepare_list,
    requests_for,
    stop,
    tree_cpu,
    wait_listening,
)


async def fixed_load(port: int, requests: list[bytes], connections: int, count: int, expect: int) -> int:
    """`count` requests over `connections` keep-alive clients; how many were answered."""
    per = count // connections

    async def worker(offset: int) -> None:
        client = Client(port)
        for i in range(per):
            status = await client.fetch(requests[(offset + i) % len(requests)])
            if status != expect:
                raise RuntimeError(f"status {status}, expected {expect}")
        client.close()

    await asyncio.gather(*(worker(n * 7) for n in range(connections)))
    return per * connections


class Wrapped(Ours):
    """Ours, one worker, its command run under a wrapper (valgrind) or with an environment (cProfile)."""

    def __init__(self, config: Path, env: dict[str, str], folder: Path, wrapper: list[str],
                 python_args: list[str]) -> None:
        super().__init__(1, config, env, folder)
        self.wrapper, self.python_args = wrapper, python_args

    def start(self) -> None:
        self.port = free_port()
        config = self.config.parent / "plugin-cost.yaml"
        config.write_text(self.config.read_text() + (
            f"proxy: {{listen: '127.0.0.1:{self.port}', max_connections: 4096, workers: 1, "
            "allow_private_destinations: ['127.0.0.0/8']}\n"))
        log = self.folder / f"{self.name}.log"
        self.proc = subprocess.Popen([*self.wrapper, sys.executable, *self.python_args, "-c", str(config), "proxy"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        deadline = time.monotonic() + 900  # under callgrind, Python's start-up alone takes minutes
        while True:
            try:
                wait_listening(self.port, self.proc, self.name, log)
                return
            except RuntimeError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise


class WrappedSquid(Squid):
    """Squid, one process (`-N`: no master, no kid), under callgrind: the comparator's instructions."""

    def __init__(self, exe: str, folder: Path, grind: Path) -> None:
        super().__init__(1, exe, folder)
        self.grind = grind

    def start(self) -> None:
        self.port = free_port()
        self.dir.mkdir(exist_ok=True)
        self.dir.chmod(0o777)
        self.grind.chmod(0o777)  # Squid writes its dump as its own user
        conf = self.dir / "squid.conf"
        conf.write_text(SQUID_CONF.format(port=self.port, workers=1, dir=self.dir, blocked=BLOCKED_HOST))
        grind = f"--callgrind-out-file={self.grind}/callgrind.out.%p"
        # As Squid's own user from the start: the dump file callgrind opens at start must still be
        # writable when Squid exits, after it dropped root.
        user: dict[str, Any] = {"user": SQUID_USER, "group": SQUID_USER, "extra_groups": []} \
            if os.geteuid() == 0 else {}
        self.proc = subprocess.Popen(["valgrind", "--tool=callgrind", grind,
                                      self.exe, "-N", "-n", f"blgrind{self.port}", "-f", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.dir / "squid.out").open("wb"), **user)
        deadline = time.monotonic() + 600
        while True:
            try:
                wait_listening(self.port, self.proc, self.name, self.dir / "cache.log")
                return
            except RuntimeError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise


    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace=300)  # a clean exit writes the whole dump; under callgrind that takes a while
            self.proc = None


def _callgrind_total(path: Path) -> int:
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no totals in {path}")
    return int(match.group(1))


def measure(target: Target, mixes: dict[str, list[bytes]], args: argparse.Namespace,
            callgrind_dir: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    assert target.proc is not None
    pid = target.proc.pid
    for mix, requests in mixes.items():
        expect = 200 if mix == "allowed" else target.block_status
        asyncio.run(fixed_load(target.port, requests, args.connections, args.warmup, expect))
        if callgrind_dir is not None:
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120)
        before = tree_cpu(pid)
        t0 = time.perf_counter()
        done = asyncio.run(fixed_load(target.port, requests, args.connections, args.requests, expect))
        wall = time.perf_counter() - t0
        user, system = cpu_between(before, tree_cpu(pid))
        row: dict[str, Any] = {"requests": done, "cpu_us_per_request": round((user + system) / done * 1e6, 1),
                               "user_us": round(user / done * 1e6, 1), "system_us": round(system / done * 1e6, 1),
                               "wall_s": round(wall, 2)}
        if callgrind_dir is not None:
            for old in callgrind_dir.glob("callgrind.out*"):
                old.unlink()
            subprocess.run(["callgrind_control", "-d", mix, str(pid)], check=True, capture_output=True, timeout=300)
            dumps = sorted(callgrind_dir.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
            row["instructions_per_request"] = round(_callgrind_total(dumps[-1]) / done)
            if args.keep_dumps:
                Path(args.keep_dumps).mkdir(parents=True, exist_ok=True)
                shutil.copy(dumps[-1], Path(args.keep_dumps) / f"callgrind.{mix}")
        out[mix] = row
        print(f"proxy_cost: {target.name} {mix}: {row}", file=sys.stderr)
    return out


def measure_squid_grind(target: WrappedSquid, mixes: dict[str, list[bytes]], args: argparse.Namespace
                        ) -> dict[str, Any]:
    """Squid's instructions per request, by difference: a process blocked in epoll does not answer
    callgrind_control, so each mix runs twice from start to stop (`--requests` / 4 and
    `--requests` requests after the warm-up), the dump Squid writes as it exits read each time."""
    out: dict[str, Any] = {}
    for mix, requests in mixes.items():
        totals = []
        counts = (args.requests // 4, args.requests)
        for count in counts:
            target.start()
            assert target.proc is not None
            pid = target.proc.pid  # Squid's own dump, not one of a process it forks
            expect = target.block_status if mix == "blocked" else 200
            try:
                asyncio.run(fixed_load(target.port, requests, args.connections, args.warmup, expect))
                asyncio.run(fixed_load(target.port, requests, args.connections, count, expect))
            finally:
                target.stop()
            totals.append(_callgrind_total(target.grind / f"callgrind.out.{pid}"))
            for dump in target.grind.glob("callgrind.out*"):
                dump.unlink()
        per = round((totals[1] - totals[0]) / (counts[1] - counts[0]))
        out[mix] = {"instructions_per_request": per, "totals": totals, "requests": list(counts)}
        print(f"proxy_cost: {target.name} {mix}: {out[mix]}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per mix (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--entries", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds (ours, Squid, ours, ...); the cheapest round of each is kept")
    parser.add_argument("--only", choices=("ours", "squid"))
    parser.add_argument("--callgrind", action="store_true", help="under callgrind: instructions per request")
    parser.add_argument("--keep-dumps", metavar="DIR", help="with --callgrind: keep the dumps here")
    parser.add_argument("--cprofile", metavar="DIR", help="ours under cProfile: DIR/proxy.prof at exit")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"], os.environ.get("PYTHONPATH", "")]))}
    result: dict[str, Any] = {"requests": args.requests, "connections": args.connections}
    with tempfile.TemporaryDirectory(prefix="proxy-cost-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        config = prepare_list(folder, args.entries)
        origin_port = free_port()
        origin = subprocess.Popen([sys.executable, str(ROOT / "tools" / "bench_proxy.py"), "--serve-origin",
                                   str(origin_port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(origin_port, origin, "origin")
            mixes = {"allowed": requests_for(origin_port, "allowed"), "blocked": requests_for(origin_port, "blocked")}
            targets: list[tuple[Target, Path | None]] = []
            if args.only != "squid":
                wrapper: list[str] = []
                grind = None
                if args.callgrind:
                    grind = folder / "grind"
                    grind.mkdir()
                    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={grind}/callgrind.out.%p"]
                python_args = ["-c", PLUGIN_MAIN]
                if args.cprofile:  # written when the proxy exits (SIGTERM: a clean stop)
                    python_args = ["-m", "cProfile", "-o", str(Path(args.cprofile).resolve() / "proxy.prof"),
                                   "-m", "resolver_plugin"]
                targets.append((Wrapped(config, env, folder, wrapper, python_args), grind))
            squid = shutil.which("squid") or "/usr/sbin/squid"
            if args.only != "ours" and Path(squid).exists():
                if args.callgrind:
                    squid_grind = folder / "squid-grind"
                    squid_grind.mkdir()
                    targets.append((WrappedSquid(squid, folder, squid_grind), squid_grind))
                else:
                    targets.append((Squid(1, squid, folder), None))
            for _ in range(args.rounds):
                for target, grind in targets:
                    if isinstance(target, WrappedSquid):
                        result[target.name] = measure_squid_grind(target, mixes, args)
                        continue
                    target.start()
                    try:
                        got = measure(target, mixes, args, grind)
                    finally:
                        target.stop()
                    kept = result.setdefault(target.name, got)
                    for mix, row in got.items():
                        if row["cpu_us_per_request"] < kept[mix]["cpu_us_per_request"]:
                            kept[mix] = row
        finally:
            stop(origin)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
