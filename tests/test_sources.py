"""Several sources (plugin.yaml `sources:`): each publisher verified against its own root, synced and cached apart.

Two publishers with separate root keys play against one node: in memory (two
RepositorySimulators, each the Fetcher of its own real Syncer), and over HTTP
(two `blocklist init` homes, each behind its own `blocklist serve`). What must
hold: both enforce side by side under their own names ("hotline/iwf",
"police/terror"); the same list name at both stays two lists; one source's key
signing the other's list is refused while the other's last good list stays in
force; one source down or tampered with never holds up the other; status,
metrics, `check --explain`, Squid's message and the block page name the source;
bad `sources:` are config errors naming the file and line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blocklist.core.digests import Scope
from blocklist.core.errors import ConfigError
from blocklist.home import Home
from blocklist.nodes import FleetStore
from blocklist.serve import make_app
from resolver_plugin.cache import Cache, LiveMatcher
from resolver_plugin.config import PluginConfig, changed_settings, load_config
from resolver_plugin.distribution.sync import Syncer, sync_loop
from resolver_plugin.operations.admin import PluginCollector, status_page
from resolver_plugin.operations.node_status import read_status
from resolver_plugin.operations.status import gather
from tests.conftest import Hotline, require_program
from tests.support.net import ServerThread, free_port
from tests.support.nodes import enroll
from tests.support.proxy import start_proxy
from tests.support.repository import RepositorySimulator

HOTLINE_URL = "http://hotline.invalid/"
POLICE_URL = "http://police.invalid/"
CHILD = "http://abuse.example/a.html"        # on the hotline's iwf
HOTLINE_TERROR = "http://h-terror.example/x.html"  # on the hotline's own list named terror
POLICE_TERROR = "http://p-terror.example/y.html"   # on the police's terror
FORGED = "http://innocent.example/news.html"  # what a forged list would block


def write_sources(folder: Path, sources: list[dict], **extra: object) -> Path:
    """plugin.yaml with `sources:` in `folder` (cache in folder/cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"sources": sources, "cache_dir": "cache", "node_id": "two-source-node", "long_poll": 0,
           "poll_interval": 1, "admin": {"listen": None}, **extra}
    path = folder / "plugin.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- in memory: two simulators

class Pair:
    """A hotline and a police unit (each a RepositorySimulator with its own root) and a node of both."""

    def __init__(self, folder: Path, police_lists: list | None = None, **extra: object) -> None:
        self.folder = folder
        self.hotline = RepositorySimulator(("iwf", "terror"))
        self.police = RepositorySimulator(("terror",))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hotline-root.json").write_bytes(self.hotline.roots[1])
        (folder / "police-root.json").write_bytes(self.police.roots[1])
        self.sources = [
            {"name": "hotline", "url": HOTLINE_URL, "public_key_file": "hotline-root.json",
             "lists": ["iwf", "terror"]},
            {"name": "police", "url": POLICE_URL, "public_key_file": "police-root.json",
             "lists": police_lists or ["terror"]}]
        self.extra = extra
        self.config = load_config(write_sources(folder, self.sources, **extra))
        self.syncers = self.make_syncers()

    def make_syncers(self) -> dict[str, Syncer]:
        return {"hotline": Syncer(self.config, self.hotline, self.config.source_named("hotline")),
                "police": Syncer(self.config, self.police, self.config.source_named("police"))}

    def publish_both(self) -> None:
        self.hotline.add(CHILD, list_name="iwf")
        self.hotline.add(HOTLINE_TERROR, list_name="terror")
        self.hotline.publish()
        self.police.add(POLICE_TERROR, list_name="terror")
        self.police.publish()

    def sync(self, name: str) -> bool:
        return asyncio.run(self.syncers[name].sync_once())


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path / "node")


