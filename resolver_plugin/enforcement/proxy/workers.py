"""`proxy.workers: N`: N proxy processes on the same ports, under a parent that supervises them.

The parent binds, for each worker, its own listening socket on `proxy.listen` (and
`proxy.tls_listen`) with SO_REUSEPORT, so the kernel spreads new connections over the
workers; then it forks the workers, each a whole proxy (its own event loop, LiveMatcher,
upstream connection pool) serving the sockets it was given. The parent keeps every
socket open: a worker that dies leaves its socket listening, the connections the kernel
queues on it wait for the worker the parent starts in its place (nothing is refused).

The parent loads no list and serves no request. It:
- restarts a worker that exits without being told to (at once; after a worker that
  lived less than QUICK_DEATH seconds, with a delay that doubles up to MAX_BACKOFF);
- forwards SIGHUP to every worker (each re-reads plugin.yaml and reopens its access
  log as the single process does) and re-reads plugin.yaml itself, quietly, so that a
  worker started later gets what the others run;
- on SIGTERM or SIGINT forwards SIGTERM, waits up to STOP_GRACE seconds for the workers
  to finish, kills what is left, and exits 0.
A worker whose parent is gone stops by itself (resolver_plugin.enforcement.proxy.server).

Every worker checks the shared cache for a new version once a second and loads it
itself, so all enforce the same version within about a second of `sync` writing it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blocklist.core.errors import BlocklistError
from resolver_plugin.config import PluginConfig, changed_settings, load_config, parse_listen

log = logging.getLogger("blocklist.plugin.proxy")

QUICK_DEATH = 5.0    # a worker that dies sooner than this after its start is restarted with a delay
MAX_BACKOFF = 30.0
STOP_GRACE = 10.0
_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}

# serve(config, sockets, worker, parent) -> exit code: one worker's proxy, its event loop included
# (resolver_plugin.enforcement.proxy.server.serve_worker)
ServeWorker = Callable[[PluginConfig, "Listeners", int, int], int]
Check = Callable[[PluginConfig], object]


@dataclass
class Listeners:
    """One worker's listening sockets: `proxy.listen`'s, and `proxy.tls_listen`'s if set."""

    plain: list[socket.socket]
    tls: list[socket.socket] = field(default_factory=list)

    def all(self) -> list[socket.socket]:
        return [*self.plain, *self.tls]


