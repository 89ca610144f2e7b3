"""Benchmark of the Squid helper against Debian's squidGuard on the same list and request stream.

    python tools/bench_squid.py                       # 100k entries, 200,000 lines
    python tools/bench_squid.py --quick --json        # 10k entries, 50,000 lines; JSON for tools/bench.py

Builds a hotline list (tools/datagen.py rows: page, folder and domain entries),
publishes it into a plugin cache, and writes the same rows as a squidGuard
database (domain entries -> `domainlist`, page and folder entries -> `urllist`,
compiled with `squidGuard -C all`). The request stream is tools/datagen.py's
(Zipf-distributed hosts, `--listed` of them listed URLs). Two measurements:

- stream: the whole stream piped to the program's stdin, answers read to EOF;
  lines/s over the wall time, start-up (loading the list) included. This is
  what Squid gets with `concurrency=N` (many lines in flight).
- steady state: one process of each program first answers a warm-up stream of
  the same distribution (other URLs, seed 3), then the stream is timed alone:
  lines/s over its wall time and lines per CPU-second of the process (utime +
  stime from /proc/PID/stat). A helper lives as long as Squid, so neither its
  start-up (loading the list) nor its first sight of the popular hosts is what a
  line costs it; this is the figure the goal is held against. `--repeat` rounds,
  the programs alternating, the best of each.
- lockstep: one line written, its answer read, then the next (`--lockstep`
  lines): what Squid gets from one helper with no concurrency.
- with `--callgrind LINES`: user-space instructions per line of each program under
  valgrind's callgrind, start-up excluded (two runs, a quarter of LINES and all of
  them, by difference): a count that does not move with the machine's speed, which
  on a shared VM moves the timed figures of both programs by a third between runs.

Agreement: the fraction of lines both programs answer the same way (block or
not). The semantics differ on purpose where squidGuard's `urllist` is a prefix
match (it also blocks `/item-1.html5` for `/item-1.html`) and strips `www.`;
disagreements are counted and a few are printed to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocklist.publish import publish  # noqa: E402
from tools.bench_core import build_home, install_plugin_cache  # noqa: E402
from tools.datagen import request_stream  # noqa: E402

HELPER = "from resolver_plugin.cli import main; main()"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SQUIDGUARD_CONF = """\
dbhome {dir}/db
logdir {dir}/log

dest bench {{
        domainlist bench/domains
        urllist bench/urls
}}

