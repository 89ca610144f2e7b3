"""Privacy: after a whole end-to-end run, no byte outside the hotline's private store names a listed URL.

The scenario, every program started as a user would (subprocesses):

1. the hotline imports secret URLs (pages with and without a query, a folder,
   a domain, an IP host, an IDN host) and publishes; `blocklist serve` serves them;
2. a plugin runs `sync --once`, then the proxy (with its admin endpoint) and the
   Squid helper enforce them: blocked URLs (also HEAD, CONNECT, an invalid port),
   and allowed URLs fetched from a local origin;
3. a second version is published and synced (a delta in both directories);
4. `blocklist-plugin status`, `status --json`, `check`, `selftest --json`; the admin
   endpoint's /, /healthz, /status (JSON and HTML), /selftest and /metrics; `blocklist fleet` (text and
   JSON) and serve's /fleet, /fleet.json, /metrics and a bundle answer (manifest and delta);
5. failing syncs: a plugin pinning the wrong key (bad signature), a plugin whose
   source is unreachable, and the main plugin after serve is stopped; then the
   status of each.

Then every byte under the test's directory is scanned: the publish directory, the
hotline home, every plugin directory (config, cache, status files), every
process's stdout/stderr, the proxy's access log, and every HTTP response (status
line, headers and body) and CLI output, saved as files under captured/. The
needles are each listed URL as written and canonical, with and without scheme,
its host (ASCII and Unicode), its path and path+query, lower-cased, plain and
percent-escaped. Zero hits.

Excluded, because they are hotline-private by design (docs/ARCHITECTURE.md: "the plaintext
never leaves the hotline's store"): the store (store.sqlite, with its audit
log, and its -wal/-shm files), the CSV the hotline imported, and the output of
`blocklist add/import/ls/check/log`, which this test does not save.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from blocklist.core.urls import canonicalize
from tests.conftest import Hotline, Plugin
from tests.support.net import free_port, wait_for_port
from tests.support.proxy import raw_exchange, start_proxy
from tests.support.squid import Helper

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MAIN = "from resolver_plugin.cli import main; main()"

SECRETS = [  # (url, scope): every host and path here is unique to this test
    ("http://secret-pages-q7z.example/hidden-k3w/page-x9v.html", "page"),
    ("http://secret-pages-q7z.example/search-m2n.php?victim=r8t5&id=77", "page"),
    ("http://secret-folder-h4j.example/gallery-p6b/", "folder"),
    ("http://secret-whole-site-w5c.example/", "domain"),
    ("http://198.51.100.77/ip-secret-d8f/img.jpg", "page"),
    ("http://geheim-bücher-z2y.example/versteckt-u4e/", "folder"),
]
LATER = ("http://secret-later-v3k.example/added-later-c7g.html", "page")  # the second version
PRIVATE = {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "store.sqlite-journal", "secrets.csv"}


def needles(urls: list[str]) -> set[bytes]:
    out: set[str] = set()
    for url in urls:
        c = canonicalize(url)
        path_query = c.path + ("" if c.query is None else "?" + c.query)
        out |= {url, str(c), c.host + path_query, c.host}
        out |= {url.split("://", 1)[1], url.split("://", 1)[1].split("/", 1)[0]}  # as written (Unicode host)
        if len(c.path) > 1:
            out |= {c.path, path_query, c.path.rstrip("/"), path_query.lstrip("/")}
            out |= {segment for segment in c.path.split("/") if len(segment) >= 8}  # "page-x9v.html"
    escaped = {quote(n, safe="") for n in out} | {quote(n) for n in out}
    return {n.lower().encode("utf-8") for n in out | escaped}


def scan(root: Path) -> tuple[int, int, list[str]]:
    """(files, bytes, hits) of every file below root but the hotline-private ones."""
    found = needles([u for u, _ in [*SECRETS, LATER]])
    files = total = 0
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in PRIVATE:
            continue
        data = path.read_bytes().lower()
        files += 1
        total += len(data)
        hits += [f"{path.relative_to(root)}: {n.decode()!r}" for n in found if n in data]
    return files, total, hits


class Run:
    """Programs of the scenario: each one's stdout and stderr land in files under logs/."""

    def __init__(self, root: Path) -> None:
        self.logs = root / "logs"
        self.captured = root / "captured"
        self.logs.mkdir()
        self.captured.mkdir()
        self.count = 0

    def files(self, name: str) -> tuple[Path, Path]:
        self.count += 1
        return self.logs / f"{self.count:02d}-{name}.out", self.logs / f"{self.count:02d}-{name}.err"

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        out, err = self.files(name)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out.open("wb"), stderr=err.open("wb"),
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=self.logs)

    def plugin(self, name: str, plugin: Plugin, *args: str) -> int:
        proc = self.start(name, [sys.executable, "-c", PLUGIN_MAIN, "-c", str(plugin.config_path), *args])
        return proc.wait(60)

    def save(self, name: str, data: bytes | str) -> None:
        self.count += 1
        (self.captured / f"{self.count:02d}-{name}").write_bytes(data.encode() if isinstance(data, str) else data)


