"""Plugin and hotline programs started by a test (`python -m resolver_plugin ...`), stopped by their PID only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.plugin import env

if TYPE_CHECKING:
    from tests.conftest import Plugin

PLUGIN = [sys.executable, "-m", "resolver_plugin"]


def terminate(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a program we started as an operator would: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@dataclass
class Program:
    """A plugin or hotline process started by a test; stopped by its PID only."""

    proc: subprocess.Popen
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        terminate(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def end_of_input(self) -> int:
        """What Squid does to stop a helper: close its stdin; the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            self.stop()

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


def launch(argv: list[str], stderr: Path, *, pipes: bool = False) -> Program:
    """Start argv with PYTHONPATH set; stderr appended to `stderr`."""
    stdio = subprocess.PIPE if pipes else subprocess.DEVNULL
    with stderr.open("ab") as err:
        proc = subprocess.Popen(argv, stdin=stdio, stdout=stdio, stderr=err, env=env(),
                                cwd=stderr.parent, bufsize=0)
    return Program(proc, stderr)


def launch_proxy(plugin: Plugin, tmp_path: Path) -> Program:
    return launch([*PLUGIN, "-c", str(plugin.config_path), "proxy"], tmp_path / "proxy.stderr")


def connect_when_listening(port: int, program: Program, timeout: float = 20) -> socket.socket:
    """The first connection that `program` accepts on `port` (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not program.alive():
            pytest.fail(f"process exited with {program.proc.returncode}: {program.log()[-2000:]}")
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            time.sleep(0.01)
    pytest.fail(f"nothing listens on port {port} after {timeout} s")
