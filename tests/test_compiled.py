"""The compiled list file: one mapped copy per node, checked on load, swapped atomically, flat over swaps.

Behaviour only (docs/FORMAT.md "the compiled list file", docs/RELIABILITY.md): what a
reader refuses, which list stays in force, what two processes share, what 100 swaps
leave behind. How fast a helper answers is the bench's (tools/bench.py), not these tests'.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import pytest
from pybloom_live import BloomFilter

from blocklist.core.errors import BlocklistError, FormatError
from blocklist.core.format.bloom import build_bloom
from blocklist.core.format.compiled import PREFIX, read_compiled, write_compiled
from blocklist.core.format.digestset import digest_array, set_checksum
from blocklist.core.matcher import ListFilter
from blocklist.core.urls import canonicalize
from resolver_plugin.cache import Cache, ListState, LiveMatcher
from resolver_plugin.distribution.sync import Syncer
from tests.conftest import Plugin
from tests.support.procfs import children, mapped_files
from tests.support.proxy import start_proxy
from tests.support.status import publish

ROOT = Path(__file__).resolve().parent.parent
LISTED = "http://bad.example/a.html"


@functools.cache
def _material(n: int, seed: int) -> tuple[array[int], array[int], BloomFilter, BloomFilter, str]:
    rng = random.Random(seed)
    entries = digest_array(rng.getrandbits(64) for _ in range(n))
    hosts = digest_array(rng.getrandbits(64) for _ in range(max(n // 10, 1)))
    return entries, hosts, build_bloom(entries, 1e-6), build_bloom(hosts, 1e-6), set_checksum(entries, hosts)


def synthetic(version: int, n: int = 2000, seed: int = 1) -> ListFilter:
    """A list "default" at `version`: n random entry digests, n // 10 host digests, Bloom filters."""
    entries, hosts, entry_bloom, host_bloom, checksum = _material(n, seed)
    return ListFilter("default", version, b"s" * 16, entries, hosts, entry_bloom, host_bloom,
                      checksum=checksum, subtree_markers=True)


def swap_in(cache: Cache, f: ListFilter) -> ListState:
    """What sync does with a verified new version: its compiled file first, state.json last."""
    return cache.write_list(f.name, ListState(f.version, f.checksum, "snapshot-1", ()), {}, compiled=f)


def mappings(folder: Path) -> list[str]:
    """This process's mappings of files in `folder` (deleted ones included)."""
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(folder) in line]


def rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_a_mapped_list_answers_as_the_signed_files_do(installed: Plugin) -> None:
    live = LiveMatcher(installed.config())
    (mapped,) = live.matcher.filters
    cache, config = Cache(installed.config().cache_dir), installed.config()
    parsed = cache.load_list("default", config.public_keys, config.limits.max_snapshot_bytes)
    assert isinstance(mapped.entries, memoryview) and isinstance(mapped.hosts, memoryview)
    assert parsed is not None and not isinstance(parsed.entries, memoryview)
    assert (mapped.version, mapped.checksum, list(mapped.entries), list(mapped.hosts)) == (
        parsed.version, parsed.checksum, list(parsed.entries), list(parsed.hosts))
    for url in (LISTED, "http://bad.example/b.html", "http://www.bad.example/a.html", "http://bad.example/c.html",
                "http://good.example/"):
        assert mapped.check_canonical(canonicalize(url)) == parsed.check_canonical(canonicalize(url)), url
    assert live.check(LISTED).blocked and not live.check("http://good.example/").blocked


def _damaged(data: bytes) -> dict[str, bytes]:
    head_len = int.from_bytes(data[12:16], "big")
    return {
        "empty": b"",
        "truncated in the prefix": data[:30],
        "truncated in the body": data[:len(data) - 100],
        "extended": data + b"\0" * 64,
        "a bit flipped in the body": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
        "a bit flipped in the header": (data[:PREFIX.size + 5] + bytes([data[PREFIX.size + 5] ^ 1])
                                        + data[PREFIX.size + 6:]),
        "bad magic": b"BLKLMAP9" + data[8:],
        "a newer layout": data[:8] + (2).to_bytes(2, "big") + data[10:],
        "header length past the end": data[:12] + (len(data)).to_bytes(4, "big") + data[16:],
        "garbage": os.urandom(len(data)),
        "another list's header": data[:PREFIX.size] + data[PREFIX.size:PREFIX.size + head_len].replace(
            b'"default"', b'"defaulx"') + data[PREFIX.size + head_len:],
        "Bloom parameters out of range, hash recomputed": _rehashed(data, b'"error_rate":1e-06', b'"error_rate":2.0'),
        "a section past the end, hash recomputed": _rehashed(data, b'"count":200,"offset"', b'"count":999,"offset"'),
    }