@pytest.mark.usefixtures("no_sockets")
def test_two_sources_sync_and_enforce_side_by_side_and_the_same_name_stays_two_lists(pair: Pair) -> None:
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    live = LiveMatcher(pair.config)
    assert live.matcher.versions() == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 1}
    assert (live.check(CHILD).list, live.check(HOTLINE_TERROR).list, live.check(POLICE_TERROR).list) == \
        ("hotline/iwf", "hotline/terror", "police/terror")
    assert not live.check(FORGED).blocked and live.missing == []
    # each source's files apart, under its own folder; nothing at the one-source places
    cache = pair.folder / "cache"
    for source, name in (("hotline", "iwf"), ("hotline", "terror"), ("police", "terror")):
        assert (cache / "sources" / source / "lists" / name / "state.json").is_file()
    for source in ("hotline", "police"):
        assert {p.name for p in (cache / "sources" / source).iterdir()} >= {
            "manifest.json", "status.json", "lists"}
    assert not (cache / "lists").exists() and not (cache / "manifest.json").exists()

    # a police publish moves police/terror only; the hotline's list of the same name stays where it is
    pair.police.add("http://p-terror.example/z.html", list_name="terror")
    pair.police.publish()
    assert pair.sync("police") and pair.sync("hotline")
    assert live.reload()
    assert live.matcher.versions() == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 2}
    assert live.check("http://p-terror.example/z.html").list == "police/terror"
    # the police's manifest names only its own lists: each poll reports to its own source only
    [poll] = [r for r in pair.police.requests if r.path == "manifest.json"][-1:]
    assert poll.headers["X-Blocklist-Have"] == "terror=1"


@pytest.mark.usefixtures("no_sockets")
def test_one_sources_key_signing_the_others_list_is_refused(pair: Pair) -> None:
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    hotline, police = pair.hotline, pair.police

    # 1. The police's online key signs a manifest and an iwf snapshot, served at the hotline's source.
    forged = hotline.forge_list("iwf", 2, police.key, FORGED)
    hotline.serve("manifest.json", hotline.sign_manifest(version=hotline.version + 1,
                                                        lists={**hotline.lists, "iwf": forged}, keys=[police.key]))
    assert not pair.sync("hotline")
    st = pair.syncers["hotline"].status.lists["iwf"]
    assert st.last_error_kind == "signature" and st.version == 1
    # 2. A hotline manifest (its own key) names a snapshot the police's key signed: the snapshot is refused.
    hotline.serve("manifest.json", hotline.sign_manifest(version=hotline.version + 1,
                                                        lists={**hotline.lists, "iwf": forged}))
    assert not pair.sync("hotline")
    assert pair.syncers["hotline"].status.lists["iwf"].last_error_kind == "signature"

    # meanwhile the police publishes and its node follows
    police.add("http://p-terror.example/z.html", list_name="terror")
    police.publish()
    assert pair.sync("police")
    live = LiveMatcher(pair.config)
    assert live.matcher.versions() == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 2}
    assert live.check(CHILD).list == "hotline/iwf" and not live.check(FORGED).blocked  # the last good list

    # 3. On disk too: the police's cached files put in the hotline's folder are refused at load
    # (verified with the hotline's keys only); the process keeps the hotline's version it had.
    cache = pair.folder / "cache" / "sources"
    shutil.rmtree(cache / "hotline" / "lists" / "terror")
    shutil.copytree(cache / "police" / "lists" / "terror", cache / "hotline" / "lists" / "terror")
    Cache(pair.folder / "cache").bump_generation()
    live.reload()
    assert live.matcher.versions()["hotline/terror"] == 1 and live.check(HOTLINE_TERROR).list == "hotline/terror"
    fresh = LiveMatcher(pair.config)
    assert "hotline/terror" in fresh.missing and fresh.check(POLICE_TERROR).list == "police/terror"

    # healed, the hotline's next publish is taken again
    hotline.heal()
    hotline.publish(reissue=True)  # version 2: the forged manifest of 2.2 holds that number
    hotline.publish(reissue=True)
    assert pair.sync("hotline")
    assert live.reload() and live.matcher.versions() == {"hotline/iwf": 3, "hotline/terror": 3, "police/terror": 2}


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize("fault", ["down", "tampered", "wrong key", "expired"])
def test_one_source_failing_never_stops_the_other(pair: Pair, fault: str) -> None:
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    police = pair.police
    police.add("http://p-terror.example/z.html", list_name="terror")
    police.publish()
    if fault == "down":
        police.fail("manifest.json")
    elif fault == "tampered":
        for ref in (police.lists["terror"].snapshot, *police.lists["terror"].deltas):
            police.tamper(ref.path)
    elif fault == "wrong key":
        police.serve("manifest.json", police.sign_manifest(keys=[pair.hotline.key]))
    else:  # a manifest that goes stale a second after it was signed
        police.serve("manifest.json", police.sign_manifest(version=police.version + 1,
                                                          expires=int(time.time()) + 1))
        time.sleep(1.1)
    pair.hotline.add("http://abuse.example/b.html", list_name="iwf")
    pair.hotline.publish()
    assert not pair.sync("police")
    assert pair.sync("hotline")
    live = LiveMatcher(pair.config)
    assert live.matcher.versions() == {"hotline/iwf": 2, "hotline/terror": 1, "police/terror": 1}
    assert live.check("http://abuse.example/b.html").list == "hotline/iwf"
    assert live.check(POLICE_TERROR).list == "police/terror"  # the police's last good version

    report = gather(pair.config)
    states = {s.name: s.state.name for s in report.sources}
    assert states["hotline"] == "OK" and states["police"] in ("WARNING", "OK")
    police_list = next(r for r in report.lists if r.name == "police/terror")
    assert police_list.source == "police" and police_list.last_error_kind is not None
    if fault != "down":  # a refusal stands: WARNING, and the reason names the source's list
        assert report.state.name == "WARNING" and "police/terror: sync refused" in report.summary
        assert "hotline" not in report.summary
    doc = report.as_json()
    assert [s["source"] for s in doc["sources"]] == ["hotline", "police"]
    assert {(r["list"], r["source"]) for r in doc["lists"]} == {
        ("hotline/iwf", "hotline"), ("hotline/terror", "hotline"), ("police/terror", "police")}


