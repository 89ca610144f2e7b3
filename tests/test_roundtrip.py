"""Publish -> snapshot + deltas -> Matcher gives exactly the store's verdicts; nothing plaintext leaks."""

from __future__ import annotations

import json
import random
from pathlib import Path

from blocklist.core.format.artifacts import read_delta, read_snapshot
from blocklist.core.format.manifest import read_manifest
from blocklist.core.matcher import ListFilter, Matcher
from blocklist.core.urls import canonicalize
from resolver_plugin.config import load_config
from tests.conftest import Hotline, Plugin


def reference_listed(entries: list[dict], url: str) -> bool:
    """An independent oracle over the plaintext entries: the scope rules of docs/ARCHITECTURE.md."""
    c = canonicalize(url)
    for e in entries:
        ec = canonicalize(e["url"])
        if e["scope"] == "domain":
            if c.host == ec.host or c.host.endswith("." + ec.host):
                return True
        elif c.host != ec.host:
            continue
        elif e["scope"] == "folder":
            if c.path.startswith(ec.path) or c.path + "/" == ec.path:
                return True
        elif ec.query is None:
            if c.path == ec.path:
                return True
        elif (c.path, c.query) == (ec.path, ec.query):
            return True
    return False


def write_import(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("url,scope\n" + "".join(f"{u},{s}\n" for u, s in rows))


def test_snapshot_plus_deltas_match_the_store(hotline: Hotline, plugin: Plugin, tmp_path: Path) -> None:
    rng = random.Random(7)
    hosts = [f"h{i}.example" for i in range(400)]
    rows = []
    for i in range(10000):
        host = rng.choice(hosts)
        kind = rng.random()
        if kind < 0.8:
            rows.append((f"http://{host}/p/{i}.html" + (f"?id={i}" if i % 5 == 0 else ""), "page"))
        elif kind < 0.97:
            rows.append((f"http://{host}/d{i}/sub/", "folder"))
        else:
            rows.append((f"http://s{i}.{host}/", "domain"))
    write_import(tmp_path / "v1.csv", rows[:7000])
    hotline.run("import", str(tmp_path / "v1.csv"))
    hotline.run("publish")
    write_import(tmp_path / "v2.csv", rows[7000:9000])
    hotline.run("import", str(tmp_path / "v2.csv"))
    removed = [u for u, _ in rows[:300]]
    hotline.run("remove", *removed)
    hotline.run("publish")
    write_import(tmp_path / "v3.csv", rows[9000:])
    hotline.run("import", str(tmp_path / "v3.csv"))
    hotline.run("publish")

    # read as a plugin would: snapshot 1, then deltas 1->2->3
    keys = load_config(plugin.write_config()).public_keys
    pub = hotline.publish_dir
    manifest = read_manifest((pub / "manifest.json").read_bytes(), keys)
    ref = manifest.lists["default"]
    assert ref.version == 3 and [(d.from_version, d.to_version) for d in ref.deltas] == [(1, 2), (2, 3)]
    current = ListFilter.from_snapshot(read_snapshot((pub / "lists/default/snapshot-1").read_bytes(), keys))
    for d in ref.deltas:
        current = current.apply(read_delta((pub / d.path).read_bytes(), keys))
    assert current.checksum == ref.checksum
    from_deltas = Matcher([current])
    from_snapshot = Matcher([ListFilter.from_snapshot(read_snapshot((pub / ref.snapshot.path).read_bytes(), keys))])

    entries = json.loads(hotline.run("ls", "--json").output)
    assert len(entries) == 10000 - 300
    by_host: dict[str, list[dict]] = {}
    for e in entries:
        by_host.setdefault(canonicalize(e["url"]).host, []).append(e)

    listed_urls = []
    for u, scope in rows[300:]:
        if scope == "page":
            listed_urls.append(u)
        elif scope == "folder":
            listed_urls.append(u + "deeper/x.html")
        else:
            listed_urls.append(u.replace("http://", "http://www.") + "any/path")
    unlisted_urls = [f"http://{rng.choice(hosts)}/p/{rng.randrange(10**6, 10**7)}.html" for _ in range(50000)]
    unlisted_urls += [f"http://other{rng.randrange(10**6)}.example/x/{i}" for i in range(40000)]
    unlisted_urls += [u for u, _ in rows[:300] if _ != "domain"]  # removed ones
    unlisted_urls += [f"http://{h}/d{i}sub/" for i, h in enumerate(hosts)]
    unlisted_urls += [f"http://{h}/p/{i}.html?id=other" for i, h in zip(range(0, 10000, 5), hosts * 25, strict=False)]
    assert len(listed_urls) == 9700 and len(unlisted_urls) >= 90000

    mismatches = []
    for url in listed_urls + unlisted_urls:
        labels = canonicalize(url).host.split(".")
        candidates = [e for i in range(len(labels)) for e in by_host.get(".".join(labels[i:]), [])]
        expected = reference_listed(candidates, url)
        got = from_deltas.check(url).blocked
        if got != expected or from_snapshot.check(url).blocked != expected:
            mismatches.append(url)
    assert mismatches == []
    assert sum(from_deltas.check(u).blocked for u in listed_urls) == 9700


def test_published_files_hold_no_plaintext(hotline: Hotline, tmp_path: Path) -> None:
    urls = [f"http://secret{i}.example/hidden/path{i}.html?q={i}" for i in range(200)]
    (tmp_path / "l.txt").write_text("\n".join(urls))
    hotline.run("import", str(tmp_path / "l.txt"))
    hotline.run("add", "http://wholesite-secret.example/", "--scope", "domain")
    hotline.run("publish")
    hotline.run("remove", *urls[:50])
    hotline.run("publish")
    needles = set()
    for u in urls + ["http://wholesite-secret.example/"]:
        c = canonicalize(u)
        needles |= {u, c.host, c.path, c.host + c.path, c.host.split(".")[0]}
    files = [p for p in hotline.publish_dir.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        data = path.read_bytes().lower()
        for needle in needles:
            if len(needle) > 4:
                assert needle.lower().encode() not in data, f"{needle!r} in {path}"


def store_checksum(hotline: Hotline) -> str:
    from blocklist.core.format.digestset import set_checksum
    from blocklist.store import Store
    store = Store(hotline.home / "store.sqlite")
    try:
        return set_checksum(*store.digest_sets(store.require_list("default")))
    finally:
        store.close()


def published(hotline: Hotline, plugin: Plugin) -> tuple[str, Matcher]:
    keys = load_config(plugin.write_config()).public_keys
    manifest = read_manifest((hotline.publish_dir / "manifest.json").read_bytes(), keys)
    ref = manifest.lists["default"]
    snap = read_snapshot((hotline.publish_dir / ref.snapshot.path).read_bytes(), keys)
    return ref.checksum, Matcher([ListFilter.from_snapshot(snap)])


def test_incremental_publish_equals_a_full_compile(hotline: Hotline, plugin: Plugin) -> None:
    hotline.run("add", "http://a.example/1", "http://a.example/2", "http://b.example/1")
    hotline.run("publish")
    steps = [
        ("remove", "http://a.example/1"),           # host a keeps an entry
        ("remove", "http://b.example/1"),           # host b loses its last entry
        ("add", "http://c.example/new"),
        ("add", "http://b.example/1"),              # back again
        ("remove", "http://c.example/new"),         # added and removed between publishes
    ]
    for i, (command, url) in enumerate(steps):
        hotline.run(command, url)
        if i % 2 == 0:
            hotline.run("publish")
            checksum, matcher = published(hotline, plugin)
            assert checksum == store_checksum(hotline)
    hotline.run("publish")
    checksum, matcher = published(hotline, plugin)
    assert checksum == store_checksum(hotline)
    assert matcher.check("http://a.example/2").blocked and matcher.check("http://b.example/1").blocked
    assert not matcher.check("http://a.example/1").blocked and not matcher.check("http://c.example/new").blocked
    assert matcher.check_host("c.example").action.value == "pass"


def _oracle_hosts(hotline: Hotline) -> list[int]:
    """The host set by its definition (blocklist.core.digests), from the entries the store lists."""
    from blocklist.core.digests import Scope, entry_digests, make_entry, subtree_markers
    from blocklist.store import Store
    store = Store(hotline.home / "store.sqlite")
    try:
        salt = store.require_list("default").salt
        hosts = set()
        for row in store.entries("default"):
            entry = make_entry(row.url, Scope(row.scope))
            hosts.add(entry_digests(salt, entry)[1])
            hosts.update(subtree_markers(salt, entry.host))
        return sorted(hosts)
    finally:
        store.close()


def test_subtree_markers_follow_the_entries(hotline: Hotline, plugin: Plugin) -> None:
    """Markers shared by several entries stay until the last one goes, through delta publishes."""
    hotline.run("add", "http://x.shared.example/1", "http://y.shared.example/1", "http://y.shared.example/2")
    hotline.run("add", "--scope", "domain", "http://deep.x.shared.example/")
    hotline.run("publish")
    steps = [("remove", "http://x.shared.example/1"), ("remove", "http://y.shared.example/1"),
             ("remove", "--scope", "domain", "http://deep.x.shared.example/"),
             ("remove", "http://y.shared.example/2")]
    for step in steps:
        checksum, matcher = published(hotline, plugin)
        snap_hosts = sorted(matcher.filters[0].hosts)
        assert checksum == store_checksum(hotline) and snap_hosts == _oracle_hosts(hotline)
        assert matcher.clear_suffix("q.other.example") == "other.example"
        assert matcher.clear_suffix("q.z.shared.example") == "z.shared.example"
        assert matcher.check_host("q.y.shared.example").action.value == "pass"
        hotline.run(*step)
        hotline.run("publish")
    checksum, matcher = published(hotline, plugin)
    assert checksum == store_checksum(hotline) and sorted(matcher.filters[0].hosts) == _oracle_hosts(hotline) == []
    assert matcher.filters[0].subtree_markers
    assert matcher.clear_suffix("q.x.shared.example") == "shared.example"  # nothing left below it


def test_a_previous_snapshot_without_markers_is_recompiled(hotline: Hotline, plugin: Plugin,
                                                           monkeypatch) -> None:
    """A hotline upgraded from before subtree markers: the next delta brings them to the plugins."""
    from dataclasses import replace

    from blocklist import publish as publish_module
    hotline.run("add", "http://a.b.example/1")
    hotline.run("publish")
    real = publish_module.read_snapshot
    monkeypatch.setattr(publish_module, "read_snapshot",
                        lambda *args, **kw: replace(real(*args, **kw), subtree_markers=False))
    hotline.run("add", "http://c.b.example/1")
    hotline.run("publish")
    keys = load_config(plugin.write_config()).public_keys
    ref = read_manifest((hotline.publish_dir / "manifest.json").read_bytes(), keys).lists["default"]
    delta = read_delta((hotline.publish_dir / ref.deltas[-1].path).read_bytes(), keys)
    assert delta.subtree_markers and ref.checksum == store_checksum(hotline)
    assert real((hotline.publish_dir / ref.snapshot.path).read_bytes(), keys).subtree_markers


def test_a_store_from_before_markers_is_upgraded(hotline: Hotline) -> None:
    import sqlite3

    from blocklist.store import SCHEMA_VERSION, Store
    hotline.run("add", "http://a.b.example/1", "http://c.b.example/2")
    hotline.run("add", "--scope", "domain", "http://d.b.example/")
    before = store_checksum(hotline)
    db = sqlite3.connect(hotline.home / "store.sqlite")
    with db:
        db.execute("DELETE FROM subtrees")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    assert store_checksum(hotline) == before  # opening it counted the markers again
    store = Store(hotline.home / "store.sqlite")
    try:
        assert store.log()[-1].action == "upgrade-store" and store.log()[-1].detail == {"from": 1, "to": SCHEMA_VERSION}
        version = store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(SCHEMA_VERSION),)
    finally:
        store.close()
