"""Publish -> snapshot + deltas -> Matcher gives exactly the store's verdicts; nothing plaintext leaks."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from blocklist.core.format.artifacts import read_delta, read_snapshot
from blocklist.core.format.manifest import read_manifest
from blocklist.core.matcher import ListFilter, Matcher
from blocklist.core.urls import canonicalize
from resolver_plugin.config import load_config
from tests.conftest import Hotline, Plugin


def bare(host: str) -> str:
    """A host without its leading "www." labels, keeping two labels; an IP address as it is."""
    if re.fullmatch(r"[0-9.]+|\[.*\]", host):
        return host
    while re.match(r"www\.[^.]+\.", host) and not re.fullmatch(r"www\.[0-9.]+", host):
        host = host[4:]
    return host


def host_reached(reach: str, listed: str, host: str) -> bool:
    """Whether a page or folder entry listed on `listed` with `reach` applies on `host`."""
    if reach == "exact":
        return host == listed
    if reach == "twin":
        return bare(host) == bare(listed)
    return host == bare(listed) or host.endswith("." + bare(listed))


def reference_listed(entries: list[dict], url: str) -> bool:
    """An independent oracle over the plaintext entries: the scope and reach rules of docs/ARCHITECTURE.md."""
    c = canonicalize(url)
    for e in entries:
        ec = canonicalize(e["url"])
        if e["scope"] == "domain":
            if c.host == ec.host or c.host.endswith("." + ec.host):
                return True
        elif not host_reached(e.get("reach", "exact"), ec.host, c.host):
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


def write_import(path: Path, rows: list[tuple[str, str]] | list[tuple[str, str, str]]) -> None:
    """A CSV import of (url, scope) or (url, scope, reach) rows; exact rows need --exact-host."""
    path.write_text("url,scope,subdomains\n" + "".join(
        f"{u},{s},{'true' if r == ['subdomains'] else ''}\n" for u, s, *r in rows))


def _import(hotline: Hotline, folder: Path, name: str, rows: list[tuple[str, str, str]]) -> None:
    """Import `rows` in two files: the exact ones with --exact-host, the others as the CSV says."""
    write_import(folder / f"{name}.csv", [r for r in rows if r[2] != "exact"])
    hotline.run("import", str(folder / f"{name}.csv"))
    exact = [r for r in rows if r[2] == "exact"]
    if exact:
        write_import(folder / f"{name}-exact.csv", exact)
        hotline.run("import", "--exact-host", str(folder / f"{name}-exact.csv"))


def _variants(url: str, scope: str, reach: str, rng: random.Random) -> list[str]:
    """Request URLs next to an entry: its twins, subdomains and parents, on and off its path."""
    c = canonicalize(url)
    base = bare(c.host)
    hosts = {c.host, base, "www." + base, "www.www." + base, "a." + base, "www.a." + base,
             "x.www." + base, base.split(".", 1)[1]}
    path = c.path + ("deeper/x.html" if scope == "folder" else "")
    out = [f"http://{h}{path}" for h in hosts]
    out += [f"http://{h}/other{rng.randrange(10**6)}.html" for h in rng.sample(sorted(hosts), 2)]
    return out


def test_snapshot_plus_deltas_match_the_store(hotline: Hotline, plugin: Plugin, tmp_path: Path) -> None:
    rng = random.Random(7)
    hosts = [f"h{i}.example" for i in range(400)]
    rows: list[tuple[str, str, str]] = []
    for i in range(10000):
        host = rng.choice(hosts)
        listed_on = rng.choice(("", "", "", "www.", "www.www."))  # twins are listed either way round
        reach = rng.choice(("twin",) * 6 + ("exact", "exact", "subdomains"))
        kind = rng.random()
        if kind < 0.8:
            rows.append((f"http://{listed_on}{host}/p/{i}.html" + (f"?id={i}" if i % 5 == 0 else ""), "page", reach))
        elif kind < 0.97:
            rows.append((f"http://{listed_on}{host}/d{i}/sub/", "folder", reach))
        else:
            rows.append((f"http://s{i}.{host}/", "domain", "exact"))
    _import(hotline, tmp_path, "v1", rows[:7000])
    hotline.run("publish")
    _import(hotline, tmp_path, "v2", rows[7000:9000])
    removed = [u for u, _, _ in rows[:300]]
    hotline.run("remove", *removed)
    hotline.run("publish")
    _import(hotline, tmp_path, "v3", rows[9000:])
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
    assert {e["reach"] for e in entries if e["scope"] != "domain"} == {"exact", "twin", "subdomains"}
    by_base: dict[str, list[dict]] = {}
    for e in entries:
        by_base.setdefault(bare(canonicalize(e["url"]).host), []).append(e)

    listed_urls = []
    for u, scope, _ in rows[300:]:
        if scope == "page":
            listed_urls.append(u)
        elif scope == "folder":
            listed_urls.append(u + "deeper/x.html")
        else:
            listed_urls.append(u.replace("http://", "http://www.") + "any/path")
    nearby = [v for u, scope, reach in rows[::7] if scope != "domain" for v in _variants(u, scope, reach, rng)]
    unlisted_urls = [f"http://{rng.choice(hosts)}/p/{rng.randrange(10**6, 10**7)}.html" for _ in range(20000)]
    unlisted_urls += [f"http://other{rng.randrange(10**6)}.example/x/{i}" for i in range(10000)]
    unlisted_urls += [u for u, _, _ in rows[:300] if _ != "domain"]  # removed ones
    unlisted_urls += [f"http://{h}/d{i}sub/" for i, h in enumerate(hosts)]
    unlisted_urls += [f"http://{h}/p/{i}.html?id=other" for i, h in zip(range(0, 10000, 5), hosts * 25, strict=False)]
    assert len(listed_urls) == 9700 and len(unlisted_urls) >= 30000 and len(nearby) > 10000

    mismatches, blocked = [], []
    for url in listed_urls + unlisted_urls + nearby:
        labels = canonicalize(url).host.split(".")
        candidates = [e for i in range(len(labels)) for e in by_base.get(bare(".".join(labels[i:])), [])]
        expected = reference_listed(candidates, url)
        got = from_deltas.check(url).blocked
        if got != expected or from_snapshot.check(url).blocked != expected:
            mismatches.append(url)
        if expected:
            blocked.append(url)
    assert mismatches == []
    assert sum(from_deltas.check(u).blocked for u in listed_urls) == 9700
    # the nearby URLs are both: twins and subdomains that are listed, and ones that are not
    nearby_blocked = len(set(blocked) & set(nearby))
    assert 2000 < nearby_blocked < len(set(nearby)) - 2000, (nearby_blocked, len(nearby))


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
    """The checksum of what the store holds, with the list's canary: what a publish must announce."""
    from blocklist.core.canary import with_canary
    from blocklist.core.format.digestset import set_checksum
    from blocklist.store import Store
    store = Store(hotline.home / "store.sqlite")
    try:
        info = store.require_list("default")
        return set_checksum(*with_canary(info.name, info.salt, *store.digest_sets(info)))
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
    from blocklist.core.canary import canary_entry
    from blocklist.core.digests import Scope, entry_digests, make_entry, subtree_markers
    from blocklist.store import Store
    store = Store(hotline.home / "store.sqlite")
    try:
        salt = store.require_list("default").salt
        hosts = set()
        entries = [make_entry(row.url, Scope(row.scope), row.reach) for row in store.entries("default")]
        for entry in [*entries, canary_entry("default")]:  # the canary: compiled like an entry
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
    assert checksum == store_checksum(hotline) and sorted(matcher.filters[0].hosts) == _oracle_hosts(hotline)
    assert len(matcher.filters[0].hosts) == 3 and len(matcher.filters[0].entries) == 1  # the canary alone
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