def _rehashed(data: bytes, old: bytes, new: bytes) -> bytes:
    """`data` with `old` replaced by `new` (same length or not) and its SHA-256 made right again."""
    assert old in data
    rest = data[PREFIX.size:].replace(old, new, 1)
    magic, layout, reserved, head_len, _, _ = PREFIX.unpack(data[:PREFIX.size])
    return PREFIX.pack(magic, layout, reserved, head_len + len(new) - len(old), PREFIX.size + len(rest),
                       hashlib.sha256(rest).digest()) + rest


def test_read_compiled_refuses_every_damaged_or_foreign_file() -> None:
    f = synthetic(3)
    data = write_compiled(f.compiled())
    good = read_compiled(data, "default", 3, f.checksum)
    assert list(good.entries) == list(f.entries) and list(good.hosts) == list(f.hosts)
    refused = {}
    for label, bad in _damaged(data).items():
        with pytest.raises(FormatError) as info:
            read_compiled(bad, "default", 3, f.checksum)
        refused[label] = str(info.value)
    assert set(refused) == set(_damaged(data))
    assert "truncated" in refused["truncated in the body"] and "damaged" in refused["a bit flipped in the body"]
    assert "out of range" in refused["Bloom parameters out of range, hash recomputed"]
    assert "out of range" in refused["a section past the end, hash recomputed"]
    for expected in (("default", 4, f.checksum), ("other", 3, f.checksum), ("default", 3, "0" * 64)):
        with pytest.raises(FormatError, match="state names"):
            read_compiled(data, *expected)


