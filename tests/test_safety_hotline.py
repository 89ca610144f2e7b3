"""Guard rails at the hotline: protected hosts, `publish --dry-run`, `revert`, played through the CLI."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from blocklist.core.format.artifacts import read_snapshot
from blocklist.core.matcher import ListFilter, Matcher
from blocklist.home import Home
from blocklist.publish import current_manifest
from blocklist.store import SCHEMA_VERSION
from tests.conftest import Hotline


def published_matcher(hotline: Hotline, name: str = "default") -> tuple[int, Matcher]:
    """The list's newest published snapshot, verified with the hotline's key, as a plugin matches it."""
    home = Home(hotline.home)
    key = home.signing_key()
    manifest = current_manifest(home, key)
    assert manifest is not None
    ref = manifest.lists[name]
    snap = read_snapshot((hotline.publish_dir / ref.snapshot.path).read_bytes(),
                         {manifest.signed_by: key.public_key()})
    return ref.version, Matcher([ListFilter.from_snapshot(snap)])


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root` (each command closes the store when it ends)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def entries(hotline: Hotline, name: str = "default") -> set[tuple[str, str]]:
    return {(r["url"], r["scope"]) for r in json.loads(hotline.run("ls", "--list", name, "--json").output)}


def actions(hotline: Hotline) -> list[str]:
    return [r["action"] for r in json.loads(hotline.run("log", "-n", "0", "--json").output)]


# -- protected hosts


def test_protect_add_ls_remove_are_canonical_and_audited(hotline: Hotline) -> None:
    out = hotline.run("protect", "add", "WWW.Wikipedia.ORG.", "bbc.co.uk:443", "--reason", "top sites").output
    assert "protected 2 hosts: www.wikipedia.org, bbc.co.uk" in out
    rows = json.loads(hotline.run("protect", "ls", "--json").output)
    assert {(r["host"], r["reason"], r["added_by"]) for r in rows} == {
        ("www.wikipedia.org", "top sites", "tester"), ("bbc.co.uk", "top sites", "tester")}
    assert "www.wikipedia.org" in hotline.run("protect", "ls").output

    again = hotline.run("protect", "add", "bbc.co.uk", "new.example", "--reason", "x", ok=None)
    assert again.exit_code == 1 and "already protected: bbc.co.uk" in again.output
    assert "new.example" not in hotline.run("protect", "ls").output  # all or nothing
    for bad in (["localhost"], ["http://a.example/x"]):
        result = hotline.run("protect", "add", *bad, "--reason", "x", ok=None)
        assert result.exit_code == 2 and "Traceback" not in result.output
    assert hotline.run("protect", "add", "a.example", ok=None).exit_code == 2  # --reason is required

    missing = hotline.run("protect", "remove", "bbc.co.uk", "nope.example", ok=None)
    assert missing.exit_code == 1 and "not protected: nope.example" in missing.output
    hotline.run("protect", "remove", "BBC.co.uk", "--reason", "contract ended")
    assert [r["host"] for r in json.loads(hotline.run("protect", "ls", "--json").output)] == ["www.wikipedia.org"]
    log = json.loads(hotline.run("log", "--json").output)
    assert [(r["action"], r["detail"]["host"]) for r in log if r["action"].startswith("protect")] == [
        ("protect-add", "www.wikipedia.org"), ("protect-add", "bbc.co.uk"), ("protect-remove", "bbc.co.uk")]
    assert log[-1]["detail"]["reason"] == "contract ended"

    idn = hotline.run("protect", "add", "BÜCHER.example", "--reason", "books")  # as entries canonicalize it
    assert "xn--bcher-kva.example" in idn.output
    assert hotline.run("add", "http://bücher.example/", "--scope", "domain", ok=None).exit_code == 1


P = "protected host www.wiki.example"


@pytest.mark.parametrize("url, scope, message", [
    ("http://WWW.wiki.example/", "domain",
     f"http://www.wiki.example/ (domain) would block {P} and every name below it"),
    ("http://wiki.example/", "domain",
     f"http://wiki.example/ (domain) would block all of wiki.example, which includes {P}"),
    ("http://en.www.wiki.example/", "domain",
     f"http://en.www.wiki.example/ (domain) would block en.www.wiki.example whole, a name below {P}"),
    ("http://www.wiki.example/", "folder",
     f"http://www.wiki.example/ (folder) would block every page of {P}"),
    ("http://m.www.wiki.example/index.html/../", "folder",
     f"http://m.www.wiki.example/ (folder) would block every page of m.www.wiki.example, a name below {P}"),
], ids=["domain-on-it", "domain-on-parent", "domain-on-subdomain", "folder-root", "folder-root-of-subdomain"])
def test_entry_that_blocks_a_protected_host_whole_is_refused(hotline: Hotline, url: str, scope: str,
                                                              message: str) -> None:
    hotline.run("protect", "add", "www.wiki.example", "--reason", "encyclopedia")
    hotline.run("add", "http://other.example/page.html")
    before = actions(hotline)
    result = hotline.run("add", url, "--scope", scope, "--reason", "report 9", ok=None)
    assert result.exit_code == 1
    assert message in result.output
    assert "nothing changed" in result.output and "--force --reason" in result.output
    assert entries(hotline) == {("http://other.example/page.html", "page")}
    assert actions(hotline) == before


def test_entries_below_a_protected_host_are_accepted_with_a_note(hotline: Hotline) -> None:
    hotline.run("protect", "add", "wiki.example", "--reason", "encyclopedia")
    page = hotline.run("add", "http://www.wiki.example/bad.html")
    assert "below protected host wiki.example" in page.output and "filtering proxy" in page.output
    hotline.run("add", "http://wiki.example/uploads/bad/", "--scope", "folder")
    hotline.run("add", "http://wiki.example/", "--scope", "page")  # the home page only, not the host whole
    assert entries(hotline) == {("http://www.wiki.example/bad.html", "page"),
                                ("http://wiki.example/uploads/bad/", "folder"), ("http://wiki.example/", "page")}
    assert hotline.run("check", "http://wiki.example/uploads/bad/x.jpg").exit_code == 0
    assert hotline.run("check", "http://wiki.example/other.html", ok=None).exit_code == 1


def test_force_with_a_reason_overrides_and_is_audited(hotline: Hotline) -> None:
    hotline.run("protect", "add", "cdn.example", "--reason", "shared CDN")
    no_reason = hotline.run("add", "http://cdn.example/", "--scope", "domain", "--force", ok=None)
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    assert entries(hotline) == set()
    hotline.run("add", "http://cdn.example/", "--scope", "domain", "--force", "--reason", "court order 12")
    assert hotline.run("check", "http://x.cdn.example/a").exit_code == 0
    log = json.loads(hotline.run("log", "--json").output)
    override = next(r for r in log if r["action"] == "protect-override")
    assert override["actor"] == "tester" and override["list"] == "default"
    assert override["detail"]["reason"] == "court order 12"
    assert override["detail"]["overridden"][0]["protected"] == "cdn.example"
    assert override["detail"]["overridden"][0]["url"] == "http://cdn.example/"
    assert [r["action"] for r in log[-2:]] == ["protect-override", "add"]


def test_import_is_refused_with_file_line_and_nothing_changes(hotline: Hotline, tmp_path: Path) -> None:
    hotline.run("protect", "add", "news.example", "--reason", "broadcaster")
    f = tmp_path / "reports.csv"
    f.write_text("url,scope\nhttp://a.bad/1.html,page\nhttp://b.bad/,domain\n"
                 "http://news.example/world/x.html,page\nhttp://sport.news.example/,folder\n")
    before = file_hashes(hotline.home)
    result = hotline.run("import", str(f), ok=None)
    assert result.exit_code == 1
    assert f"{f}:5: http://sport.news.example/ (folder) would block every page of sport.news.example" in result.output
    assert f"{f}:4:" not in result.output  # a page below a protected host is accepted
    assert file_hashes(hotline.home) == before
    assert entries(hotline) == set()

    f.write_text("url,scope\nhttp://a.bad/1.html,page\nhttp://b.bad/,domain\nhttp://news.example/w/x.html,page\n"
                 "http://example.news.example/,domain\n")
    refused = hotline.run("import", str(f), ok=None)
    assert refused.exit_code == 1 and f"{f}:5: http://example.news.example/ (domain)" in refused.output
    forced = hotline.run("import", str(f), "--force", "--reason", "court order 3")
    assert "imported 4 entries" in forced.output and "below protected hosts" in forced.output
    assert [r["detail"]["overridden"][0]["where"] for r in json.loads(hotline.run("log", "--json").output)
            if r["action"] == "protect-override"] == [f"{f}:5"]
    again = hotline.run("import", str(f))  # what is listed already adds nothing: no refusal, no override
    assert "imported 0 entries" in again.output and "(4 already listed)" in again.output
    assert actions(hotline).count("protect-override") == 1


def test_protect_import_of_a_top_sites_list(hotline: Hotline, tmp_path: Path) -> None:
    hotline.run("add", "http://m.video.example/", "--scope", "domain")
    f = tmp_path / "top.csv"
    f.write_text("# top sites, rank,host\n1,search.example\n2,VIDEO.example  # videos\n\nwiki.example\n"
                 "4,http://bad/path\n5,single\n")
    bad = hotline.run("protect", "import", str(f), ok=None)
    assert bad.exit_code == 2
    assert f"{f}:6: not a bare host" in bad.output and f"{f}:7: a protected host needs at least two labels" \
        in bad.output and "nothing imported" in bad.output
    assert json.loads(hotline.run("protect", "ls", "--json").output) == []

    f.write_text("# top sites, rank,host\n1,search.example\n2,VIDEO.example  # videos\n\nwiki.example\n")
    out = hotline.run("protect", "import", str(f))
    assert f"protected 3 hosts from {f}" in out.output
    assert "warning: http://m.video.example/ (domain) would block m.video.example whole" in out.output
    assert "already listed in default" in out.output
    rows = json.loads(hotline.run("protect", "ls", "--json").output)
    assert {r["host"] for r in rows} == {"search.example", "video.example", "wiki.example"}
    assert {r["reason"] for r in rows} == {"imported from top.csv"}
    again = hotline.run("protect", "import", str(f))
    assert "protected 0 hosts" in again.output and "(3 already protected)" in again.output
    assert actions(hotline).count("protect-import") == 2 and "protect-add" not in actions(hotline)


# -- publish --dry-run


def test_publish_dry_run_reports_changes_and_writes_nothing(hotline: Hotline) -> None:
    hotline.run("protect", "add", "wiki.example", "--reason", "encyclopedia")
    hotline.run("add", "http://old.example/a.html", "http://old.example/b.html", "http://keep.example/k.html")
    hotline.run("add", "http://gone.example/", "--scope", "domain")
    hotline.run("publish")
    hotline.run("remove", "http://old.example/a.html", "http://gone.example/")
    hotline.run("add", "http://new.example/", "--scope", "domain", "--reason", "report 5")
    hotline.run("add", "http://x.new.example/p.html")  # under a domain entry: stage 1 blocks, not steers
    hotline.run("add", "http://fresh.example/dir/", "--scope", "folder")
    hotline.run("add", "http://whole.example/", "--scope", "folder")
    hotline.run("add", "http://keep.example/k2.html")  # keep.example is already steered
    hotline.run("add", "http://en.wiki.example/bad.html")
    before = file_hashes(hotline.home)

    report = json.loads(hotline.run("publish", "--dry-run", "--json").stdout)
    text = hotline.run("publish", "--dry-run").output
    assert file_hashes(hotline.home) == before

    (lst,) = report["lists"]
    assert report["dry_run"] and lst["list"] == "default" and lst["published_version"] == 1
    assert lst["next_version"] == 2 and lst["would_publish"] and lst["baseline_recorded"]
    assert lst["added"] == {"page": ["http://en.wiki.example/bad.html", "http://keep.example/k2.html",
                                     "http://x.new.example/p.html"],
                            "folder": ["http://fresh.example/dir/", "http://whole.example/"],
                            "domain": ["http://new.example/"]}
    assert lst["removed"] == {"page": ["http://old.example/a.html"], "folder": [], "domain": ["http://gone.example/"]}
    assert lst["counts"]["added"] == {"page": 3, "folder": 2, "domain": 1}
    assert {(b["host"], b["scope"]) for b in lst["newly_blocked_whole"]} == {("new.example", "domain"),
                                                                             ("whole.example", "folder")}
    assert lst["newly_proxied"] == ["en.wiki.example", "fresh.example", "whole.example"]
    assert lst["protected_touched"] == [{"protected": "wiki.example", "url": "http://en.wiki.example/bad.html",
                                         "scope": "page", "effect": "steered to the proxy"}]
    assert "would publish version 2" in text and "+    domain  http://new.example/" in text
    assert "-    page    http://old.example/a.html" in text and "PROTECTED HOST TOUCHED" in text
    assert "newly steered to the filtering proxy by stage 1: en.wiki.example, fresh.example" in text
    assert "dry run: nothing written" in text

    assert hotline.run("publish").stdout.strip() == "default 2"
    quiet = json.loads(hotline.run("publish", "--dry-run", "--json").output)["lists"][0]
    assert not quiet["would_publish"] and quiet["added"]["page"] == [] and quiet["published_version"] == 2
    assert "nothing changed since version 2" in hotline.run("publish", "--dry-run").output


def test_dry_run_of_a_new_list_and_usage_errors(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/x", "--list", "iwf", "--create-list")
    report = json.loads(hotline.run("publish", "--dry-run", "--json", "--list", "iwf").output)
    assert [(r["list"], r["published_version"], r["would_publish"]) for r in report["lists"]] == [("iwf", 0, True)]
    assert report["lists"][0]["added"]["page"] == ["http://a.example/x"]
    assert hotline.run("publish", "--json", ok=None).exit_code == 2
    assert not (hotline.publish_dir / "manifest.json").exists()


# -- revert


def test_revert_restores_the_entries_of_a_version_and_publishes_them(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/1.html", "--reason", "R1", "--ref", "X-1")
    hotline.run("add", "http://b.example/dir/", "--scope", "folder")
    assert hotline.run("publish").stdout.strip() == "default 1"
    v1 = json.loads(hotline.run("ls", "--json").output)
    hotline.run("remove", "http://b.example/dir/")
    hotline.run("add", "http://wrong.example/", "--scope", "domain", "--reason", "typo")
    hotline.run("publish")
    hotline.run("add", "http://c.example/2.html")
    hotline.run("publish")
    hotline.run("add", "http://unpublished.example/")
    _, m3 = published_matcher(hotline)
    assert m3.check("http://any.wrong.example/").blocked and not m3.check("http://b.example/dir/x").blocked
    log_before = len(actions(hotline))

    result = hotline.run("revert", "default", "--to", "1", "--reason", "bad import")
    assert result.stdout.strip() == "default 4"
    assert "reverted default to the entries of version 1 (1 restored, 3 removed); published as version 4" \
        in result.output
    assert json.loads(hotline.run("ls", "--json").output) == v1  # reason, ref, author, time included
    version, matcher = published_matcher(hotline)
    assert version == 4
    assert matcher.check("http://a.example/1.html").blocked
    assert matcher.check("http://b.example/dir/sub/x.html").blocked
    for url in ("http://wrong.example/", "http://c.example/2.html", "http://unpublished.example/"):
        assert not matcher.check(url).blocked, url
    assert hotline.run("check", "http://c.example/2.html", ok=None).exit_code == 1
    new = json.loads(hotline.run("log", "--json").output)[log_before:]
    assert [r["action"] for r in new] == ["revert", "publish"]
    assert new[0]["detail"] | {"restored_urls": 0, "removed_urls": 0} == {
        "to_version": 1, "from_version": 3, "reason": "bad import", "restored": 1, "removed": 3,
        "restored_urls": 0, "removed_urls": 0}

    again = hotline.run("revert", "default", "--to", "3")  # back to what it was: the record survives reverts
    assert again.stdout.strip() == "default 5"
    assert entries(hotline) == {("http://a.example/1.html", "page"), ("http://wrong.example/", "domain"),
                                ("http://c.example/2.html", "page")}
    assert published_matcher(hotline)[1].check("http://wrong.example/").blocked


def test_revert_refusals_and_dry_run(hotline: Hotline) -> None:
    hotline.run("add", "http://a.example/1.html")
    hotline.run("publish")
    hotline.run("add", "http://b.example/", "--scope", "domain")
    hotline.run("publish")
    never = hotline.run("revert", "default", "--to", "7", ok=None)
    assert never.exit_code == 1 and "never published version 7 (published: 1-2)" in never.output
    same = hotline.run("revert", "default", "--to", "2", ok=None)
    assert same.exit_code == 1 and "nothing to revert" in same.output
    assert hotline.run("revert", "default", "--to", "0", ok=None).exit_code == 2
    assert hotline.run("revert", "default", ok=None).exit_code == 2
    assert hotline.run("revert", "nolist", "--to", "1", ok=None).exit_code == 3

    before = file_hashes(hotline.home)
    report = json.loads(hotline.run("revert", "default", "--to", "1", "--dry-run", "--json").stdout)
    text = hotline.run("revert", "default", "--to", "1", "--dry-run").output
    assert file_hashes(hotline.home) == before
    assert report["restore"] == [] and report["remove"] == ["http://b.example/"]
    assert report["publish"]["removed"]["domain"] == ["http://b.example/"]
    assert report["publish"]["next_version"] == 3
    assert "the store would get back 0 entries and lose 1 entry" in text and "dry run: nothing written" in text


def test_revert_faces_the_protected_hosts(hotline: Hotline) -> None:
    hotline.run("add", "http://shop.example/", "--scope", "domain")
    hotline.run("publish")
    hotline.run("remove", "http://shop.example/")
    hotline.run("publish")
    hotline.run("protect", "add", "www.shop.example", "--reason", "retailer")
    refused = hotline.run("revert", "default", "--to", "1", ok=None)
    assert refused.exit_code == 1 and "www.shop.example" in refused.output and "http://shop.example/" in refused.output
    assert entries(hotline) == set() and published_matcher(hotline)[0] == 2
    hotline.run("revert", "default", "--to", "1", "--force", "--reason", "confirmed by legal")
    assert published_matcher(hotline)[1].check("http://www.shop.example/").blocked
    assert "protect-override" in actions(hotline)


def test_every_version_can_be_restored_exactly(hotline: Hotline) -> None:
    """Many small publishes record each version through the journal of changes; each comes back whole."""
    snapshots: dict[int, set[tuple[str, str]]] = {}
    for version in range(1, 8):
        if version == 4:  # a key rotation re-issues version 3 unchanged as version 4
            hotline.run("add", "http://pending.example/p.html")  # and this change stays for version 5
            hotline.run("key", "rotate", "--root-dir", str(Home(hotline.home).default_root_dir()))
            snapshots[4] = snapshots[3]
            continue
        hotline.run("add", *[f"http://h{version}.example/{i}.html" for i in range(3)])
        if version % 2 == 0:
            hotline.run("remove", f"http://h{version - 1}.example/0.html")
            hotline.run("add", f"http://h{version - 1}.example/0.html", "--reason", "back again")
            hotline.run("remove", f"http://h{version - 1}.example/1.html")
        assert hotline.run("publish").stdout.strip() == f"default {version}"
        snapshots[version] = entries(hotline)
    assert ("http://pending.example/p.html", "page") in snapshots[5] - snapshots[4]
    for version in (1, 4, 3, 5, 2, 7, 6):
        hotline.run("revert", "default", "--to", str(version), ok=None)
        assert entries(hotline) == snapshots[version], version
        assert published_matcher(hotline)[1].check(sorted(snapshots[version])[0][0]).blocked


def test_versions_published_before_the_store_kept_records(hotline: Hotline) -> None:
    """A store of schema 2 is upgraded in place; a list at rest gets a record of its last version."""
    hotline.run("add", "http://a.example/1.html")
    hotline.run("add", "http://i.example/1.html", "--list", "iwf", "--create-list")
    hotline.run("publish")
    hotline.run("add", "http://b.example/2.html")
    hotline.run("publish")
    hotline.run("add", "http://i.example/2.html", "--list", "iwf")  # iwf is not at rest
    db = sqlite3.connect(hotline.home / "store.sqlite")
    db.executescript("DROP TABLE history; DROP TABLE recorded_versions; DROP TABLE changed; DROP TABLE protected; "
                     "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    db.close()
    hotline.run("add", "http://c.example/3.html")  # opens the store: upgrade
    upgrade = next(r for r in json.loads(hotline.run("log", "--json").output) if r["action"] == "upgrade-store")
    assert upgrade["detail"] == {"from": 2, "to": SCHEMA_VERSION}
    old = hotline.run("revert", "default", "--to", "1", ok=None)
    assert old.exit_code == 1
    assert "no record of the entries of default version 1" in old.output and "versions with a record: 2" in old.output
    back = hotline.run("revert", "default", "--to", "2")  # drops the unpublished change: 2 publishes that
    assert back.stdout.strip() == "default 2" and "version 2 already publishes them" in back.output
    assert entries(hotline) == {("http://a.example/1.html", "page"), ("http://b.example/2.html", "page")}

    unknown = json.loads(hotline.run("publish", "--dry-run", "--json", "--list", "iwf").output)["lists"][0]
    assert not unknown["baseline_recorded"] and unknown["would_publish"]
    assert unknown["added"]["page"] == ["http://i.example/1.html", "http://i.example/2.html"]
    assert "no record of the entries of version 1" in hotline.run("publish", "--dry-run", "--list", "iwf").output
    assert hotline.run("publish").stdout.strip() == "iwf 2"
    hotline.run("remove", "http://i.example/1.html", "--list", "iwf")
    hotline.run("publish")
    assert hotline.run("revert", "iwf", "--to", "2").stdout.strip() == "iwf 4"
    assert entries(hotline, "iwf") == {("http://i.example/1.html", "page"), ("http://i.example/2.html", "page")}


@pytest.mark.parametrize("args", [["protect"], ["protect", "add"], ["protect", "remove"], ["protect", "ls"],
                                  ["protect", "import"], ["revert"], ["publish"], ["add"], ["import"]])
def test_guard_rail_commands_have_help_with_an_example(hotline: Hotline, args: list[str]) -> None:
    out = hotline.run(*args, "--help").output
    assert "Usage:" in out and "Example" in out


def reaches(hotline: Hotline, name: str = "default") -> set[tuple[str, str, str]]:
    return {(r["url"], r["scope"], r["reach"]) for r in json.loads(hotline.run("ls", "--list", name, "--json").output)}


def test_revert_restores_each_entry_with_its_reach(hotline: Hotline) -> None:
    """The history keeps every entry's reach: a revert brings back a subdomains or exact-host
    entry as it was, not as the default twin entry of the same URL."""
    hotline.run("add", "http://kit.example/a/", "--scope", "folder", "--subdomains")
    hotline.run("add", "http://www.b.example/p.html", "--exact-host")
    hotline.run("add", "http://c.example/t.html")
    hotline.run("publish")
    v1 = reaches(hotline)
    assert v1 == {("http://kit.example/a/", "folder", "subdomains"), ("http://www.b.example/p.html", "page", "exact"),
                  ("http://c.example/t.html", "page", "twin")}
    hotline.run("remove", "http://kit.example/a/", "http://www.b.example/p.html")
    hotline.run("add", "http://kit.example/a/", "--scope", "folder", "--exact-host")
    hotline.run("add", "http://www.b.example/p.html")
    hotline.run("publish")
    _, m2 = published_matcher(hotline)
    assert not m2.check("http://x.kit.example/a/z").blocked and m2.check("http://b.example/p.html").blocked
    assert hotline.run("revert", "default", "--to", "1").stdout.strip() == "default 3"
    assert reaches(hotline) == v1
    _, m3 = published_matcher(hotline)
    assert m3.check("http://x.kit.example/a/z").blocked and m3.check("http://www.c.example/t.html").blocked
    assert not m3.check("http://b.example/p.html").blocked and m3.check("http://www.b.example/p.html").blocked


def test_a_store_of_schema_3_gets_reaches_in_its_history(hotline: Hotline) -> None:
    """Schema 3 (history without reaches) to 4: entries, history rows and the journal of changed
    entries are re-keyed alike, so a revert to a version from before the upgrade works."""
    hotline.run("add", "http://www.h.example/1.html")
    hotline.run("publish")
    hotline.run("remove", "http://www.h.example/1.html")
    hotline.run("add", "http://k.example/2.html")  # pending: in the journal of changed entries
    db = sqlite3.connect(hotline.home / "store.sqlite")
    with db:  # the tables as schema 3 had them: no reach, keys on the host as listed
        old_key = "substr(url, instr(url, '//') + 2)"
        db.executescript(f"""
            CREATE TABLE e3 AS SELECT id, list_id, scope, {old_key} AS key, url, digest, host_digest, added_by,
                added_at, reason, ref FROM entries;
            DROP TABLE entries;
            CREATE TABLE entries (id INTEGER PRIMARY KEY, list_id INTEGER NOT NULL, scope TEXT NOT NULL,
                key TEXT NOT NULL, url TEXT NOT NULL, digest BLOB, host_digest BLOB NOT NULL,
                added_by TEXT NOT NULL, added_at INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '',
                ref TEXT NOT NULL DEFAULT '', UNIQUE (list_id, scope, key));
            INSERT INTO entries SELECT * FROM e3; DROP TABLE e3;
            CREATE TABLE h3 AS SELECT list_id, scope, {old_key} AS key, url, added_by, added_at, reason, ref,
                since_version, until_version FROM history;
            DROP TABLE history; ALTER TABLE h3 RENAME TO history;
            CREATE UNIQUE INDEX history_open ON history(list_id, scope, key) WHERE until_version IS NULL;
            DROP TABLE changed;
            CREATE TABLE changed (list_id INTEGER NOT NULL, scope TEXT NOT NULL, key TEXT NOT NULL,
                PRIMARY KEY (list_id, scope, key)) WITHOUT ROWID;
            INSERT INTO changed VALUES (1, 'page', 'www.h.example/1.html'), (1, 'page', 'k.example/2.html');
            UPDATE meta SET value = '3' WHERE key = 'schema_version';
        """)
    db.close()
    assert reaches(hotline) == {("http://k.example/2.html", "page", "twin")}  # opens the store: upgrade
    upgrade = next(r for r in json.loads(hotline.run("log", "--json").output) if r["action"] == "upgrade-store")
    assert upgrade["detail"] == {"from": 3, "to": SCHEMA_VERSION, "twin_entries": 1, "merged_into_a_twin": []}
    assert hotline.run("publish").stdout.strip() == "default 2"
    assert hotline.run("revert", "default", "--to", "1").stdout.strip() == "default 3"
    assert reaches(hotline) == {("http://www.h.example/1.html", "page", "twin")}
    _, matcher = published_matcher(hotline)
    assert matcher.check("http://h.example/1.html").blocked and not matcher.check("http://k.example/2.html").blocked