@pytest.mark.usefixtures("no_sockets")
def test_status_is_the_worst_source_and_names_it(pair: Pair) -> None:
    pair.publish_both()
    assert pair.sync("hotline")  # the police never synced: no list
    report = gather(pair.config)
    assert report.state.name == "CRITICAL"
    assert report.summary == "police/terror: no list"
    assert {s.name: s.state.name for s in report.sources} == {"hotline": "OK", "police": "CRITICAL"}
    # an unreadable status file of one source: UNKNOWN, naming that source
    assert pair.sync("police")
    status_file = Cache(pair.folder / "cache").source("police").status_file
    status_file.write_text("{not json")
    report = gather(pair.config)
    assert report.state.name == "UNKNOWN" and report.problem.startswith("police: status unreadable")
    assert {s.name: s.state.name for s in report.sources} == {"hotline": "OK", "police": "UNKNOWN"}


@pytest.mark.usefixtures("no_sockets")
def test_metrics_carry_a_source_label(pair: Pair) -> None:
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    live = LiveMatcher(pair.config)
    from resolver_plugin.operations import metrics
    metrics.observe_check("check", live.check(POLICE_TERROR), 1e-5)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PluginCollector(pair.config))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("blocklist_list_enforced_version", (("list", "police/terror"), ("source", "police")))] == 1
    assert samples[("blocklist_list_enforced_version", (("list", "hotline/terror"), ("source", "hotline")))] == 1
    assert samples[("blocklist_source_state", (("source", "police"),))] == 0
    assert samples[("blocklist_manifest_version", (("source", "hotline"),))] == 1
    assert samples[("blocklist_sync_errors_total", (("kind", "signature"), ("source", "police")))] == 0
    assert samples[("blocklist_blocks_total", (("action", "block"), ("component", "check"),
                                               ("list", "police/terror"), ("source", "police")))] >= 1
    page = status_page(gather(pair.config))  # the admin endpoint's HTML page
    assert "police/terror" in page and "source police OK" in page and "source hotline OK" in page