async def fetch(run: Run, name: str, url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:
            body = await resp.read()
            head = f"{resp.status} {resp.reason}\n" + "".join(f"{k}: {v}\n" for k, v in resp.headers.items())
            run.save(name, head.encode() + b"\n" + body)
            return resp.status, body.decode("utf-8", "replace")


def wrong_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def test_no_plaintext_listed_url_anywhere(hotline: Hotline, plugin: Plugin, origin: str,  # noqa: F811
                                                tmp_path: Path) -> None:
    run = Run(tmp_path)
    # 1. the hotline (its input CSV and store are private; their command output is not saved)
    csv = tmp_path / "secrets.csv"
    csv.write_text("url,scope\n" + "".join(f"{u},{s}\n" for u, s in SECRETS))
    hotline.run("import", str(csv))
    run.save("publish-1", hotline.run("publish").output)
    serve_port = free_port()
    serve = run.start("serve", [sys.executable, "-m", "blocklist", "--home", str(hotline.home), "serve",
                                "--bind", "127.0.0.1", "--port", str(serve_port)])
    proxy = helper = None
    try:
        wait_for_port(serve_port)
        admin_port = free_port()
        plugin.extra.update(source=f"http://127.0.0.1:{serve_port}/", long_poll=0, node_id="isp-privacy-1",
                            admin={"listen": f"127.0.0.1:{admin_port}"})
        plugin.write_config()
        # 2. sync, then enforce
        assert run.plugin("sync-once", plugin, "sync", "--once") == 0
        proxy = start_proxy(plugin, tmp_path / "logs")
        wait_for_port(admin_port)
        blocked = [u for u, s in SECRETS if s == "page"]
        blocked += [u + "deeper/file.jpg" for u, s in SECRETS if s == "folder"]
        blocked += ["http://www.secret-whole-site-w5c.example/any/path?x=1",
                    "http://SECRET-PAGES-Q7Z.example:80/hidden-k3w/./page-x9v.html#frag",
                    "http://xn--geheim-bcher-z2y-qzb.example/versteckt-u4e/x.html"]
        for url in blocked:
            ascii_url = url if url.isascii() else url.replace("geheim-bücher-z2y", "xn--geheim-bcher-z2y-qzb")
            for method in ("GET", "HEAD"):
                answer = await raw_exchange(proxy.port, f"{method} {ascii_url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 451 "), (url, answer[:80])
                run.save(f"proxy-{method}", answer)
        for target in ("CONNECT secret-whole-site-w5c.example:443 HTTP/1.1\r\nHost: secret-whole-site-w5c.example:443",
                       "GET http://secret-pages-q7z.example:99999/hidden-k3w/page-x9v.html HTTP/1.1\r\nHost: x",
                       "GET /hidden-k3w/page-x9v.html HTTP/1.1\r\nHost: secret-pages-q7z.example",
                       "CONNECT secret-pages-q7z.example:80 HTTP/1.1\r\nHost: secret-pages-q7z.example:80",
                       "GET ftp://www.secret-whole-site-w5c.example/hidden HTTP/1.1\r\nHost: x",
                       "GET ws://secret-pages-q7z.example/hidden-k3w/page-x9v.html HTTP/1.1\r\nHost: x"):
            run.save("proxy-other", await raw_exchange(proxy.port, (target + "\r\n\r\n").encode()))
        for path in ("/fine.html", "/ok/page.html?x=1", "/status/404"):
            answer = await raw_exchange(proxy.port, f"GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n"
                                                    "Connection: close\r\n\r\n".encode())
            assert b"origin content" in answer or b" 404 " in answer[:15]
            run.save("proxy-allowed", answer)

        helper = Helper(plugin.config_path, tmp_path / "logs")
        lines = [f"{i} {quote(u, safe=':/?=&')} -" for i, u in enumerate(blocked)]
        lines += ["90 http://secret-pages-q7z.example:99999/hidden-k3w/page-x9v.html -",
                  "91 secret-whole-site-w5c.example:443 -", f"92 http://{origin}/fine.html -"]
        helper.send("".join(line + "\n" for line in lines).encode())
        answers = helper.read_lines(len(lines))
        run.save("squid-answers", b"\n".join(answers))
        assert all(a.split(b" ")[1] == b"OK" for a in answers[:len(blocked)])
        assert answers[-3].startswith(b"90 BH") and answers[-2].startswith(b"91 OK") and answers[-1] == b"92 ERR"

        # 3. a second version, as a delta
        hotline.run("add", LATER[0])
        run.save("publish-2", hotline.run("publish").output)
        assert run.plugin("sync-delta", plugin, "sync", "--once") == 0
        assert run.plugin("check", plugin, "check", LATER[0]) == 0

        # 4. status everywhere
        run.plugin("status", plugin, "status")
        run.plugin("status-json", plugin, "status", "--json")
        admin = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 10
        while (await fetch(run, "admin-healthz", admin + "/healthz"))[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        await fetch(run, "admin-index", admin + "/")
        status, body = await fetch(run, "admin-status-json", admin + "/status", Accept="application/json")
        assert status == 200 and json.loads(body)["lists"]
        status, body = await fetch(run, "admin-status-html", admin + "/status", Accept="text/html")
        assert status == 200 and "<html" in body.lower()
        status, body = await fetch(run, "admin-metrics", admin + "/metrics")
        assert status == 200 and "blocklist_" in body
        # the canary through the proxy, and the result everywhere it is shown
        assert run.plugin("selftest", plugin, "selftest", "--proxy", proxy.url, "--json") == 0
        status, body = await fetch(run, "admin-selftest", admin + "/selftest")
        assert status == 200 and json.loads(body)["state"] == "OK"
        run.plugin("status-selftest", plugin, "status")
        run.save("fleet", hotline.run("fleet", ok=None).output)
        run.save("fleet-json", hotline.run("fleet", "--json", ok=None).output)
        served = f"http://127.0.0.1:{serve_port}"
        for page in ("/fleet", "/fleet.json", "/metrics", "/manifest.json"):
            status, body = await fetch(run, "serve-" + page.strip("/"), served + page)
            assert status == 200
        assert "isp-privacy-1" in body or page == "/manifest.json"
        # a bundle answer: the manifest and the new delta in one body, as a node asking for it gets them
        delta = json.loads((hotline.publish_dir / "manifest.json").read_bytes())["signed"]["lists"]["default"]
        async with aiohttp.ClientSession() as session, session.get(served + "/manifest.json", headers={
                "X-Blocklist-Have": f"default={delta['deltas'][-1]['from']}", "X-Blocklist-Bundle": "1048576"}) as resp:
            bundled = await resp.read()
            run.save("serve-bundle", "".join(f"{k}: {v}\n" for k, v in resp.headers.items()).encode() + bundled)
            assert "delta-" in resp.headers["X-Blocklist-Bundle"]

        # 5. failing syncs and their status
        for name, extra in (("bad-signature", {"public_key": wrong_key()}),
                            ("unreachable", {"source": f"http://127.0.0.1:{free_port()}/"})):
            other = Plugin(hotline, tmp_path / f"plugin-{name}", {"source": f"{served}/", "long_poll": 0,
                                                                  "node_id": f"isp-{name}", **extra})
            config = other.write_config()
            if "public_key" in extra:  # the pinned key is the wrong one
                text = config.read_text().replace("public_key_file: hotline.pub\n", "")
                config.write_text(text)
            assert run.plugin(f"sync-{name}", other, "sync", "--once") != 0
            run.plugin(f"status-{name}", other, "status", "--json")
    finally:
        if helper is not None:
            helper.close()
        if proxy is not None:
            proxy.stop()
        serve.send_signal(signal.SIGTERM)
        serve.wait(10)
    assert run.plugin("sync-source-down", plugin, "sync", "--once") != 0
    run.plugin("status-after-failure", plugin, "status", "--json")
    errors = " ".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*-sync-*.err"))
    assert "signature" in errors.lower() and "Traceback" not in errors

    # the scan
    files, total, hits = scan(tmp_path)
    kinds = {p.parent.name for p in tmp_path.rglob("*") if p.is_file()}
    print(f"\nprivacy scan: {files} files, {total:,} bytes, {len(needles([u for u, _ in [*SECRETS, LATER]]))} "
          f"needles, {len(hits)} hits (dirs: {', '.join(sorted(kinds))})")
    assert files > 60 and total > 10_000
    assert (tmp_path / "logs" / "access.log").stat().st_size > 0 and any(tmp_path.glob("plugin*/cache/lists/*/delta-*"))
    assert hits == []


def test_needles_find_what_they_should(tmp_path: Path) -> None:
    """The scanner is not blind: a file that names a secret in any of its forms is a hit."""
    samples = ["SECRET-PAGES-Q7Z.EXAMPLE", "/hidden-k3w/page-x9v.html", "xn--geheim-bcher-z2y-qzb.example",
               "geheim-bücher-z2y.example", "198.51.100.77", "search-m2n.php?victim=r8t5&id=77",
               "secret-folder-h4j.example%2Fgallery-p6b%2F", "/gallery-p6b"]
    for i, text in enumerate(samples):
        (tmp_path / f"f{i}").write_text(f"x {text} y")
    (tmp_path / "store.sqlite").write_text(SECRETS[0][0])  # private: not scanned
    files, _, hits = scan(tmp_path)
    assert files == len(samples) and len({h.split(":")[0] for h in hits}) == len(samples)
