"""The Squid helper (`blocklist-plugin squid-helper`) as a subprocess, and what its answers look like."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.support.plugin import PLUGIN_MAIN, ROOT

OK_DEFAULT = b'OK message="blocked by list default" log="blocklist:default:v1"'
ANSWER = re.compile(rb'(\d+ )?(OK|ERR|BH)( [a-z_]+="(?:[^"\\]|\\.)*")*')


class Helper:
    """A running helper: write lines, read answer lines (bounded waits)."""

    def __init__(self, config_path: Path, cwd: Path) -> None:
        self.stderr_path = cwd / "helper.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PLUGIN_MAIN, "-c", str(config_path), "squid-helper"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_path.open("wb"),
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=cwd, bufsize=0)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def read_lines(self, count: int, timeout: float = 10) -> list[bytes]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while self._buffer.count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = self._buffer.count(b"\n")
                raise AssertionError(f"helper answered {got} of {count} lines in time")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                data = os.read(self.proc.stdout.fileno(), 1 << 20)
                if not data:
                    raise AssertionError(f"helper exited: {self.stderr_path.read_text()}")
                self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n", count)
        return lines

    def ask(self, line: bytes) -> bytes:
        self.send(line + b"\n")
        return self.read_lines(1)[0]

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()