V2_ENTRIES = """CREATE TABLE entries (id INTEGER PRIMARY KEY, list_id INTEGER NOT NULL REFERENCES lists(id),
    scope TEXT NOT NULL, key TEXT NOT NULL, url TEXT NOT NULL, digest BLOB, host_digest BLOB NOT NULL,
    added_by TEXT NOT NULL, added_at INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT '', UNIQUE (list_id, scope, key))"""


def test_a_store_from_before_reaches_is_upgraded_to_twins(hotline: Hotline, plugin: Plugin) -> None:
    """Schema 2 entries are host-exact: they become twin entries, re-keyed, and the next publish
    is a full compile whose delta carries the new digests to the plugins."""
    import sqlite3

    from blocklist.store import SCHEMA_VERSION, Store
    hotline.run("add", "http://b.example/keep", "http://www.c.example/x")
    hotline.run("add", "--exact-host", "http://www.b.example/keep")  # two rows in schema 2: one twin in 3
    hotline.run("add", "--scope", "domain", "http://d.example/")
    hotline.run("publish")
    db = sqlite3.connect(hotline.home / "store.sqlite")
    with db:  # the store as schema 2 had it: no reach, keys on the host as listed
        rows = db.execute("SELECT id, list_id, scope, url, digest, host_digest, added_by, added_at "
                          "FROM entries ORDER BY id").fetchall()
        db.execute("DROP TABLE entries")
        db.execute(V2_ENTRIES)
        for row_id, list_id, scope, url, d, hd, by, at in rows:
            db.execute("INSERT INTO entries (id, list_id, scope, key, url, digest, host_digest, added_by, added_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row_id, list_id, scope, url.split("//", 1)[1].rstrip("/"), url, d, hd, by, at))
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    store = Store(hotline.home / "store.sqlite")
    try:
        record = store.log()[-1]
        assert record.action == "upgrade-store"
        assert record.detail == {"from": 2, "to": SCHEMA_VERSION, "twin_entries": 2, "merged_into_a_twin": ["http://www.b.example/keep"]}
        assert [(r.url, r.reach.value) for r in store.entries()] == [
            ("http://b.example/keep", "twin"), ("http://d.example/", "exact"), ("http://www.c.example/x", "twin")]
    finally:
        store.close()
    assert store_checksum(hotline) != ""
    hotline.run("publish")
    checksum, matcher = published(hotline, plugin)
    assert checksum == store_checksum(hotline) and sorted(matcher.filters[0].hosts) == _oracle_hosts(hotline)
    for url in ("http://www.b.example/keep", "http://b.example/keep", "http://c.example/x", "http://x.d.example/"):
        assert matcher.check(url).blocked, url
