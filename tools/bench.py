"""One command that measures blocklist against its goals and its peers.

    python tools/bench.py --quick        # under 2 minutes: 10k and 100k lists, short streams
    python tools/bench.py                # full: 10k, 100k and 1M lists

Builds its own data (tools/datagen.py: synthetic lists in all three scopes, a
Zipf-distributed request stream with 0.1% listed), runs every measurement side by
side, prints a table, writes tools/out/bench.json, and draws docs/bench-*.png (tools/out/
for --quick or --sizes) when matplotlib is installed (pip install -e '.[bench]'). The
Squid/squidGuard, proxy, Unbound, propagation, fleet and memory (8 helpers sharing one
mapped list, 100 swaps) measurements run the scripts beside
this one (tools/bench_*.py) as subprocesses and take their JSON; one that cannot run (a
missing program) is reported, not hidden. The full run also counts the Squid helper's and
squidGuard's instructions per line under callgrind (bench_squid --callgrind). The Unbound
rows compare stage 1 with plain Unbound and with Unbound's own RPZ (a zone of the same hosts, which bench_unbound builds
and checks answers alike), and say how fast a new version reaches cached names, what the
cache flush costs, and whether the resolver's memory stays flat over reloads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocklist.core.format.artifacts import read_snapshot  # noqa: E402
from blocklist.core.format.bloom import build_bloom  # noqa: E402
from blocklist.core.format.digestset import digest_array  # noqa: E402
from blocklist.core.format.keys import key_id  # noqa: E402
from blocklist.core.matcher import ListFilter, Matcher  # noqa: E402
from blocklist.publish import publish  # noqa: E402
from tools.bench_core import build_home, install_plugin_cache, measure_delta_publish  # noqa: E402
from tools.datagen import request_stream  # noqa: E402

OUT = ROOT / "tools" / "out"
DELTA_CHANGES = 100  # a delta publish of this many changes after the full one
GOALS = {
    "matcher_checks_per_s_1m": 100_000,
    "bloom_bits_ratio": 1.45,
    "fp_rate_ratio": 2.0,
    "plugin_rss_formula": "3 x snapshot + 40 MB",
    "squid_vs_squidguard": 1.0,
    "propagation_p99_s_50_longpoll": 2.0,
    "fleet_p99_s_2000_longpoll": 1.0,
    "fleet_serve_rss_mb_2000": 250,
    "unbound_cost": 0.20,
    "helper_private_mb_over_one_entry": 8,
    "helper_first_answer_ms_over_one_entry": 50,
    "unbound_vs_rpz": 1.0,          # stage 1's queries per CPU-second over Unbound's RPZ, every mix
    "unbound_fresh_s": 1.0,         # a new version reaches a cached name
    "unbound_reload_growth_mb": 8,  # resolver RSS over 100 reloads, after a warm-up
    # tools/bench_proxy.py: ours / Squid, requests per CPU-second (1 worker each) and requests/s (N each)
    "proxy_vs_squid_per_cpu_s": 1.0,
    "proxy_vs_squid_rps": 1.0,
}

RSS_PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from resolver_plugin.config import load_config
from resolver_plugin.cache import LiveMatcher
t0 = time.perf_counter()
live = LiveMatcher(load_config(sys.argv[2]))
load_s = time.perf_counter() - t0
rss = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
print(json.dumps({"rss_bytes": rss, "load_s": load_s, "versions": live.matcher.versions()}))
"""