@pytest.mark.usefixtures("no_sockets")
def test_local_policy_monitor_mode_and_fail_closed_work_with_sources(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "node", police_lists=[{"name": "terror", "mode": "monitor"}], fail_closed=True,
                local={"allow": [{"url": CHILD, "scope": "page"}]})
    live = LiveMatcher(pair.config)
    assert live.fail_closed_active and live.check(POLICE_TERROR).blocked  # nothing cached yet: closed
    pair.publish_both()
    assert pair.sync("police")
    live.reload()
    assert not live.fail_closed_active  # one source's list is enough to stop failing closed
    assert pair.config.monitored == frozenset({"police/terror"})
    assert not live.check(POLICE_TERROR).blocked  # monitored: counted, never blocking
    assert live.monitor_counts[("check", "police/terror")] == 1
    assert pair.sync("hotline")
    live.reload()
    assert not live.check(CHILD).blocked  # the ISP's local allow wins over the hotline's list
    assert live.check(HOTLINE_TERROR).list == "hotline/terror"


@pytest.mark.usefixtures("no_sockets")
def test_a_reload_adds_a_source_and_enforcement_follows(tmp_path: Path) -> None:
    pair = Pair(tmp_path / "node")
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    one = load_config(write_sources(pair.folder, pair.sources[:1]))
    live = LiveMatcher(one)
    assert set(live.matcher.versions()) == {"hotline/iwf", "hotline/terror"}
    both = load_config(write_sources(pair.folder, pair.sources))
    assert changed_settings(one, both) == ["sources.police", "lists"]
    live.reconfigure(both)
    assert live.check(POLICE_TERROR).list == "police/terror"
    moved = load_config(write_sources(pair.folder, [pair.sources[0], {**pair.sources[1], "url": "http://x.invalid/"}]))
    assert changed_settings(both, moved) == ["sources.police.url"]


# ----------------------------------------------------------------------------- config errors

@pytest.fixture
def roots(tmp_path: Path) -> Path:
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "a.json").write_bytes(RepositorySimulator().roots[1])
    (folder / "b.json").write_bytes(RepositorySimulator().roots[1])
    return folder


def test_sources_load_with_qualified_names(roots: Path) -> None:
    config = load_config(write_sources(roots, [
        {"name": "hotline", "url": "https://lists.hotline.example/", "public_key_file": "a.json", "lists": ["iwf"]},
        {"name": "police", "url": "https://ctiru.example/blocklist/", "public_key_file": "b.json",
         "lists": ["terror", {"name": "trial", "mode": "monitor"}]}]))
    assert config.lists == ("hotline/iwf", "police/terror", "police/trial")
    assert config.monitored == frozenset({"police/trial"}) and config.several_sources
    assert [s.name for s in config.sources] == ["hotline", "police"]
    assert config.sources[0].anchor != config.sources[1].anchor


A = {"name": "a", "url": "http://a.example/", "public_key_file": "a.json", "lists": ["x"]}
B = {"name": "b", "url": "http://b.example/", "public_key_file": "b.json", "lists": ["x"]}


@pytest.mark.parametrize("sources, top, line, message", [
    ([A], {"source": "http://a.example/"}, 1, "'source' and 'sources' cannot both be given"),
    ([A], {"lists": ["x"]}, 1, "'lists' and 'sources' cannot both be given"),
    ([A, {**B, "name": "a"}], {}, 7, "a second source named 'a'"),
    ([A, {**B, "lists": ["x", "y", "x"]}], {}, 13, "sources[1].lists names the list 'x' twice"),
    ([A, {**B, "colour": "blue"}], {}, 12, "unknown key sources[1].colour"),
    ([A, {**B, "name": "b/c"}], {}, 7, "sources[1].name 'b/c'"),
    ([A, {k: v for k, v in B.items() if k != "url"}], {}, 7, "sources[1] misses required key 'url'"),
    ([A, {**B, "url": "ftp://b.example/"}], {}, 8, "sources[b].url must be an http(s) URL"),
    ([A, {**B, "tls_ca_file": "b.json"}], {}, 12, "sources[b].tls_ca_file needs an https source"),
    ([A, {**B, "lists": []}], {}, 10, "sources[1].lists must be a list of names"),
    ([A, {**B, "lists": [{"name": "x", "mode": "shadow"}]}], {}, 11, "sources[1].lists[0].mode must be"),
    ([], {}, 1, "sources must be a list"),
])
def test_bad_sources_name_the_file_and_line(roots: Path, sources: list, top: dict, line: int, message: str) -> None:
    path = roots / "plugin.yaml"
    doc = {**top, "sources": sources, "cache_dir": "cache"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}:"), (str(caught.value), path.read_text())


