"""Benchmark of the hotline core: publish time, snapshot size, delta size, Matcher checks/s.

    python tools/bench_core.py --entries 1000000

Builds a hotline home in a temp dir (entries inserted through the Store API, as
`import` does after parsing), then measures publish time, sizes and checks/s, and prints one JSON
document. Figures depend on the machine: record it with them.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blocklist.core.digests import Scope, make_entry  # noqa: E402
from blocklist.core.format.artifacts import read_snapshot  # noqa: E402
from blocklist.core.format.compiled import read_compiled, write_compiled  # noqa: E402
from blocklist.core.format.keys import key_id  # noqa: E402
from blocklist.core.matcher import ListFilter, Matcher  # noqa: E402
from blocklist.home import Home, HotlineConfig  # noqa: E402
from blocklist.keys import init_root  # noqa: E402
from blocklist.publish import publish  # noqa: E402
from blocklist.store import Store  # noqa: E402
from tools.datagen import listed_rows, request_stream  # noqa: E402


def build_home(root: Path, n: int, rate: float) -> tuple[Home, Store, list[tuple[str, str]]]:
    home = Home(root)
    home.init(HotlineConfig())
    init_root(home, home.default_root_dir(), 1, 1, "bench")  # what `blocklist init` does
    store = Store(home.store_path)
    rows = list(listed_rows(n))
    with store.transaction():
        info = store.create_list("bench", rate, "bench")
        store.add_entries(info, ((make_entry(u, Scope(s)), "", "") for u, s in rows), "bench", source="bench")
    return home, store, rows


def install_plugin_cache(home: Home, folder: Path, extra_yaml: str = "") -> Path:
    """A plugin.yaml in `folder` trusting `home`'s key, with its published list "bench" in the cache."""
    from blocklist.core.format.manifest import read_manifest
    from resolver_plugin.cache import Cache, ListState
    folder.mkdir(parents=True)
    key = home.signing_key().public_key()
    (folder / "hotline-root.json").write_bytes(home.current_root()[1])  # what `blocklist key export` prints
    config = folder / "plugin.yaml"
    config.write_text("source: http://127.0.0.1:9/\npublic_key_file: hotline-root.json\nlists: [bench]\n"
                      "cache_dir: cache\nadmin: {listen: null}\n" + extra_yaml)
    data = (home.publish_dir / "manifest.json").read_bytes()
    ref = read_manifest(data, {key_id(key): key}).lists["bench"]
    name = ref.snapshot.path.rsplit("/", 1)[1]
    cache = Cache(folder / "cache")
    snap = (home.publish_dir / ref.snapshot.path).read_bytes()
    # with its compiled list file, as sync writes it: enforcing processes map that
    built = ListFilter.from_snapshot(read_snapshot(snap, {key_id(key): key}))
    cache.write_list("bench", ListState(ref.version, ref.checksum, name, ()), {name: snap}, built)
    cache.write_manifest(data)
    return config


def measure_delta_publish(home: Home, store: Store, rows: list[tuple[str, str]], changes: int) -> dict[str, Any]:
    """After a first publish: remove changes/2 entries, add the rest, publish; time and delta size."""
    rng = random.Random(5)
    info = store.require_list("bench")
    with store.transaction():
        victims = rng.sample(rows, changes // 2)
        for u, s in victims:
            store.remove_entry(info, make_entry(u, Scope(s)), "bench")
        store.add_entries(info, ((make_entry(f"http://new{i}.listed.test/x{i}.html", Scope.PAGE), "", "")
                                 for i in range(changes - len(victims))), "bench")
    t0 = time.perf_counter()
    publish(home, store, "bench")
    elapsed = time.perf_counter() - t0
    delta_bytes = (home.publish_dir / "lists" / "bench" / "delta-1-2").stat().st_size
    return {"publish_s": round(elapsed, 2), "bytes": delta_bytes, "changes": changes,
            "bytes_per_change": round(delta_bytes / changes, 1)}


def _measure(matcher: Matcher, stream: list[str]) -> dict[str, Any]:
    """Checks/s of `matcher` over `stream`, warm (after 2,000 checks) and from a cold host cache."""
    t0 = time.perf_counter()
    for url in stream[:50000]:
        matcher.check(url)
    cold = round(min(50000, len(stream)) / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    blocked = sum(matcher.check(url).blocked for url in stream)
    elapsed = time.perf_counter() - t0
    return {"checks": len(stream), "checks_per_s": round(len(stream) / elapsed), "blocked": blocked,
            "bloom_refuted": matcher.filters[0].bloom_refuted, "cold_cache_checks_per_s": cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--error-rate", type=float, default=1e-6)
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--delta-changes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs of each matcher; the best counts")
    args = parser.parse_args()
    out: dict[str, object] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                          "cores": os.cpu_count(), "python": platform.python_version()},
                              "entries": args.entries, "error_rate": args.error_rate}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        home, store, rows = build_home(Path(tmp) / "home", args.entries, args.error_rate)
        out["store_build_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        publish(home, store, "bench")
        out["full_publish_s"] = round(time.perf_counter() - t0, 2)

        delta = measure_delta_publish(home, store, rows, args.delta_changes)
        out["delta_publish_s"] = delta.pop("publish_s")
        out["delta"] = delta

        lists = home.publish_dir / "lists" / "bench"
        snap_bytes = (lists / "snapshot-2").stat().st_size
        key = home.signing_key().public_key()
        t0 = time.perf_counter()
        snap = read_snapshot((lists / "snapshot-2").read_bytes(), {key_id(key): key})
        out["snapshot_load_s"] = round(time.perf_counter() - t0, 3)
        n_digests = len(snap.entries) + len(snap.hosts)
        bloom_bits = snap.entry_bloom.num_bits + snap.host_bloom.num_bits
        limit_bits = math.log2(1 / args.error_rate)
        out["snapshot"] = {
            "bytes": snap_bytes, "bytes_per_entry": round(snap_bytes / args.entries, 2),
            "digests": n_digests, "bloom_bits_per_digest": round(bloom_bits / n_digests, 2),
            "information_limit_bits": round(limit_bits, 2),
            "bloom_ratio_to_limit": round(bloom_bits / n_digests / limit_bits, 3),
            "size_ratio_to_limit_plus_digests": round(snap_bytes / (n_digests * (limit_bits / 8 + 8)), 3),
        }

        stream = list(request_stream(args.checks, rows))
        compiled = Path(tmp) / "compiled"
        compiled.write_bytes(write_compiled(ListFilter.from_snapshot(snap).compiled()))
        with open(compiled, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        makers = {"matcher": lambda: ListFilter.from_snapshot(snap),
                  "matcher_mapped": lambda: ListFilter.from_compiled(
                      read_compiled(mapping, snap.list, snap.version, snap.checksum))}
        # The in-memory and the mapped filter, alternated, best of --rounds: a loaded machine
        # slows both alike.
        for _ in range(args.rounds):
            for label, make in makers.items():
                run = _measure(Matcher([make()]), stream)
                best = out.get(label)
                if not isinstance(best, dict) or run["checks_per_s"] > best["checks_per_s"]:
                    out[label] = run
        out["mapped_vs_memory"] = round(out["matcher_mapped"]["checks_per_s"]  # type: ignore[index]
                                        / out["matcher"]["checks_per_s"], 3)  # type: ignore[index]
        out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