def bind_reuseport(address: str, where: str, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets on HOST:PORT (one per address it names) with SO_REUSEPORT; OSError if not."""
    host, port = parse_listen(address, where)
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - not Linux or a BSD
        raise OSError(errno.ENOPROTOOPT, f"{address}: this system has no SO_REUSEPORT (use proxy.workers: 1)")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(exc.errno, f"{address}: {exc.strerror}") from None
    return sockets


def bind_all(config: PluginConfig, count: int) -> list[Listeners]:
    """`count` workers' sockets; OSError (and nothing left open) when one cannot be bound."""
    made: list[Listeners] = []
    try:
        for _ in range(count):
            plain = bind_reuseport(config.proxy.listen, "proxy.listen")
            made.append(Listeners(plain))
            if config.proxy.tls_listen is not None:
                made[-1].tls = bind_reuseport(config.proxy.tls_listen, "proxy.tls_listen")
    except OSError:
        for listeners in made:
            for sock in listeners.all():
                sock.close()
        raise
    return made


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None


class Supervisor:
    """The parent of `proxy.workers` > 1: starts, restarts, signals and stops the workers."""

    def __init__(self, config: PluginConfig, listeners: list[Listeners], serve: ServeWorker,
                 restart_only: tuple[str, ...], check: Check) -> None:
        self.config, self.listeners, self.serve = config, listeners, serve
        self.restart_only, self.check = restart_only, check
        self.workers = [_Worker(i) for i in range(len(listeners))]
        self.stopping = False

    def run(self) -> int:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        self._old_mask = old_mask
        try:
            for worker in self.workers:
                self._spawn(worker)
            log.info("proxy: %d workers on %s (parent %d)", len(self.workers), self.config.proxy.listen, os.getpid(),
                     extra={"event": "proxy_workers_started", "counts": {"workers": len(self.workers)},
                            "listen": self.config.proxy.listen})
            while not self.stopping:
                info = signal.sigtimedwait(_SIGNALS, self._wait())
                if info is not None:
                    self._signal(info.si_signo)
                self._reap()
                self._restart_due()
            return self._stop()
        finally:
            for listeners in self.listeners:
                for sock in listeners.all():
                    sock.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _wait(self) -> float:
        due = [w.restart_at for w in self.workers if w.restart_at is not None]
        return max(0.05, min([1.0, *(t - time.monotonic() for t in due)]))

    def _signal(self, signo: int) -> None:
        if signo in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        elif signo == signal.SIGHUP:
            self.config = _quiet_reread(self.config, self.restart_only, self.check)
            self._send(signal.SIGHUP)

    def _send(self, signo: int) -> None:
        for worker in self.workers:
            if worker.pid:
                try:
                    os.kill(worker.pid, signo)
                except ProcessLookupError:
                    pass

    def _spawn(self, worker: _Worker) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            _worker_main(self.serve, self.config, self.listeners, worker.index, self._old_mask)
        worker.pid, worker.started, worker.restart_at = pid, time.monotonic(), None

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:
                continue
            worker.pid = 0
            if self.stopping:
                continue
            lived = time.monotonic() - worker.started
            worker.backoff = min(MAX_BACKOFF, max(1.0, worker.backoff * 2)) if lived < QUICK_DEATH else 0.0
            worker.restart_at = time.monotonic() + worker.backoff
            log.error("proxy: worker %d (pid %d) %s after %.1f s; restarting it%s", worker.index, pid,
                      _how(status), lived, f" in {worker.backoff:.0f} s" if worker.backoff else "",
                      extra={"event": "proxy_worker_exited", "reason": _how(status)})

    def _restart_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if not self.stopping and worker.restart_at is not None and worker.restart_at <= now:
                self._spawn(worker)
                log.info("proxy: worker %d restarted (pid %d)", worker.index, worker.pid,
                         extra={"event": "proxy_worker_restarted"})

    def _stop(self) -> int:
        log.info("proxy: stopping %d workers", len(self.workers), extra={"event": "proxy_stopping"})
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(w.pid for w in self.workers) and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.2)
            self._reap()
        if any(w.pid for w in self.workers):
            self._send(signal.SIGKILL)
            for worker in self.workers:
                if worker.pid:
                    os.waitpid(worker.pid, 0)
                    worker.pid = 0
        return 0


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _quiet_reread(current: PluginConfig, restart_only: tuple[str, ...], check: Check) -> PluginConfig:
    """plugin.yaml again for the workers started from now on; the workers log what they do with it."""
    try:
        new = load_config(current.path)
        check(new)
    except BlocklistError:
        return current
    if any(name in restart_only for name in changed_settings(current, new)):
        return current
    return new


def _worker_main(serve: ServeWorker, config: PluginConfig, listeners: list[Listeners], index: int,
                 mask: set[signal.Signals | int]) -> None:
    """In the forked worker: serve its own sockets until told to stop; exits the process."""
    code = 1
    try:
        parent = os.getppid()
        for i, other in enumerate(listeners):
            if i != index:
                for sock in other.all():
                    sock.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        code = serve(config, listeners[index], index, parent)
    except BaseException:  # noqa: BLE001 - a worker logs and exits; the parent restarts it
        log.exception("proxy: worker %d failed", index, extra={"event": "proxy_worker_failed"})
    finally:
        logging.shutdown()
        os._exit(code)


def run_workers(config: PluginConfig, count: int, serve: ServeWorker, restart_only: tuple[str, ...],
                check: Check) -> int:
    """Bind, fork `count` workers that each run `serve`, supervise them until SIGTERM; the exit code.

    `check` is what a re-read plugin.yaml must pass to be taken (the block page loads)."""
    try:
        listeners = bind_all(config, count)
    except OSError as exc:
        log.error("proxy: cannot listen on %s", exc.strerror,
                  extra={"event": "proxy_listen_failed", "listen": config.proxy.listen, "reason": exc.strerror})
        return 1
    return Supervisor(config, listeners, serve, restart_only, check).run()