acl {{
        default {{
                pass !bench all
                redirect http://blocked.invalid/
        }}
}}
"""


def build_plugin(folder: Path, entries: int) -> tuple[Path, list[tuple[str, str]]]:
    """A published `entries`-row list in a plugin cache, and its plugin.yaml; (config, rows)."""
    home, store, rows = build_home(folder / "home", entries, 1e-6)
    publish(home, store, "bench")
    store.close()
    return install_plugin_cache(home, folder / "plugin", ""), rows


def build_squidguard(folder: Path, rows: list[tuple[str, str]], exe: str) -> tuple[Path, float]:
    """A squidGuard config and compiled database of `rows`; (config, seconds to compile)."""
    db = folder / "db" / "bench"
    db.mkdir(parents=True)
    (folder / "log").mkdir()
    domains, urls = [], []
    for url, scope in rows:
        rest = url.split("://", 1)[1].lower()
        if scope == "domain":
            domains.append(rest.split("/", 1)[0])
        else:
            urls.append(rest.removeprefix("www."))
    (db / "domains").write_text("\n".join(domains) + "\n")
    (db / "urls").write_text("\n".join(urls) + "\n")
    conf = folder / "squidGuard.conf"
    conf.write_text(SQUIDGUARD_CONF.format(dir=folder))
    t0 = time.perf_counter()
    subprocess.run([exe, "-c", str(conf), "-C", "all"], check=True, capture_output=True, timeout=600)
    return conf, time.perf_counter() - t0


def run_stream(cmd: list[str], stdin_path: Path, env: dict[str, str], repeat: int) -> tuple[float, float, list[bytes]]:
    """Pipe a whole file through `cmd`, best of `repeat`; (wall seconds, CPU seconds, answer lines).

    CPU seconds (user + system of the child) are reported beside wall time: on a
    busy machine they vary much less.
    """
    best_wall = best_cpu = math.inf
    lines: list[bytes] = []
    for _ in range(repeat):
        with stdin_path.open("rb") as stdin:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdin=stdin, capture_output=True, env=env, timeout=1800)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        lines = proc.stdout.splitlines()
    return best_wall, best_cpu, lines


def _cpu_s(pid: int) -> float:
    """utime + stime of `pid` so far, in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_warm(cmd: list[str], warm: bytes, measured: bytes, env: dict[str, str]) -> tuple[float, float]:
    """Steady state: one process is fed `warm` and answers all of it, then `measured` is timed
    alone; (lines/s over its wall time, lines per CPU-second of the process in that time).

    The warm-up is a stream of the same distribution with other URLs: what a helper that has
    served for a while has seen (the popular hosts), not the measured URLs themselves."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, out = proc.stdin, proc.stdout.fileno()

    def feed(data: bytes) -> threading.Thread:
        thread = threading.Thread(target=stdin.write, args=(data,), daemon=True)
        thread.start()
        return thread

    def answers(count: int) -> None:
        got = 0
        while got < count:
            ready, _, _ = select.select([out], [], [], 120)
            if not ready:
                raise RuntimeError(f"{cmd[0]}: {count - got} answers missing after 120 s")
            piece = os.read(out, 1 << 20)
            if not piece:
                raise RuntimeError(f"{cmd[0]} exited")
            got += piece.count(b"\n")

    try:
        warming = feed(warm)
        answers(warm.count(b"\n"))
        warming.join()
        cpu0, t0 = _cpu_s(proc.pid), time.perf_counter()
        writer = feed(measured)
        answers(measured.count(b"\n"))
        wall, cpu = time.perf_counter() - t0, _cpu_s(proc.pid) - cpu0
        writer.join()
    finally:
        stdin.close()
        proc.wait(30)
    lines = measured.count(b"\n")
    return lines / wall, lines / max(cpu, 1 / CLK_TCK)


def instructions_per_line(cmd: list[str], lines: list[bytes], folder: Path, env: dict[str, str]) -> int:
    """User-space instructions per line under callgrind, start-up excluded: the difference of a
    run on the first quarter of `lines` and one on all of them, over the lines between."""
    counts = []
    for part in (lines[:len(lines) // 4], lines):
        out = folder / f"callgrind.{len(counts)}"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                       input=b"".join(part), capture_output=True, env=env, check=True, timeout=3600)
        summary = [line for line in out.read_text(errors="replace").splitlines() if line.startswith("summary:")]
        counts.append(int(summary[0].split()[1]))
        out.unlink()
    return round((counts[1] - counts[0]) / (len(lines) - len(lines) // 4))


def run_lockstep(cmd: list[str], lines: list[bytes], env: dict[str, str]) -> float:
    """Lines/s with one request in flight at a time (start-up excluded)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    out = proc.stdout.fileno()

    def answer() -> None:
        data = b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([out], [], [], 60)
            if not ready:
                raise RuntimeError(f"{cmd[0]}: no answer within 60 s")
            piece = os.read(out, 65536)
            if not piece:
                raise RuntimeError(f"{cmd[0]} exited")
            data += piece

    try:
        proc.stdin.write(lines[0])  # warm-up: the list is loaded
        answer()
        t0 = time.perf_counter()
        for line in lines:
            proc.stdin.write(line)
            answer()
        return len(lines) / (time.perf_counter() - t0)
    finally:
        proc.stdin.close()
        proc.wait(30)