def test_a_damaged_compiled_file_is_refused_with_a_log_line_and_the_node_still_enforces(
        installed: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(installed.config().cache_dir)
    state = cache.state("default")
    assert state is not None and state.compiled is not None
    path = cache.list_dir("default") / state.compiled
    path.write_bytes(path.read_bytes()[:-100])  # not how sync writes: a disk or an operator damaged it
    with caplog.at_level(logging.ERROR):
        live = LiveMatcher(installed.config())  # a process starting now: never open
    assert live.check(LISTED).blocked and not live.missing
    assert "compiled file compiled-1-" in caplog.text and "refused (cache: default" in caplog.text
    assert any(getattr(r, "event", None) == "compiled_refused" for r in caplog.records)


def test_with_both_the_compiled_and_the_signed_files_damaged_the_last_good_list_stays(
        installed: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    live = LiveMatcher(installed.config())
    publish(installed, "http://bad.example/c.html")
    installed.install_published()  # version 2 and its compiled file
    cache = Cache(installed.config().cache_dir)
    state = cache.state("default")
    assert state is not None and state.version == 2 and state.compiled is not None
    for name in (state.compiled, state.snapshot):
        (cache.list_dir("default") / name).write_bytes(b"garbage")
    cache.bump_generation()
    with caplog.at_level(logging.ERROR):
        live.maybe_reload()
    assert live.matcher.versions() == {"default": 1} and live.check(LISTED).blocked
    assert "compiled_refused" in [getattr(r, "event", None) for r in caplog.records]
    assert "list default refused, keeping the last good version" in caplog.text


def test_a_reader_never_sees_a_half_written_file(tmp_path: Path, installed: Plugin,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    config = installed.config()
    cache = Cache(config.cache_dir)
    swap_in(cache, synthetic(2))
    folder = cache.list_dir("default")
    # A writer killed mid-write leaves temp files: readers never open them (state.json names none).
    data = write_compiled(synthetic(3).compiled())
    (folder / ".compiled-3-0000.tmp-999").write_bytes(data[:len(data) // 2])
    (folder / ".state.json.tmp-999").write_bytes(b'{"version": 3, "checksum": "x", "snap')
    live = LiveMatcher(config)
    assert live.matcher.versions() == {"default": 2}
    # A writer swapping versions while a reader reloads: every load is a whole version.
    versions, errors = [], []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                live.reload()
                versions.append(live.matcher.versions()["default"])
            except Exception as exc:  # noqa: BLE001 - the assertion below names it
                errors.append(exc)

    reader = threading.Thread(target=read)
    with caplog.at_level(logging.ERROR):
        reader.start()
        for version in range(3, 23):
            swap_in(cache, synthetic(version, 500, seed=version % 3))
        done.set()
        reader.join(30)
    live.reload()
    assert not errors and live.matcher.versions() == {"default": 22}
    assert versions == sorted(versions) and set(versions) <= set(range(2, 23))
    assert "refused" not in caplog.text


def test_100_swaps_leave_one_mapping_and_flat_memory(installed: Plugin) -> None:
    config = installed.config()
    cache = Cache(config.cache_dir)
    folder = cache.list_dir("default")
    live = LiveMatcher(config)
    lists = [synthetic(v, 20_000, seed=v % 2) for v in range(2, 102)]  # two digest sets, alternated
    rss_after = {}
    for i, f in enumerate(lists, 1):
        swap_in(cache, f)
        live.maybe_reload()
        assert live.matcher.versions() == {"default": f.version}
        if i in (10, 100):
            rss_after[i] = rss_kb()
    del lists
    assert len(mappings(folder)) == 1, mappings(folder)  # the version in force, nothing older
    assert len(list(folder.glob("compiled-*"))) == 2  # in force, and the one before it
    assert rss_after[100] - rss_after[10] < 4096, rss_after


PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from resolver_plugin.config import load_config
from resolver_plugin.cache import LiveMatcher
live = LiveMatcher(load_config(sys.argv[2]))
live.check("http://example.com/")
print("ready", flush=True)
sys.stdin.readline()
fields, current = {}, None
for line in open("/proc/self/smaps"):
    parts = line.split()
    if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
        current = parts[5] if len(parts) > 5 and "compiled-" in parts[5] else None
        if current:
            fields = {"inode": parts[4], "path": current}
    elif current and parts[0].endswith(":") and len(parts) >= 2 and parts[1].isdigit():
        fields[parts[0][:-1]] = int(parts[1])
print(json.dumps(fields), flush=True)
"""


def test_two_processes_share_one_mapped_copy(installed: Plugin) -> None:
    config = installed.config()
    swap_in(Cache(config.cache_dir), synthetic(2, 60_000))  # a ~1 MB compiled file
    procs = []
    try:
        for _ in range(2):
            proc = subprocess.Popen([sys.executable, "-c", PROBE, str(ROOT), str(installed.config_path)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        reports = []
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("report\n")
            proc.stdin.flush()
            reports.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    a, b = reports
    assert a["inode"] == b["inode"] and a["path"] == b["path"]
    size_kb = os.path.getsize(a["path"]) // 1024
    for report in reports:
        # the whole file is resident (mapped and its hash checked) and none of it is private
        # (shared dirty until the kernel writes it back: sync does not fsync the compiled file)
        assert report["Rss"] >= size_kb - 4, report
        assert report["Private_Dirty"] == 0 and report["Private_Clean"] <= 16, report
        assert report["Shared_Clean"] + report["Shared_Dirty"] >= size_kb - 4, report


def test_a_cache_of_the_previous_release_loads_and_sync_compiles_it(plugin: Plugin,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    plugin.write_config()
    publish(plugin, LISTED)
    plugin.install_published(compiled=False)  # state.json naming the snapshot and deltas only
    config = plugin.config()
    cache = Cache(config.cache_dir)
    state = cache.state("default")
    assert state is not None and state.compiled is None
    old = LiveMatcher(config)
    assert old.check(LISTED).blocked and not isinstance(old.matcher.filters[0].entries, memoryview)
    with caplog.at_level(logging.INFO):
        Syncer(config, fetcher=None)  # type: ignore[arg-type]  # start-up only: it fetches nothing
    state = cache.state("default")
    assert state is not None and state.compiled is not None and "list_compiled" in [
        getattr(r, "event", None) for r in caplog.records]
    old.maybe_reload()
    fresh = LiveMatcher(config)
    for live in (old, fresh):
        assert isinstance(live.matcher.filters[0].entries, memoryview) and live.check(LISTED).blocked



def test_a_compiled_file_a_power_cut_left_empty_is_written_again_at_sync_start(
        installed: Plugin, caplog: pytest.LogCaptureFixture) -> None:
    """Sync does not fsync the compiled file (only the signed files and state.json): after a power
    cut it may be empty. Enforcers then read the signed files, and the next sync start rewrites it."""
    config = installed.config()
    cache = Cache(config.cache_dir)
    state = cache.state("default")
    assert state is not None and state.compiled is not None
    (cache.list_dir("default") / state.compiled).write_bytes(b"")  # what an unsynced file can be after a power cut
    live = LiveMatcher(config)
    assert live.check(LISTED).blocked and not isinstance(live.matcher.filters[0].entries, memoryview)
    with caplog.at_level(logging.INFO):
        Syncer(config, fetcher=None)  # type: ignore[arg-type]  # start-up only: it fetches nothing
    assert "list_compiled" in [getattr(r, "event", None) for r in caplog.records]
    rewritten = cache.state("default")
    assert rewritten is not None and rewritten.compiled is not None
    assert (cache.list_dir("default") / rewritten.compiled).stat().st_size > 0
    fresh = LiveMatcher(config)
    assert isinstance(fresh.matcher.filters[0].entries, memoryview) and fresh.check(LISTED).blocked

def test_the_mapping_is_read_only(installed: Plugin) -> None:
    (f,) = LiveMatcher(installed.config()).matcher.filters
    assert isinstance(f.entries, memoryview) and f.entries.readonly
    with pytest.raises(TypeError):
        f.entries[0] = 1  # type: ignore[index]
    assert f.entry_bloom is not None and f.entry_bloom.bitarray.readonly


def test_a_compiled_file_is_mapped_only_for_keys_that_signed_its_list(installed: Plugin,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    config = installed.config()
    cache = Cache(config.cache_dir)
    keys = cache.trusted_keys(config.public_keys)
    mapped = cache.load_list("default", keys, config.limits.max_snapshot_bytes, mapped=True)
    assert mapped is not None and isinstance(mapped.entries, memoryview)
    with caplog.at_level(logging.ERROR), pytest.raises(BlocklistError):
        cache.load_list("default", {}, config.limits.max_snapshot_bytes, mapped=True)  # another source's keys
    assert "not by this source's keys" in caplog.text


def test_proxy_workers_map_one_copy_and_swap_to_the_new_version_together(installed: Plugin, tmp_path: Path) -> None:
    proxy = start_proxy(installed, tmp_path, workers=2)
    try:
        workers: set[int] = set()
        for _ in range(200):  # bounded: 20 s
            workers = children(proxy.proc.pid)
            if len(workers) == 2 and all(mapped_files(pid, "compiled-") for pid in workers):
                break
            time.sleep(0.1)
        first = {pid: mapped_files(pid, "compiled-") for pid in workers}
        assert len(workers) == 2 and len({frozenset(m) for m in first.values()}) == 1, first
        ((_, path),) = next(iter(first.values()))
        assert path.endswith(f"compiled-1-{Cache(installed.config().cache_dir).state('default').checksum[:16]}")  # type: ignore[union-attr]
        publish(installed, "http://bad.example/c.html")
        installed.install_published()  # version 2, as sync writes it
        after: dict[int, set[tuple[str, str]]] = {}
        for _ in range(200):
            after = {pid: mapped_files(pid, "compiled-") for pid in workers}
            if all(len(m) == 1 and "compiled-2-" in next(iter(m))[1] for m in after.values()):
                break
            time.sleep(0.1)
        assert len({frozenset(m) for m in after.values()}) == 1, after  # one file, the same inode
        assert all(len(m) == 1 and "compiled-2-" in next(iter(m))[1] for m in after.values()), after
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0
