"""Status that does not forget: a verification failure stands until a verified sync repairs it.

The real Syncer runs against tests.support.repository.RepositorySimulator (no
sockets); `blocklist-plugin status` then judges the cache and status.json it
left, through `gather` and through the CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.errors import ErrorKind
from resolver_plugin.cli import main as plugin_main
from resolver_plugin.distribution.sync import MANIFEST, Syncer
from resolver_plugin.operations.node_status import MAX_ERROR_TEXT, ListStatus, read_status
from resolver_plugin.operations.status import gather
from tests.support.repository import RepositorySimulator

URL_A = "http://bad.example/a.html"
URL_B = "http://bad.example/b.html"
SNAPSHOT_2 = "lists/default/snapshot-2"
DELTA_1_2 = "lists/default/delta-1-2"


pytestmark = pytest.mark.usefixtures("no_sockets")  # every byte comes from the simulator


@pytest.fixture
def sim() -> RepositorySimulator:
    repo = RepositorySimulator()
    repo.add(URL_A)
    repo.publish()
    return repo


@pytest.fixture
async def node(sim: RepositorySimulator, tmp_path: Path) -> Syncer:
    """A node at version 1; the hotline has since published version 2, whose delta and snapshot are tampered."""
    syncer = Syncer(sim.plugin_config(tmp_path / "plugin"), sim)
    assert await syncer.sync_once()
    sim.add(URL_B)
    sim.publish()
    sim.tamper(DELTA_1_2)
    sim.tamper(SNAPSHOT_2)
    return syncer


def status_cli(node: Syncer) -> tuple[int, str]:
    result = CliRunner().invoke(plugin_main, ["-c", str(node.config.path), "status"], catch_exceptions=False)
    return result.exit_code, result.output


async def test_a_tampered_file_then_a_503_stays_refused_until_a_verified_sync(sim: RepositorySimulator,
                                                                            node: Syncer) -> None:
    assert not await node.sync_once()
    report = gather(node.config)
    assert report.state.name == "WARNING" and report.summary == "default: sync refused (checksum)"

    sim.heal()
    sim.fail(MANIFEST, 503)
    for _ in range(3):  # however many transport errors follow, the refusal stands
        assert not await node.sync_once()
    report = gather(node.config)
    assert report.state.name == "WARNING"
    assert report.summary == "default: sync refused (checksum), not repaired; latest error: http"
    listed = report.lists[0]
    assert listed.last_error_kind is ErrorKind.HTTP and listed.last_error == "http: manifest.json: HTTP 503"
    assert listed.refused_kind is ErrorKind.CHECKSUM and listed.refused.startswith("checksum: ")
    code, output = status_cli(node)
    assert code == 1 and output.startswith("BLOCKLIST WARNING - default: sync refused (checksum), not repaired")
    row = next(line for line in output.splitlines() if line.startswith("default "))
    assert "http: manifest.json: HTTP 503" in row and "refused: checksum: " in row
    doc = report.as_json()["lists"][0]
    assert (doc["refused_kind"], doc["last_error_kind"]) == ("checksum", "http")

    sim.heal()
    assert await node.sync_once()  # a verified sync of the list: version 2
    report = gather(node.config)
    assert report.state.name == "OK" and report.summary == "default v2 in sync"
    assert report.lists[0].refused is None and status_cli(node)[0] == 0
    recorded = read_status(node.cache.status_file)
    assert recorded is not None and recorded.lists["default"].refused is None
    assert recorded.errors_total == {"checksum": 2, "http": 3}


async def test_a_manifest_refusal_stands_through_timeouts(sim: RepositorySimulator, tmp_path: Path) -> None:
    node = Syncer(sim.plugin_config(tmp_path / "plugin"), sim)
    assert await node.sync_once()
    sim.serve(MANIFEST, sim.sign_manifest(version=sim.version + 1, keys=[Ed25519PrivateKey.generate()]))
    assert not await node.sync_once()
    sim.heal()
    sim.time_out(MANIFEST)
    assert not await node.sync_once()
    report = gather(node.config)
    assert report.summary == "default: sync refused (signature), not repaired; latest error: timeout"
    sim.heal()
    assert await node.sync_once()
    assert gather(node.config).state.name == "OK"


async def test_a_polled_manifest_alone_does_not_repair_a_refused_list(sim: RepositorySimulator,
                                                                    node: Syncer) -> None:
    """The manifest verifies, the list behind it still does not: still refused, not hidden by the success."""
    assert not await node.sync_once()
    assert not await node.sync_once()  # a 304 on the manifest, the tampered snapshot again
    assert gather(node.config).summary == "default: sync refused (checksum)"


def test_error_texts_are_bounded_and_old_files_read(tmp_path: Path) -> None:
    status = ListStatus()
    status.record_error(ErrorKind.NETWORK, "x" * 10_000, 5.0)
    assert status.last_error is not None and len(status.last_error) == MAX_ERROR_TEXT
    assert status.refused is None

    path = tmp_path / "status.json"
    old = {"version": 1, "last_success": 10.0, "last_error": "signature: " + "y" * 5000, "last_error_at": 20.0}
    path.write_text(json.dumps({"lists": {"default": old}}))  # written before `refused` existed
    read = read_status(path)
    assert read is not None
    ls = read.lists["default"]
    assert ls.last_error is not None and len(ls.last_error) == MAX_ERROR_TEXT and ls.refused is None
    refusal = ls.standing_refusal()
    assert refusal is not None and (refusal.kind, refusal.at) == (ErrorKind.SIGNATURE, 20.0)
    ls.record_error(ErrorKind.NETWORK, "refused", 30.0)  # an old file's refusal, then a network error
    assert ls.standing_refusal() is None  # the old format kept one error: the newest one decides
    ls.record_error(ErrorKind.ROLLBACK, "manifest 3 older than 4", 40.0)
    ls.record_error(ErrorKind.TIMEOUT, "no answer", 50.0)
    refusal = ls.standing_refusal()
    assert refusal is not None and refusal.kind is ErrorKind.ROLLBACK and ls.last_error_kind is ErrorKind.TIMEOUT
    ls.record_success(time.time())
    assert ls.standing_refusal() is None and ls.refused is None