def measure_list(n: int, checks: int, tmp: Path) -> dict[str, Any]:
    """Publish time, snapshot size, matcher speed and plugin memory for an n-entry list."""
    out: dict[str, Any] = {"entries": n}
    t0 = time.perf_counter()
    home, store, rows = build_home(tmp / f"home-{n}", n, 1e-6)
    out["store_build_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    publish(home, store, "bench")
    out["full_publish_s"] = round(time.perf_counter() - t0, 2)
    snap_path = home.publish_dir / "lists" / "bench" / "snapshot-1"
    key = home.signing_key().public_key()
    snap = read_snapshot(snap_path.read_bytes(), {key_id(key): key})
    digests = len(snap.entries) + len(snap.hosts)
    bloom_bits = snap.entry_bloom.num_bits + snap.host_bloom.num_bits
    out["snapshot_bytes"] = snap_path.stat().st_size
    out["snapshot_bytes_per_entry"] = round(out["snapshot_bytes"] / n, 2)
    out["bloom_bits_per_digest"] = round(bloom_bits / digests, 2)
    out["bloom_bits_ratio"] = round(bloom_bits / digests / math.log2(1e6), 3)

    stream = list(request_stream(checks, rows))
    best = 0.0
    for _ in range(3):  # best of three, each from a cold host cache
        matcher = Matcher([ListFilter.from_snapshot(snap)])
        t0 = time.perf_counter()
        blocked = sum(matcher.check(url).blocked for url in stream)
        best = max(best, len(stream) / (time.perf_counter() - t0))
    out["matcher_checks_per_s"] = round(best)
    out["matcher_blocked"] = blocked

    # plugin memory: a fresh process loads the list from a plugin cache
    cache_cfg = install_plugin_cache(home, tmp / f"plugin-{n}")
    probe = subprocess.run([sys.executable, "-c", RSS_PROBE, str(ROOT), str(cache_cfg)],
                           capture_output=True, text=True, check=True)
    loaded = json.loads(probe.stdout)
    out["plugin_rss_mb"] = round(loaded["rss_bytes"] / 2**20, 1)
    out["plugin_load_s"] = round(loaded["load_s"], 3)
    out["plugin_rss_limit_mb"] = round((3 * out["snapshot_bytes"]) / 2**20 + 40, 1)
    delta = measure_delta_publish(home, store, rows, DELTA_CHANGES)
    out["delta_publish_s"] = delta["publish_s"]
    out["delta_bytes_per_change"] = delta["bytes_per_change"]
    store.close()
    return out


def measure_fp_rate(n: int, error_rate: float, probes: int) -> dict[str, Any]:
    """Measured Bloom false-positive rate against random non-members."""
    rng = random.Random(3)
    members = digest_array(rng.getrandbits(64) for _ in range(n))
    bloom = build_bloom(members, error_rate)
    member_set = set(members)
    hits = 0
    tried = 0
    while tried < probes:
        value = rng.getrandbits(64)
        if value in member_set:
            continue
        tried += 1
        hits += format(value, "016x") in bloom
    measured = hits / probes
    return {"entries": n, "configured": error_rate, "probes": probes, "hits": hits,
            "measured": measured, "ratio": round(measured / error_rate, 3),
            "bits_per_entry": round(bloom.num_bits / n, 2),
            "bits_ratio": round(bloom.num_bits / n / math.log2(1 / error_rate), 3)}


def run_peer_bench(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run tools/<script> --json and take its result; report failures instead of hiding them."""
    path = ROOT / "tools" / script
    if not path.exists():
        return {"skipped": f"{script} is not in this checkout"}
    try:
        proc = subprocess.run([sys.executable, str(path), "--json", *args], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"{script} took longer than {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"{script} exited {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"{script} printed no JSON"}


def table(rows: list[list[Any]]) -> str:
    from blocklist.core.table import render
    return render(["MEASUREMENT", "FIGURE", "GOAL", "MET"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument("--sizes", default=None, help="comma-separated list sizes (overrides the mode)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    checks = 50_000 if args.quick else 200_000
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "date": time.strftime("%Y-%m-%d")},
        "lists": [], "goals": GOALS,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            print(f"bench: list of {n} entries", file=sys.stderr)
            result["lists"].append(measure_list(n, checks, Path(tmp)))
    result["fp_rate"] = [measure_fp_rate(20_000, 1e-3, 200_000 if args.quick else 2_000_000),
                         measure_fp_rate(20_000, 1e-2, 200_000)]
    quick = ["--quick"] if args.quick else []
    peers = {
        "squid": ("bench_squid.py", 900), "proxy": ("bench_proxy.py", 600),
        "unbound": ("bench_unbound.py", 3600), "propagation": ("bench_propagation.py", 900),
        "fleet": ("bench_fleet.py", 1500), "memory": ("bench_memory.py", 1800),
    }
    # the full run also counts the helper's and squidGuard's instructions per line: a figure the
    # VM's noise does not move, beside their timed ones that it does
    extra = {} if args.quick else {"squid": ["--callgrind", "80000"]}
    for name, (script, timeout) in peers.items():
        print(f"bench: {name}", file=sys.stderr)
        result[name] = run_peer_bench(script, quick + extra.get(name, []), timeout)
    (OUT / "bench.json").write_text(json.dumps(result, indent=1))
    print(table(summary_rows(result)))
    # the full run's plots are the ones docs/BENCHMARKS.md shows; a quick or partial run keeps its own
    _plots(result, ROOT / "docs" if not args.quick and not args.sizes else OUT)
    print(f"\nwrote {OUT / 'bench.json'}", file=sys.stderr)


def summary_rows(r: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for item in r["lists"]:
        n = item["entries"]
        goal = GOALS["matcher_checks_per_s_1m"] if n >= 1_000_000 else None
        rows.append([f"matcher checks/s, {n:,} entries", f"{item['matcher_checks_per_s']:,}",
                     f">= {goal:,}" if goal else "", _met(goal and item["matcher_checks_per_s"] >= goal)])
        rows.append([f"plugin RSS, {n:,} entries", f"{item['plugin_rss_mb']} MB",
                     f"< {item['plugin_rss_limit_mb']} MB", _met(item["plugin_rss_mb"] < item["plugin_rss_limit_mb"])])
        rows.append([f"snapshot bytes/entry, {n:,}", item["snapshot_bytes_per_entry"], "", ""])
        rows.append([f"Bloom bits / log2(1/eps), {n:,}", item["bloom_bits_ratio"], "<= 1.45",
                     _met(item["bloom_bits_ratio"] <= 1.45)])
        rows.append([f"full publish, {n:,}", f"{item['full_publish_s']} s", "", ""])
        rows.append([f"delta publish of {DELTA_CHANGES} changes, {n:,}", f"{item['delta_publish_s']} s", "", ""])
        rows.append([f"delta bytes per changed entry, {n:,}", item["delta_bytes_per_change"], "", ""])
    for fp in r["fp_rate"]:
        rows.append([f"FP rate at eps {fp['configured']:g}", f"{fp['measured']:.2e} ({fp['ratio']}x)",
                     "<= 2x", _met(fp["ratio"] <= 2.0)])
    for name in ("squid", "proxy", "unbound", "propagation", "fleet", "memory"):
        peer = r.get(name, {})
        for label, value in peer.get("summary", {}).items():
            rows.append([label, value.get("figure"), value.get("goal", ""), _met(value.get("met"))])
        if "error" in peer or "skipped" in peer:
            rows.append([name, peer.get("error") or peer.get("skipped"), "", "not run"])
    return rows


def _met(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "NO")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _plots(r: dict[str, Any], folder: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib not installed; no plots (.venv/bin/pip install -e '.[bench]')", file=sys.stderr)
        return
    sizes = [item["entries"] for item in r["lists"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(sizes, [item["matcher_checks_per_s"] for item in r["lists"]], marker="o")
    ax1.set_xscale("log")
    ax1.set_xlabel("list entries")
    ax1.set_ylabel("Matcher checks / s (one core)")
    ax1.axhline(GOALS["matcher_checks_per_s_1m"], color="grey", linestyle="--", label="goal at 1M")
    ax1.legend()
    ax2.plot(sizes, [item["plugin_rss_mb"] for item in r["lists"]], marker="o", label="plugin RSS")
    ax2.plot(sizes, [item["plugin_rss_limit_mb"] for item in r["lists"]], linestyle="--", label="goal")
    ax2.plot(sizes, [item["snapshot_bytes"] / 2**20 for item in r["lists"]], marker="s", label="snapshot")
    ax2.set_xscale("log")
    ax2.set_xlabel("list entries")
    ax2.set_ylabel("MB")
    ax2.legend()
    fig.tight_layout()
    path = folder / "bench-matcher-memory.png"
    fig.savefig(path, dpi=90)
    print(f"bench: wrote {path}", file=sys.stderr)
    if r.get("fleet", {}).get("runs"):
        _fleet_plot(plt, r["fleet"], folder)
    _plot_proxy(r.get("proxy", {}), folder, plt)


def _plot_proxy(proxy: dict[str, Any], folder: Path, plt: Any) -> None:
    """Ours and Squid side by side: requests/s and requests per CPU-second, per mix and worker count."""
    results = proxy.get("results")
    if not results:
        return
    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "rps", "requests / s"), (axes[1], "requests_per_cpu_s", "requests / CPU-s")):
        for i, mix in enumerate(("allowed", "blocked")):
            values = [results[n][mix][key] or 0 for n in names]
            ax.bar([x + i * 0.4 for x in range(len(names))], values, width=0.4, label=mix)
        ax.set_xticks([x + 0.2 for x in range(len(names))], names)
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"proxy vs Squid, {proxy.get('connections')} connections, 1 KiB objects")
    fig.tight_layout()
    path = folder / "bench-proxy-squid.png"
    fig.savefig(path, dpi=90)
    print(f"bench: wrote {path}", file=sys.stderr)


def _fleet_plot(plt: Any, fleet: dict[str, Any], folder: Path) -> None:
    """Per run (long-poll, nginx tier, direct polling): publish to fetched p50/p99/max, serve's RSS and requests/s."""
    runs = {mode: row for mode, row in fleet["runs"].items() if "p99_s" in row}
    labels = {"longpoll": "long-poll\nserve", "tier": "polling via\nnginx cache", "direct": "polling\nserve",
              "tier-reports": "long-poll serve\nvia nginx cache"}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    x = range(len(runs))
    for offset, key in ((-0.25, "p50_s"), (0, "p99_s"), (0.25, "max_s")):
        ax1.bar([i + offset for i in x], [row[key] for row in runs.values()], width=0.25, label=key[:-2])
    ax1.set_xticks(list(x), [labels.get(m, m) for m in runs])
    ax1.axhline(GOALS["fleet_p99_s_2000_longpoll"], color="grey", linestyle="--", label="goal (long-poll p99)")
    ax1.set_ylabel(f"s from publish to fetched, {fleet['nodes']} nodes")
    ax1.legend()
    ax2.bar(list(x), [row.get("serve_rss_rest_mb", 0) for row in runs.values()], width=0.35, label="at rest")
    ax2.bar([i + 0.35 for i in x], [row["serve_rss_peak_mb"] for row in runs.values()], width=0.35, label="peak")
    ax2.set_xticks([i + 0.17 for i in x], [labels.get(m, m) for m in runs])
    ax2.axhline(GOALS["fleet_serve_rss_mb_2000"], color="grey", linestyle="--", label="goal")
    ax2.set_ylabel("serve RSS, MB")
    ax2.legend()
    ax3.bar(list(x), [max(row["serve_requests_per_s"], 0.1) for row in runs.values()])
    ax3.set_yscale("log")
    ax3.set_xticks(list(x), [labels.get(m, m) for m in runs])
    ax3.set_ylabel("requests/s serve answered")
    fig.tight_layout()
    path = folder / "bench-fleet.png"
    fig.savefig(path, dpi=90)
    print(f"bench: wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