def test_same_list_name_at_two_sources_is_two_lists(roots: Path) -> None:
    config = load_config(write_sources(roots, [A, B]))
    assert config.lists == ("a/x", "b/x")


def test_the_one_source_form_is_unchanged(roots: Path) -> None:
    path = roots / "plugin.yaml"
    path.write_text(yaml.safe_dump({"source": "http://a.example/", "public_key_file": "a.json",
                                    "lists": ["iwf"], "cache_dir": "cache"}))
    config: PluginConfig = load_config(path)
    assert config.lists == ("iwf",) and not config.several_sources and config.source == "http://a.example/"
    assert Cache(config.cache_dir).source(config.sources[0].name).root == config.cache_dir


# ----------------------------------------------------------------------------- over HTTP: two real publishers

@pytest.fixture
def publishers(tmp_path: Path) -> tuple[Hotline, Hotline]:
    from click.testing import CliRunner
    hotline, police = Hotline(tmp_path / "hotline", CliRunner()), Hotline(tmp_path / "police", CliRunner())
    for home in (hotline, police):
        home.run("init")
    hotline.run("add", "--create-list", "--list", "iwf", CHILD)
    hotline.run("add", "--create-list", "--list", "terror", HOTLINE_TERROR)
    hotline.run("publish")
    police.run("add", "--create-list", "--list", "terror", POLICE_TERROR)
    police.run("lists", "set", "terror", "--title", "Terrorist content", "--legal-basis", "TACT 2006 s3")
    police.run("publish")
    return hotline, police


def http_config(folder: Path, hotline: Hotline, police: Hotline, urls: tuple[str, str], **extra: object) -> Path:
    """plugin.yaml of a node of both publishers, registered with each, as an operator writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, home, url, lists in (("hotline", hotline, urls[0], ["iwf", "terror"]),
                                   ("police", police, urls[1], ["terror"])):
        (folder / f"{name}.pub").write_text(home.run("key", "export").output)
        token = enroll(home.home, "two-source-node", folder / f"{name}-token")
        sources.append({"name": name, "url": url, "public_key_file": f"{name}.pub", "lists": lists,
                        "node_token_file": str(token.relative_to(folder))})
    return write_sources(folder, sources, **extra)


def cli(config: Path, *args: str):
    from click.testing import CliRunner

    from resolver_plugin.cli import main
    return CliRunner().invoke(main, ["-c", str(config), *args], catch_exceptions=False)


def test_two_real_publishers_over_http(publishers: tuple[Hotline, Hotline], tmp_path: Path) -> None:
    hotline, police = publishers
    with ServerThread(make_app(Home(hotline.home))) as a, ServerThread(make_app(Home(police.home))) as b:
        config_path = http_config(tmp_path / "node", hotline, police, (a.url, b.url))
        assert cli(config_path, "sync", "--once").exit_code == 0
        police.run("add", "--list", "terror", "http://p-terror.example/z.html")
        police.run("publish")
        assert cli(config_path, "sync", "--once").exit_code == 0
        assert cli(config_path, "sync", "--once").exit_code == 0  # its poll reports the new version

    checked = json.loads(cli(config_path, "check", "--json", POLICE_TERROR).output)
    assert checked["list"] == "police/terror" and checked["version"] == 2
    assert checked["enforced"] == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 2}
    assert cli(config_path, "check", HOTLINE_TERROR).output.strip() == "blocked by hotline/terror v1"
    explained = cli(config_path, "check", "--explain", POLICE_TERROR)
    assert explained.exit_code == 0 and "police/terror" in explained.output
    assert "p-terror.example/y.html" not in explained.output  # the entry's text never

    status = cli(config_path, "status", "--json")
    doc = json.loads(status.output)
    assert status.exit_code == 0 and doc["state"] == "OK", status.output
    assert [(s["source"], s["state"], s["manifest"]["version"]) for s in doc["sources"]] == [
        ("hotline", "OK", 1), ("police", "OK", 2)]
    text = cli(config_path, "status").output
    assert "police/terror" in text and "source police OK" in text

    # Squid's deny message and the block page name the list with its source and the police's metadata
    live = LiveMatcher(load_config(config_path))
    assert live.block_message("police/terror") == \
        "blocked by list police/terror: Terrorist content; legal basis: TACT 2006 s3"

    # privacy: nothing the node keeps or says names a listed URL (its cache, status files, outputs)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PluginCollector(load_config(config_path)))
    said = [status.output, text, explained.output, generate_latest(registry).decode()]
    kept = [path.read_bytes().decode("latin-1") for path in (tmp_path / "node").rglob("*") if path.is_file()]
    for needle in ("abuse.example", "h-terror.example", "p-terror.example", "/a.html", "/x.html", "/y.html"):
        assert not any(needle in blob for blob in said + kept), needle

    # each serve's fleet view shows the node, with its own lists under its own names
    for home, versions in ((hotline, {"iwf": 1, "terror": 1}), (police, {"terror": 2})):
        [node] = FleetStore(home.home / "fleet.sqlite").nodes()
        assert node.node_id == "two-source-node" and node.versions == versions


class _SourcesPlugin:
    """What tests.support.proxy.start_proxy needs of a plugin: a config it can add proxy settings to."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.doc = yaml.safe_load(config_path.read_text())

    def write_config(self, **extra: object) -> Path:
        self.config_path.write_text(yaml.safe_dump({**self.doc, **extra}, sort_keys=False))
        return self.config_path