def run(args: argparse.Namespace) -> dict[str, Any]:
    squidguard = shutil.which("squidGuard") or shutil.which("squidguard")
    if squidguard is None:
        raise SystemExit("squidGuard is not installed (apt-get install squidguard)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"], os.environ.get("PYTHONPATH", "")]))}
    result: dict[str, Any] = {"entries": args.entries, "lines": args.lines, "listed_fraction": args.listed,
                              "cpu": _cpu_model(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-squid-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        config, rows = build_plugin(folder, args.entries)
        result["publish_s"] = round(time.perf_counter() - t0, 2)
        sg_conf, result["squidguard_db_build_s"] = build_squidguard(folder / "sg", rows, squidguard)
        urls = list(request_stream(args.lines, rows, listed_fraction=args.listed))
        ours_in, sg_in = folder / "helper.in", folder / "squidguard.in"
        ours_in.write_bytes(b"".join(f"{u} -\n".encode() for u in urls))
        sg_in.write_bytes(b"".join(f"{u} 127.0.0.1/- - GET\n".encode() for u in urls))

        ours_cmd = [sys.executable, "-c", HELPER, "-c", str(config), "squid-helper"]
        sg_cmd = [squidguard, "-c", str(sg_conf)]
        ours_s, ours_cpu, ours_out = run_stream(ours_cmd, ours_in, env, args.repeat)
        sg_s, sg_cpu, sg_out = run_stream(sg_cmd, sg_in, env, args.repeat)
        if len(ours_out) != len(urls) or len(sg_out) != len(urls):
            raise RuntimeError(f"answer counts: ours {len(ours_out)}, squidGuard {len(sg_out)}, lines {len(urls)}")
        result["helper_stream_lines_per_s"] = round(len(urls) / ours_s)
        result["squidguard_stream_lines_per_s"] = round(len(urls) / sg_s)
        result["stream_ratio"] = round(sg_s / ours_s, 2)
        result["helper_stream_lines_per_cpu_s"] = round(len(urls) / ours_cpu)
        result["squidguard_stream_lines_per_cpu_s"] = round(len(urls) / sg_cpu)
        result["stream_cpu_ratio"] = round(sg_cpu / ours_cpu, 2)
        # Steady state: a helper lives as long as Squid, so neither its start-up (loading the
        # list) nor its first sight of the popular hosts is what it costs per line. Each round
        # warms one process of each program with another stream of the same distribution, then
        # times the measured stream; the rounds alternate the programs, the best of each counts.
        warm_urls = list(request_stream(args.lines, rows, listed_fraction=args.listed, seed=3))
        warm_ours = b"".join(f"{u} -\n".encode() for u in warm_urls)
        warm_sg = b"".join(f"{u} 127.0.0.1/- - GET\n".encode() for u in warm_urls)
        ours_steady, sg_steady = (0.0, 0.0), (0.0, 0.0)
        for _ in range(args.repeat):
            got = run_warm(ours_cmd, warm_ours, ours_in.read_bytes(), env)
            ours_steady = (max(ours_steady[0], got[0]), max(ours_steady[1], got[1]))
            got = run_warm(sg_cmd, warm_sg, sg_in.read_bytes(), env)
            sg_steady = (max(sg_steady[0], got[0]), max(sg_steady[1], got[1]))
        result["helper_steady_lines_per_s"], result["helper_steady_lines_per_cpu_s"] = map(round, ours_steady)
        result["squidguard_steady_lines_per_s"], result["squidguard_steady_lines_per_cpu_s"] = map(round, sg_steady)
        result["steady_ratio"] = round(ours_steady[0] / sg_steady[0], 2)
        result["steady_cpu_ratio"] = round(ours_steady[1] / sg_steady[1], 2)
        # Start-up: each program's wall time on a one-line stream.
        one_ours, one_sg = folder / "helper-1.in", folder / "squidguard-1.in"
        one_ours.write_bytes(ours_in.read_bytes().split(b"\n", 1)[0] + b"\n")
        one_sg.write_bytes(sg_in.read_bytes().split(b"\n", 1)[0] + b"\n")
        result["helper_startup_s"] = round(run_stream(ours_cmd, one_ours, env, args.repeat)[0], 3)
        result["squidguard_startup_s"] = round(run_stream(sg_cmd, one_sg, env, args.repeat)[0], 3)

        n = min(args.lockstep, len(urls))
        result["lockstep_lines"] = n
        stream = ours_in.read_bytes().splitlines(True)[:n]
        result["helper_lockstep_lines_per_s"] = round(run_lockstep(ours_cmd, stream, env))
        result["squidguard_lockstep_lines_per_s"] = round(
            run_lockstep(sg_cmd, sg_in.read_bytes().splitlines(True)[:n], env))
        result["lockstep_ratio"] = round(result["helper_lockstep_lines_per_s"]
                                         / result["squidguard_lockstep_lines_per_s"], 2)

        if args.callgrind:
            if shutil.which("valgrind") is None:
                raise SystemExit("--callgrind needs valgrind (apt-get install valgrind)")
            n = min(args.callgrind, len(urls))
            result["callgrind_lines"] = n
            result["helper_instructions_per_line"] = instructions_per_line(
                ours_cmd, ours_in.read_bytes().splitlines(True)[:n], folder, env)
            result["squidguard_instructions_per_line"] = instructions_per_line(
                sg_cmd, sg_in.read_bytes().splitlines(True)[:n], folder, env)

        ours_block = [a.startswith(b"OK") for a in ours_out]
        sg_block = [a.startswith(b"OK") for a in sg_out]
        only_ours = [u for u, a, b in zip(urls, ours_block, sg_block, strict=True) if a and not b]
        only_sg = [u for u, a, b in zip(urls, ours_block, sg_block, strict=True) if b and not a]
        result["blocked_helper"] = sum(ours_block)
        result["blocked_squidguard"] = sum(sg_block)
        result["agreement"] = round(1 - (len(only_ours) + len(only_sg)) / len(urls), 6)
        result["blocked_only_by_helper"] = len(only_ours)
        result["blocked_only_by_squidguard"] = len(only_sg)
        for label, sample in (("only helper blocks", only_ours), ("only squidGuard blocks", only_sg)):
            for url in sample[:3]:
                print(f"bench_squid: {label}: {url}", file=sys.stderr)
    ratio = result["steady_ratio"]
    result["summary"] = {
        f"squid-helper lines/s ({args.entries:,} entries, steady state)": {
            "figure": f"{result['helper_steady_lines_per_s']:,}"},
        "squidGuard lines/s (same list, steady state)": {"figure": f"{result['squidguard_steady_lines_per_s']:,}"},
        "squid-helper / squidGuard (steady state)": {"figure": f"{ratio}x", "goal": ">= 1x", "met": ratio >= 1.0},
        "squid-helper / squidGuard (steady state, per CPU-second)": {"figure": f"{result['steady_cpu_ratio']}x"},
        "squid-helper / squidGuard (whole stream incl. start-up)": {"figure": f"{result['stream_ratio']}x"},
        "start-up: squid-helper / squidGuard": {
            "figure": f"{result['helper_startup_s']} s / {result['squidguard_startup_s']} s"},
        "squid-helper / squidGuard (stream, CPU time)": {"figure": f"{result['stream_cpu_ratio']}x"},
        "squid-helper / squidGuard (lockstep)": {"figure": f"{result['lockstep_ratio']}x"},
        "squid-helper vs squidGuard verdict agreement": {"figure": f"{result['agreement']:.4%}"},
    }
    if args.callgrind:
        result["summary"]["instructions per line: squid-helper / squidGuard (callgrind)"] = {
            "figure": f"{result['helper_instructions_per_line']:,} / {result['squidguard_instructions_per_line']:,}"}
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--listed", type=float, default=0.01, help="fraction of listed URLs in the stream")
    parser.add_argument("--lockstep", type=int, default=20_000, help="lines for the one-at-a-time run")
    parser.add_argument("--repeat", type=int, default=3, help="stream runs per program; the best counts")
    parser.add_argument("--quick", action="store_true", help="10k entries, 50,000 lines, 5,000 lockstep")
    parser.add_argument("--callgrind", type=int, metavar="LINES", default=0,
                        help="also count each program's user-space instructions per line under callgrind "
                             "over the first LINES lines (e.g. 80000; a few minutes)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for tools/bench.py)")
    args = parser.parse_args()
    if args.quick:
        args.entries, args.lines, args.lockstep = 10_000, 50_000, 5_000
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        if key != "summary":
            print(f"{key:34} {value}")


if __name__ == "__main__":
    main()
