"""Debian nginx on a loopback port in front of the publish tree (tests, benchmarks).

Two forms, both what a deployment would run:
  start_nginx        a static mirror: nginx serves a copy of the publish directory (`mirror`).
  start_nginx_cache  a caching tier in front of `blocklist serve` (what a CDN edge does):
                     manifest.json cached for `manifest_valid` then revalidated with
                     If-None-Match, the versioned list and root files cached for a day,
                     one request to serve per expired file however many nodes ask
                     (proxy_cache_lock), and no per-node state at the edge: the
                     node headers are not forwarded (nor the ask for a bundle), serve's
                     long-poll and report headers are not passed back (so plugins poll plainly).
                     With reports=True, manifest polls that carry a node's proof
                     bypass the cache to serve (fleet reports, long-polls and bundles),
                     the files staying at the edge.
"""


from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        autoindex off;
        location / {{ try_files $uri =404; }}
    }}
}}
"""


CACHE_CONFIG = """
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=blocklist:10m max_size=1g inactive=1d use_temp_path=off;
    upstream serve {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    map $http_x_blocklist_proof $manifest_route {{ "" /manifest-cached; default /manifest-reported; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Accept-Encoding "";
        # no per-node state at the edge: who polls, and what it enforces, stays with the node
        proxy_set_header X-Blocklist-Node "";
        proxy_set_header X-Blocklist-Have "";
        proxy_set_header X-Blocklist-Proof "";
        proxy_set_header X-Blocklist-Wait "";
        proxy_set_header X-Blocklist-Bundle "";  # a bundle answer is one node's: never from the cache
        proxy_hide_header X-Blocklist-Wait;
        proxy_hide_header X-Blocklist-Report;
        proxy_cache blocklist;
        proxy_cache_key $uri;
        proxy_cache_revalidate on;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 5s;
        proxy_cache_use_stale error timeout updating;
        proxy_ignore_headers Cache-Control Expires;
        add_header X-Cache-Status $upstream_cache_status always;
{manifest}
        location /lists/ {{
            proxy_cache_valid 200 1d;   # snapshot-N, delta-A-B: named by version, never rewritten
            proxy_pass http://serve;
        }}
        location /root/ {{
            proxy_cache_valid 200 1d;   # root/N.json: named by version
            proxy_pass http://serve;
        }}
        location / {{ return 404; }}    # /fleet, /metrics: the hotline's, not the edge's
    }}
}}
"""


MANIFEST_CACHED = """
        location = /manifest.json {
            proxy_cache_valid 200 304 %(valid)s;
            proxy_cache_valid 404 1s;
            proxy_pass http://serve;
        }
"""

# With reports: a poll that carries a proof goes to serve, node headers and answer headers
# untouched, never cached (serve records it and may long-poll it); any other poll is
# answered from the cache as above. The list files stay at the edge either way.
MANIFEST_REPORTED = """
        location = /manifest.json { rewrite ^ $manifest_route last; }
        location = /manifest-cached {
            internal;
            proxy_cache_valid 200 304 %(valid)s;
            proxy_cache_valid 404 1s;
            proxy_pass http://serve/manifest.json;
        }
        location = /manifest-reported {
            internal;
            proxy_cache off;
            proxy_set_header Connection "";
            proxy_set_header Accept-Encoding "";
            proxy_hide_header X-Cache-Status;  # replaces the server's list: X-Blocklist-Wait and -Report pass
            proxy_read_timeout 90s;     # a long-poll waits up to 60 s (serve's MAX_WAIT)
            proxy_pass http://serve/manifest.json;
        }
"""


def mirror(publish_dir: Path, www: Path) -> None:
    """Copy the publish tree as `rsync` would for a mirror: list files first, the manifest last."""
    for path in sorted(publish_dir.rglob("*")):
        rel = path.relative_to(publish_dir)
        if path.is_file() and rel.name != "manifest.json" and not rel.name.startswith("."):
            (www / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, www / rel)
    shutil.copy2(publish_dir / "manifest.json", www / ".manifest.json.tmp")
    os.replace(www / ".manifest.json.tmp", www / "manifest.json")


def start_nginx(program: str, root: Path, port: int) -> subprocess.Popen:
    """Start nginx in the foreground with everything under `root`; serve `root/www`."""
    (root / "www").mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(CONFIG.format(tmp=root, port=port))
    return subprocess.Popen([program, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_nginx_cache(program: str, root: Path, port: int, upstream: int, manifest_valid: str = "1s",
                      connections: int = 1024, reports: bool = False) -> subprocess.Popen:
    """Start nginx in the foreground as a caching tier in front of `blocklist serve` on `upstream`.

    `connections` is nginx's worker_connections: the nodes polling at once, plus a few to serve.
    `reports`: manifest polls that carry X-Blocklist-Proof bypass the cache to serve (which
    records them and long-polls them), as a CDN rule would; the files stay cached.
    """
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    manifest = (MANIFEST_REPORTED if reports else MANIFEST_CACHED) % {"valid": manifest_valid}
    conf.write_text(CACHE_CONFIG.format(tmp=root, port=port, upstream=upstream, manifest=manifest,
                                        connections=connections, nofile=2 * connections + 64))
    return subprocess.Popen([program, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