def test_the_block_page_names_the_source(publishers: tuple[Hotline, Hotline], tmp_path: Path) -> None:
    curl = require_program("curl")
    hotline, police = publishers
    with ServerThread(make_app(Home(hotline.home))) as a, ServerThread(make_app(Home(police.home))) as b:
        config_path = http_config(tmp_path / "node", hotline, police, (a.url, b.url))
        assert cli(config_path, "sync", "--once").exit_code == 0
    proxy = start_proxy(_SourcesPlugin(config_path), tmp_path)
    try:
        done = subprocess.run([curl, "-sS", "--max-time", "20", "-x", proxy.url, "-w", "\n%{http_code}",
                               POLICE_TERROR], capture_output=True, text=True, timeout=30, check=True)
        deadline = time.monotonic() + 5
        while "blocked" not in proxy.access_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proxy.stop()
    body, _, code = done.stdout.rpartition("\n")
    assert code == "451" and "<code>police/terror</code>" in body and "Terrorist content" in body
    assert "p-terror.example" not in body
    assert "blocked list=police/terror" in proxy.access_log.read_text()


async def test_the_daemon_polls_each_source_on_its_own(publishers: tuple[Hotline, Hotline], tmp_path: Path) -> None:
    """The police's serve is down the whole time (a closed port: its loop backs off); the hotline's
    publishes still reach the node at once."""
    hotline, _police = publishers
    with ServerThread(make_app(Home(hotline.home))) as a:
        config_path = http_config(tmp_path / "node", hotline, _police, (a.url, f"http://127.0.0.1:{free_port()}/"),
                                  timeouts={"connect": 0.5, "retry_first": 0.2, "retry_max": 0.5}, long_poll=5)
        config = load_config(config_path)
        stop = asyncio.Event()
        daemon = asyncio.ensure_future(sync_loop(config, stop))
        cache = Cache(config.cache_dir)
        try:
            await _until(lambda: _version(cache, "hotline", "iwf") == 1, 15)
            await asyncio.to_thread(hotline.run, "add", "--list", "iwf", "http://abuse.example/b.html")
            await asyncio.to_thread(hotline.run, "publish")
            await _until(lambda: _version(cache, "hotline", "iwf") == 2, 15)
            # the police's loop goes on retrying on its own schedule
            await _until(lambda: _errors(cache, "police").get("network", 0) >= 2, 15)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 15)
    report = gather(config)
    assert {s.name: s.state.name for s in report.sources} == {"hotline": "OK", "police": "CRITICAL"}
    assert report.summary.startswith("police/terror: no list (last sync failed: network)")
    assert report.sources[1].errors_total.get("network", 0) >= 2 and not report.sources[0].errors_total


