"""Debian nginx on a loopback port serving a mirror copy of a publish directory (tests, benchmarks)."""

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