def _errors(cache: Cache, source: str) -> dict[str, int]:
    try:
        status = read_status(cache.source(source).status_file)
    except (OSError, ValueError):
        return {}
    return status.errors_total if status else {}


def _version(cache: Cache, source: str, name: str) -> int | None:
    state = cache.source(source).state(name)
    return state.version if state else None


async def _until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_sighup_reload_adds_a_source_to_the_running_daemon(publishers: tuple[Hotline, Hotline],
                                                                  tmp_path: Path) -> None:
    """The daemon starts with the hotline alone; plugin.yaml gains the police and a reload
    (what SIGHUP sets) starts its loop, while the hotline's list stays in force throughout."""
    hotline, police = publishers
    with ServerThread(make_app(Home(hotline.home))) as a, ServerThread(make_app(Home(police.home))) as b:
        config_path = http_config(tmp_path / "node", hotline, police, (a.url, b.url), long_poll=5)
        both = yaml.safe_load(config_path.read_text())
        config_path.write_text(yaml.safe_dump({**both, "sources": both["sources"][:1]}, sort_keys=False))
        config = load_config(config_path)
        stop, reload = asyncio.Event(), asyncio.Event()
        applied: list[PluginConfig] = []

        async def on_reload(new: PluginConfig) -> None:
            applied.append(new)

        daemon = asyncio.ensure_future(sync_loop(config, stop, reload=reload, on_reload=on_reload))
        cache = Cache(config.cache_dir)
        try:
            await _until(lambda: _version(cache, "hotline", "iwf") == 1, 15)
            config_path.write_text(yaml.safe_dump(both, sort_keys=False))
            reload.set()
            await _until(lambda: _version(cache, "police", "terror") == 1, 15)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 15)
    assert [n.lists for n in applied] == [("hotline/iwf", "hotline/terror", "police/terror")]
    assert _version(cache, "hotline", "iwf") == 1
    assert LiveMatcher(applied[0]).check(POLICE_TERROR).list == "police/terror"


@pytest.mark.usefixtures("no_sockets")
def test_the_circuit_breaker_trips_one_sources_list_and_the_others_stay(tmp_path: Path) -> None:
    """A bad police version trips police/terror alone: the node goes back to its previous version,
    hotline/terror (the same name at another source) is untouched, and `breaker reset` takes the node's name."""
    pair = Pair(tmp_path / "node", safety={"max_block_ratio": 0.5, "min_requests": 20})
    pair.publish_both()
    assert pair.sync("hotline") and pair.sync("police")
    pair.police.add("http://popular.example/", list_name="terror", scope=Scope.DOMAIN)
    pair.police.publish()
    assert pair.sync("police")
    live = LiveMatcher(pair.config, component="proxy")
    assert live.matcher.versions() == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 2}
    for i in range(20):
        live.check(f"http://popular.example/{i}.html" if i < 15 else f"http://other.example/{i}.html")
    live.maybe_reload()  # the proxy's reload loop: every process follows the record
    assert live.matcher.versions() == {"hotline/iwf": 1, "hotline/terror": 1, "police/terror": 1}
    assert live.check(POLICE_TERROR).list == "police/terror" and live.check(HOTLINE_TERROR).list == "hotline/terror"
    assert not live.check("http://popular.example/").blocked
    breaker_dir = Cache(pair.config.cache_dir).breaker_dir
    assert sorted(p.name for p in breaker_dir.glob("*.json")) == ["police+terror.json"]
    report = gather(pair.config)
    by_name = {r.name: r for r in report.lists}
    assert by_name["police/terror"].breaker_open and by_name["police/terror"].enforced == 1
    assert not by_name["hotline/terror"].breaker_open and report.state.name == "CRITICAL"
    assert {s.name: s.state.name for s in report.sources} == {"hotline": "OK", "police": "CRITICAL"}
    result = cli(pair.config.path, "breaker", "reset", "police/terror")
    assert result.exit_code == 0, result.output
    assert live.maybe_reload() and live.matcher.versions()["police/terror"] == 2
    assert live.check("http://popular.example/").blocked
