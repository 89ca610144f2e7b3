"""Benchmark of stage 1: queries/s through Unbound with our module, without it, and with Unbound's RPZ.

    python tools/bench_unbound.py                 # 100k-entry list, 15 s per run, best of 2
    python tools/bench_unbound.py --quick --json  # 10k entries, 5 s, one run; JSON for tools/bench.py

Everything runs on 127.0.0.1: an "internet" Unbound answers every name from
local data (redirect zones), and the resolver under test forwards to it. The
same resolver config runs four ways on the same query files: `iterator` alone
(the baseline), `python iterator` with a no-op script (what Unbound's python
bridge costs by itself: the least any Python module can cost, since pythonmod calls
`operate()` twice per query it does not answer, and the script does nothing but set
its state through the same direct SWIG accessor our module uses), `python iterator`
with resolver_plugin/enforcement/unbound_module.py,
and `respip iterator` with an RPZ zone (what ISPs use for DNS blocking today) that the
bench builds from the same list: ``CNAME .`` (NXDOMAIN) for every host listed whole and
the names below it, an A record of the proxy address for every host with listed pages
(and its www twin), so AAAA answers NODATA as the module's does without proxy_address6.
Before any timing, a sample of listed hosts, their twins, names below them and unlisted
neighbours is asked of both (A and AAAA): the bench stops if module and RPZ give any
answer a different class (rcode and addresses). dnsperf (Debian package dnsperf) sends
the queries.

Three query mixes, each with `--listed` of the queries for listed hosts (page
hosts get the proxy address, domain-listed ones NXDOMAIN), 30% AAAA:
- `cached`: 1000 names over and over: Unbound answers from its cache, where no
  module runs; only the listed queries (never cached) reach the module;
- `zipf`: host names of tools/datagen.py's request stream (Zipf over popular
  sites), after one unmeasured pass over the file has warmed the cache, as in a
  running resolver: mostly cache hits, where no module runs, and a tail of misses;
- `uncached`: a fresh name every query, so every query runs the module stack
  twice (query and answer) and goes upstream: the module's worst case.
The goals (docs/BENCHMARKS.md): a cost under 20% of the baseline's throughput, and at
least RPZ's throughput, on every mix. The no-op's figure over RPZ's is the best any
module can reach through pythonmod (`best_vs_rpz`): below 1.0x the RPZ goal is out of
reach on that mix whatever the module does. Reported per mode: raw queries/s (best run), and
queries answered per CPU-second of the resolver process (best run), which is its
throughput when it has a core to itself and barely moves when other work shares the
machine; the goals are judged on the latter. The resolver runs one thread, pinned to
the last CPU; dnsperf and the internet get the others. The resolver's caches are sized
as an ISP's would be (msg 128 MB, rrset 256 MB): with Unbound's 4 MB default most of the
zipf mix would be cache misses. Figures depend on the machine: record it with them.

Then, with the list's second version (it adds a domain and a page host that the warm
resolvers have in their caches): how long until a cached name gets the new answer
(module: the version written into the plugin's cache as `sync` writes it, goal < 1 s;
RPZ: the zone rewritten and `auth_zone_reload`), what the module's cache flush costs
(its duration, and the zipf mix's throughput right after it against the warm figure:
the cache refilling), and the resolver's memory over `--reloads` new versions.

The full mode also counts, under callgrind (Debian package valgrind), the
instructions the resolver runs per query of the uncached mix in each mode: a
figure that other work on the machine does not move (see measure_instructions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocklist.publish import publish  # noqa: E402
from tools.bench_core import build_home, install_plugin_cache  # noqa: E402
from tools.datagen import request_stream  # noqa: E402

GOAL = 0.20
CALLGRIND_QPS = 150    # queries/s sent to a resolver under callgrind (it runs ~50x slower)
CALLGRIND_WARM = 20000  # names answered before callgrind counts, at 10x that rate (not instrumented)
MIXES = ("cached", "zipf", "uncached")
AGREEMENT_SAMPLE = 300  # list rows whose hosts (and names around them) module and RPZ must answer alike
RELOAD_GROWTH_MB = 8    # "flat": RSS after the reloads within this of RSS after the warm-up
RELOAD_SETTLE = 1.0     # seconds between a reload reaching the answers and reading the resolver's memory
ORIGIN = "127.0.0.2"
PROXY = "127.0.0.1"
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
MODULE = ROOT / "resolver_plugin" / "enforcement" / "unbound_module.py"
# The cheapest module pythonmod can run: it passes every query on and finishes every answer,
# setting its state through SWIG's C accessor as our module does where Unbound has it (the
# public `qstate.ext_state[id] = s` builds a Python object and runs two methods more).
NOOP_SCRIPT = """\
import unboundmodule
_set = getattr(getattr(unboundmodule, "_unboundmodule", None), "_ext_state_set", None)
if _set is None:
    def _set(qstate, id, state):
        qstate.ext_state[id] = state
_NEW, _PASS, _WAIT, _DONE = MODULE_EVENT_NEW, MODULE_EVENT_PASS, MODULE_WAIT_MODULE, MODULE_FINISHED
def init_standard(id, env): return True
def deinit(id): return True
def inform_super(id, qstate, superqstate, qdata): return True
def operate(id, event, qstate, qdata):
    _set(qstate, id, _WAIT if event == _NEW or event == _PASS else _DONE)
    return True
"""

COMMON = """\
server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  chroot: ""
  username: ""
  directory: "{dir}"
  pidfile: "{dir}/{name}.pid"
  use-syslog: no
  logfile: "{dir}/{name}.log"
  verbosity: 1
  num-threads: 1
  local-zone: "test." nodefault
"""
INTERNET = COMMON + """\
  module-config: "iterator"
  local-zone: "." static
  local-zone: "example." redirect
  local-data: "example. 3600 IN A {origin}"
  local-data: "example. 3600 IN AAAA ::2"
  local-zone: "listed.test." redirect
  local-data: "listed.test. 3600 IN A {origin}"
  local-data: "listed.test. 3600 IN AAAA ::2"
remote-control:
  control-enable: no
"""
RESOLVER = COMMON + """\
  do-not-query-localhost: no
  msg-cache-size: 128m
  rrset-cache-size: 256m
  module-config: "{modules}"
{python}forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{upstream}
remote-control:
  control-enable: yes
  control-interface: "{dir}/control.sock"
"""
RPZ_SECTION = """\
rpz:
  name: "{zone}"
  zonefile: "{path}"
"""
RPZ_ZONE = "rpz.bench."
TTL = 30  # resolver.ttl of the plugin and of the RPZ zone's records


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (bounded tries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def python_path() -> str:
    """Unbound's embedded Python: our source, this venv's packages, then Debian's (unboundmodule)."""
    venv = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys([str(ROOT), venv["purelib"], venv["platlib"], DEBIAN_DIST_PACKAGES]))


class Server:
    """One Unbound in the foreground, stopped by its PID."""

    def __init__(self, folder: Path, name: str, template: str, env: dict[str, str], cpus: str | None,
                 wrapper: Sequence[str] = (), start_timeout: float = 60, **values: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"{name}.log"
        for _ in range(10):  # a port taken between free_port() and Unbound's bind: try another
            self.port = free_port()
            conf = folder / f"{name}.conf"
            conf.write_text(template.format(port=self.port, dir=folder, name=name, origin=ORIGIN, **values))
            self.log.unlink(missing_ok=True)
            pin = ["taskset", "-c", cpus] if cpus else []
            self.proc = subprocess.Popen([*pin, *wrapper, shutil.which("unbound") or "/usr/sbin/unbound", "-d",
                                          "-c", str(conf)], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
            if self._started(start_timeout):
                return
            if "could not open ports" not in self._log():
                break
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        raise RuntimeError(f"unbound {name} did not start:\n{(self._log() + err)[-2000:]}")

    def _started(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while "start of service" not in self._log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.05)
        return True

    def _log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU time of the Unbound process so far, all threads (taskset execs it)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


FRESH = "fresh.example"        # listed (domain) only in the second version: the freshness probe
STEERED = "steer.example"      # a host with a listed page only in the second version


@dataclass(frozen=True)
class Release:
    """One published version of the bench list, as `sync` would put it into the plugin's cache."""

    state: Any  # resolver_plugin.cache.ListState
    files: dict[str, bytes]

    def install(self, config: Path) -> None:
        from resolver_plugin.cache import Cache
        Cache(config.parent / "cache").write_list("bench", self.state, self.files)


def build_plugin(folder: Path, entries: int) -> tuple[Path, list[tuple[str, str]], list[Release]]:
    """A published list of `entries` rows in a plugin cache, plugin.yaml, and two versions of it.

    The second version adds FRESH (domain) and a page on STEERED; the first is installed.
    """
    from blocklist.core.digests import Scope, make_entry
    from blocklist.core.format.keys import key_id
    from blocklist.core.format.manifest import read_manifest
    from resolver_plugin.cache import ListState
    home, store, rows = build_home(folder / "home", entries, 1e-6)
    key = home.signing_key().public_key()
    releases = []
    for version in (1, 2):
        if version == 2:
            info = store.require_list("bench")
            with store.transaction():
                store.add_entries(info, [(make_entry(f"http://{FRESH}/", Scope.DOMAIN), "", ""),
                                         (make_entry(f"http://{STEERED}/bad.html", Scope.PAGE), "", "")], "bench")
        publish(home, store, "bench")
        ref = read_manifest((home.publish_dir / "manifest.json").read_bytes(), {key_id(key): key}).lists["bench"]
        name = ref.snapshot.path.rsplit("/", 1)[1]
        releases.append(Release(ListState(ref.version, ref.checksum, name, ()),
                                {name: (home.publish_dir / ref.snapshot.path).read_bytes()}))
        if version == 1:
            config = install_plugin_cache(home, folder / "plugin",
                                          f"resolver: {{proxy_address: {PROXY}, ttl: {TTL}}}\n")
    store.close()
    return config, rows, releases


def write_rpz(path: Path, rows: list[tuple[str, str]], fresh: bool = False) -> None:
    """An RPZ zone acting on the hosts the list acts on, with the module's answer classes.

    Listed whole (domain scope): ``CNAME .`` (NXDOMAIN) for the host and ``*.`` below it.
    A host with listed pages or folders, and its www twin: A `PROXY` (AAAA: NODATA, as the module
    gives without proxy_address6). `fresh` adds what the list's second version adds.
    """
    domains, steered = set(), set()
    for url, scope in rows:
        host = url.split("/")[2]
        (domains if scope == "domain" else steered).add(host)
    if fresh:
        domains.add(FRESH)
        steered.add(STEERED)
    for host in list(steered):
        steered.add(host[4:] if host.startswith("www.") else f"www.{host}")
    lines = [f"$ORIGIN {RPZ_ZONE}", f"@ {TTL} IN SOA localhost. root.localhost. 1 3600 600 86400 {TTL}",
             f"@ {TTL} IN NS localhost."]
    lines += [f"{h} {TTL} CNAME .\n*.{h} {TTL} CNAME ." for h in sorted(domains)]
    lines += [f"{h} {TTL} A {PROXY}" for h in sorted(steered - domains)]
    path.write_text("\n".join(lines) + "\n")


def ask(port: int, name: str, qtype: int = 1, timeout: float = 3.0) -> tuple[str, tuple[str, ...]]:
    """One DNS query over UDP: (rcode name, sorted answer records as "TYPE data"); CNAME data left out."""
    qid = random.randrange(65536)
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, ("127.0.0.1", port))
        while True:
            data = sock.recv(4096)
            if data[:2] == query[:2]:
                break
    flags, _qd, ancount = struct.unpack(">HHH", data[2:8])
    i = _skip_name(data, 12) + 4
    records = []
    for _ in range(ancount):
        i = _skip_name(data, i)
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", data[i:i + 10])
        rdata = data[i + 10:i + 10 + length]
        i += 10 + length
        if rtype == 1:
            records.append(f"A {socket.inet_ntop(socket.AF_INET, rdata)}")
        elif rtype == 28:
            records.append(f"AAAA {socket.inet_ntop(socket.AF_INET6, rdata)}")
    rcodes = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    return rcodes.get(flags & 0xF, str(flags & 0xF)), tuple(sorted(records))


def _skip_name(data: bytes, i: int) -> int:
    while data[i]:
        if data[i] >= 0xC0:
            return i + 2
        i += data[i] + 1
    return i + 1


def control(server: Server, command: str) -> str:
    """An unbound-control command over the resolver's control socket (no TLS on a socket path)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(server.log.parent / "control.sock"))
        sock.sendall(f"UBCT1 {command}\n".encode())
        chunks = []
        while data := sock.recv(4096):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


def memory_kb(server: Server) -> dict[str, int]:
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+)", status, re.M)[1]) for key in ("VmRSS", "VmHWM")}


def listed_hosts(rows: list[tuple[str, str]]) -> list[str]:
    """Hosts stage 1 acts on: hosts of page/folder entries and below domain entries."""
    hosts = set()
    for url, scope in rows:
        host = url.split("/")[2]
        hosts.add(f"www.{host}" if scope == "domain" else host)
    return sorted(hosts)


def write_queries(path: Path, mix: str, count: int, rows: list[tuple[str, str]], listed: float) -> None:
    rng = random.Random(7)
    targets = listed_hosts(rows)
    names = (url.split("/")[2] for url in request_stream(count, [], listed_fraction=0.0))
    with path.open("w") as out:
        for i, host in enumerate(names):
            if rng.random() < listed:
                host = rng.choice(targets)
            elif mix == "uncached":
                host = f"q{i}.{host}"
            elif mix == "cached":
                host = f"n{i % 1000}.site1.example"
            out.write(f"{host} {'AAAA' if rng.random() < 0.3 else 'A'}\n")


def cpu_split() -> tuple[str | None, str | None]:
    """The resolver under test gets the last CPU to itself; dnsperf and the internet the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None, None
    return str(cpus[-1]), ",".join(map(str, cpus[:-1]))


def dnsperf(port: int, queries: Path, seconds: float, passes: int | None, cpus: str | None,
            rate: int | None = None, timeout: int = 2) -> dict[str, float]:
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
           "-c", "4", "-q", "200", "-t", str(timeout)]
    if passes:
        cmd += ["-n", str(passes)]
    if rate:
        cmd += ["-Q", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    latency = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    if qps is None or completed is None:
        raise RuntimeError(f"dnsperf printed no result:\n{out[-2000:]}")
    return {"qps": float(qps[1]), "completed": int(completed[1]), "lost": int(lost[1]) if lost else -1,
            "latency_ms": round(float(latency[1]) * 1000, 3) if latency else -1}


def measure_mix(mix: str, queries: Path, args: argparse.Namespace, modes: dict[str, tuple[str, str]],
                env: dict[str, str], upstream: int, folder: Path) -> dict[str, Any]:
    """Every mode on one query file, `args.repeats` times interleaved; the best run of each kept."""
    resolver_cpu, other_cpus = cpu_split()
    figures: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for mode, (modules, python) in modes.items():
            server = Server(folder / f"{mix}-{mode}-{repeat}", "resolver", RESOLVER, env, resolver_cpu,
                            modules=modules, python=python, upstream=upstream)
            try:
                if mix != "uncached":  # steady state of a running resolver: its cache is warm
                    dnsperf(server.port, queries, args.seconds * 4, 1, other_cpus)
                user, system = server.cpu_seconds()
                got = dnsperf(server.port, queries, args.seconds, 1 if mix == "uncached" else None, other_cpus)
                spent = zip(server.cpu_seconds(), (user, system), strict=True)
                user, system = (after - before for after, before in spent)
            finally:
                server.stop()
            cpu = user + system
            got["per_cpu_s"] = round(got["completed"] / cpu) if cpu > 0 else 0
            got["system_share"] = round(system / cpu, 3) if cpu > 0 else 0  # the kernel's part: sockets
            print(f"bench_unbound: {mix} {mode} run {repeat + 1}: {got['qps']:,.0f} q/s, "
                  f"{got['per_cpu_s']:,} q per resolver CPU-second "
                  f"({got['system_share']:.0%} of it in the kernel)", file=sys.stderr)
            best = figures.setdefault(mode, {"qps": 0.0, "per_cpu_s": 0, "runs": []})
            best["runs"].append(got)
            best["qps"] = max(best["qps"], got["qps"])
            best["per_cpu_s"] = max(best["per_cpu_s"], got["per_cpu_s"])
    base = figures["baseline"]
    for mode in ("module", "noop_python", "rpz"):
        if mode in figures:
            figures[f"{mode}_cost"] = round(1 - figures[mode]["per_cpu_s"] / base["per_cpu_s"], 4)
            figures[f"{mode}_qps_cost"] = round(1 - figures[mode]["qps"] / base["qps"], 4)
    if "rpz" in figures and figures["rpz"]["per_cpu_s"]:
        figures["module_vs_rpz"] = round(figures["module"]["per_cpu_s"] / figures["rpz"]["per_cpu_s"], 3)
        # the floor: a module that costs nothing itself still pays the bridge (the no-op's figure)
        figures["best_vs_rpz"] = round(figures["noop_python"]["per_cpu_s"] / figures["rpz"]["per_cpu_s"], 3)
    return figures


def check_agreement(servers: dict[str, Server], rows: list[tuple[str, str]], sample: int,
                    fresh: bool = False) -> dict[str, Any]:
    """Module and RPZ give the same answer class (rcode and addresses) to A and AAAA queries.

    The sample: listed hosts (page hosts, their www twins, names below domain entries and the
    entries themselves) and unlisted names beside them. Raises on any disagreement: a comparator
    that answers differently would make the speed comparison meaningless.
    """
    rng = random.Random(11)
    names = set()
    for url, _scope in rng.sample(rows, min(sample, len(rows))):
        host = url.split("/")[2]
        names.update([host, f"www.{host}", f"x{rng.randrange(99)}.{host}", host.split(".", 1)[1]])
    names.update(f"n{i}.site{i}.example" for i in range(20))
    if fresh:
        names.update([FRESH, f"a.{FRESH}", STEERED, f"www.{STEERED}"])
    classes: dict[str, int] = {}
    disagree = []
    for name in sorted(names):
        for qtype in (1, 28):
            answers = {mode: ask(server.port, name, qtype) for mode, server in servers.items()}
            if len(set(answers.values())) > 1:
                disagree.append({"qtype": qtype, "answers": {m: list(a) for m, a in answers.items()}})
            first = next(iter(answers.values()))
            kind = first[0] if first[0] != "NOERROR" else "proxy" if f"A {PROXY}" in first[1] else \
                "nodata" if not first[1] else "resolved"
            classes[kind] = classes.get(kind, 0) + 1
    if disagree:  # no listed name in the message: the count and the answers only
        raise RuntimeError(f"module and RPZ disagree on {len(disagree)} of {2 * len(names)} answers, "
                           f"e.g. {disagree[:3]}")
    return {"answers": 2 * len(names), "classes": classes, "agree": True}


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.005) -> float | None:
    """Seconds until check() held (polled), None if it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def measure_freshness(args: argparse.Namespace, config: Path, releases: list[Release], zone: Path,
                      rows: list[tuple[str, str]], queries: Path, modes: dict[str, tuple[str, str]],
                      env: dict[str, str], upstream: int, folder: Path) -> dict[str, Any]:
    """How long a new version takes to reach a cached name, and what the module's cache flush costs.

    Module: the warm resolver has FRESH and STEERED in its cache (and the zipf mix); the second
    version is installed as `sync` installs it, and FRESH is asked every 5 ms until it is
    NXDOMAIN. The zipf mix is then measured right after the flush against the warm figure: the
    cost of one flush is the cache refilling. RPZ: the zone file is rewritten and
    `unbound-control auth_zone_reload` run, timed the same way. The agreement check runs again
    on the new version.
    """
    resolver_cpu, other_cpus = cpu_split()
    out: dict[str, Any] = {}
    servers = {}
    try:
        for mode in ("module", "rpz"):
            modules, section = modes[mode]
            servers[mode] = Server(folder / f"fresh-{mode}", "resolver", RESOLVER, env, resolver_cpu,
                                   modules=modules, python=section, upstream=upstream)
        for mode, server in servers.items():
            dnsperf(server.port, queries, args.seconds * 4, 1, other_cpus)  # warm, as measure_mix does
            for name in (FRESH, STEERED):
                if ask(server.port, name)[0] != "NOERROR":
                    raise RuntimeError(f"{mode}: the freshness probe does not resolve before the new version")
        module = servers["module"]
        warm = _per_cpu_s(module, queries, args.seconds, other_cpus)
        releases[1].install(config)
        latency = wait_until(lambda: ask(module.port, FRESH)[0] == "NXDOMAIN", 10)
        steered = ask(module.port, STEERED) == ("NOERROR", (f"A {PROXY}",))
        after = _per_cpu_s(module, queries, args.seconds, other_cpus)
        flushed = re.findall(r"cache flushed in ([\d.]+) s \(ok removed (\d+) rrsets, (\d+) messages",
                             module._log())
        write_rpz(zone, rows, fresh=True)
        started = time.monotonic()
        reply = control(servers["rpz"], f"auth_zone_reload {RPZ_ZONE}")
        flipped = wait_until(lambda: ask(servers["rpz"].port, FRESH)[0] == "NXDOMAIN", 10)
        rpz_latency = None if flipped is None else time.monotonic() - started
        out["agreement_after"] = check_agreement(servers, rows, 50, fresh=True)
    finally:
        for server in servers.values():
            server.stop()
    out["module"] = {
        "latency_s": round(latency, 3) if latency is not None else None,
        "steered_host_sent_to_proxy": steered,
        "flush_s": float(flushed[-1][0]) if flushed else None,
        "flushed_rrsets": int(flushed[-1][1]) if flushed else None,
        "flushed_messages": int(flushed[-1][2]) if flushed else None,
        "zipf_warm_per_cpu_s": warm, "zipf_after_flush_per_cpu_s": after,
        "zipf_after_flush_cost": round(1 - after / warm, 4) if warm else None,
    }
    out["rpz"] = {"latency_s": round(rpz_latency, 3) if rpz_latency is not None else None, "reload": reply[:80]}
    m = out["module"]
    print(f"bench_unbound: freshness: module {m['latency_s']} s (flush {m['flush_s']} s, zipf right after it "
          f"{m['zipf_after_flush_cost'] or 0:.1%} below warm), RPZ {out['rpz']['latency_s']} s", file=sys.stderr)
    return out


def _per_cpu_s(server: Server, queries: Path, seconds: float, cpus: str | None) -> int:
    user, system = server.cpu_seconds()
    got = dnsperf(server.port, queries, seconds, None, cpus)
    cpu = sum(server.cpu_seconds()) - user - system
    return round(got["completed"] / cpu) if cpu > 0 else 0


def measure_reloads(count: int, config: Path, releases: list[Release], modes: dict[str, tuple[str, str]],
                    env: dict[str, str], upstream: int, folder: Path) -> dict[str, Any]:
    """The resolver's memory over `count` new versions (the two versions in turn), after a warm-up.

    Each swap waits until FRESH's answer flips (NXDOMAIN in the second version, the origin's
    address in the first), so every swap is a reload and a cache flush; memory is read from
    /proc (VmRSS, VmHWM) RELOAD_SETTLE after `count // 10` warm-up swaps and then every `count // 10`.
    """
    resolver_cpu, _ = cpu_split()
    modules, section = modes["module"]
    server = Server(folder / "reloads", "resolver", RESOLVER, env, resolver_cpu, modules=modules,
                    python=section, upstream=upstream)
    warmup = max(1, count // 10)
    samples = []
    try:
        started = time.monotonic()
        for i in range(count + warmup):
            release = releases[(i + 1) % 2]  # the first one is installed
            release.install(config)
            want = "NXDOMAIN" if release is releases[1] else "NOERROR"
            if wait_until(lambda want=want: ask(server.port, FRESH)[0] == want, 10, 0.02) is None:
                raise RuntimeError(f"reload {i + 1}: the new version did not reach the answers within 10 s")
            if (i + 1 - warmup) % max(1, count // 10) == 0 and i + 1 >= warmup:
                time.sleep(RELOAD_SETTLE)  # the reload thread flushes and trims after the answers flip
                samples.append(memory_kb(server))
        seconds = time.monotonic() - started
    finally:
        server.stop()
    first, last = samples[0], samples[-1]
    out = {"reloads": count, "warmup": warmup, "seconds": round(seconds, 1),
           "rss_mb_series": [round(m["VmRSS"] / 1024, 1) for m in samples],
           "rss_mb_after_warmup": round(first["VmRSS"] / 1024, 1), "rss_mb_after": round(last["VmRSS"] / 1024, 1),
           "hwm_mb_after_warmup": round(first["VmHWM"] / 1024, 1), "hwm_mb_after": round(last["VmHWM"] / 1024, 1)}
    out["rss_growth_mb"] = round(out["rss_mb_after"] - out["rss_mb_after_warmup"], 1)
    print(f"bench_unbound: {count} reloads: RSS {out['rss_mb_after_warmup']} -> {out['rss_mb_after']} MB, "
          f"peak {out['hwm_mb_after_warmup']} -> {out['hwm_mb_after']} MB", file=sys.stderr)
    return out


def measure_instructions(warm: Path, queries: Path, count: int, modes: dict[str, tuple[str, str]],
                         env: dict[str, str], upstream: int, folder: Path) -> dict[str, Any]:
    """Instructions the resolver runs per query of the uncached mix, in every mode.

    Unbound runs under callgrind with instrumentation off while it starts, loads
    the lists and answers the `warm` names (as the timed runs' first seconds do);
    callgrind_control then switches it on for the `count` fresh names of `queries`,
    sent slowly enough for the emulated resolver to keep up, and dumps the count,
    divided by the queries Unbound says it received (unbound-control stats).
    The count does not move when other work shares the machine, so the module's
    own instructions (module minus no-op) are the figure to compare between
    commits. It is not the goal's figure: callgrind sees user space only, and the
    kernel's socket work, about two thirds of the resolver's CPU time in this mix, is
    not in it (the timed runs report that share as system_share).
    """
    resolver_cpu, other_cpus = cpu_split()
    figures: dict[str, Any] = {"queries": count, "rate_qps": CALLGRIND_QPS}
    for mode, (modules, python) in modes.items():
        work = folder / f"callgrind-{mode}"
        out = work / "callgrind.out"
        server = Server(work, "resolver", RESOLVER, env, resolver_cpu, start_timeout=300, modules=modules,
                        python=python, upstream=upstream,
                        wrapper=["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"])
        try:
            dnsperf(server.port, warm, 600, 1, other_cpus, CALLGRIND_QPS * 10, 10)
            received = _queries_received(server)
            _callgrind_control(server.proc.pid, "--instr=on")
            got = dnsperf(server.port, queries, count / CALLGRIND_QPS * 3 + 60, 1, other_cpus, CALLGRIND_QPS, 10)
            before = set(work.glob("callgrind.out*"))
            _callgrind_control(server.proc.pid, "--dump")
            dumps = sorted(set(work.glob("callgrind.out*")) - before)
            received = _queries_received(server) - received
        finally:
            server.stop()
        totals = [int(m[1]) for path in dumps
                  for m in re.finditer(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)]
        if not totals or not received:
            raise RuntimeError(f"callgrind gave no count for {mode} (dumps: {[p.name for p in dumps]})")
        # per query Unbound received (its own count): a query dnsperf gave up on was still worked on
        per_query = max(totals) / received
        figures[mode] = {"instructions_per_query": round(per_query), "received": received,
                         "completed": got["completed"], "lost": got["lost"]}
        print(f"bench_unbound: callgrind {mode}: {per_query:,.0f} instructions per query "
              f"({received:,} received, {got['completed']:,} answered, {got['lost']} lost)", file=sys.stderr)
    base, noop, module = (figures[mode]["instructions_per_query"] for mode in ("baseline", "noop_python", "module"))
    figures["bridge_per_query"] = noop - base   # Unbound's Python bridge, two calls a query
    figures["stage1_per_query"] = module - noop  # our code
    if "rpz" in figures:
        rpz = figures["rpz"]["instructions_per_query"]
        figures["rpz_per_query"] = rpz - base  # RPZ's own work
        # user-space instructions are inverse throughput: RPZ's total over the no-op's is the best
        # module/RPZ ratio any Python module can reach on this mix (the kernel's work aside)
        figures["best_vs_rpz"] = round(rpz / noop, 3)
        figures["module_vs_rpz"] = round(rpz / module, 3)
    return figures


def _agreement(modes: dict[str, tuple[str, str]], rows: list[tuple[str, str]], env: dict[str, str],
               upstream: int, folder: Path) -> dict[str, Any]:
    servers = {}
    try:
        for mode in ("module", "rpz"):
            modules, section = modes[mode]
            servers[mode] = Server(folder / f"agree-{mode}", "resolver", RESOLVER, env, None, modules=modules,
                                   python=section, upstream=upstream)
        out = check_agreement(servers, rows, AGREEMENT_SAMPLE)
    finally:
        for server in servers.values():
            server.stop()
    print(f"bench_unbound: module and RPZ agree on {out['answers']} answers {out['classes']}", file=sys.stderr)
    return out


def _queries_received(server: Server) -> int:
    stats = control(server, "stats_noreset")
    found = re.search(r"^total\.num\.queries=(\d+)", stats, re.M)
    if found is None:
        raise RuntimeError(f"unbound-control stats_noreset gave no query count: {stats[:200]}")
    return int(found[1])


def _callgrind_control(pid: int, *args: str) -> None:
    proc = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed: {(proc.stdout + proc.stderr)[-500:]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    missing = [p for p in ("unbound", "dnsperf") if not shutil.which(p) and not Path(f"/usr/sbin/{p}").exists()]
    if not Path(DEBIAN_DIST_PACKAGES, "unboundmodule.py").exists():
        missing.append("python3-unbound")
    if missing:
        return {"skipped": f"needs unbound, python3-unbound and dnsperf (missing: {', '.join(missing)})"}
    resolver_cpu, other_cpus = cpu_split()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
        "entries": args.entries, "seconds": args.seconds, "repeats": args.repeats, "listed": args.listed,
        "cpus": {"resolver": resolver_cpu, "dnsperf_and_internet": other_cpus}, "mixes": {},
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config, rows, releases = build_plugin(tmp, args.entries)
        (tmp / "noop.py").write_text(NOOP_SCRIPT)
        write_rpz(zone := tmp / "rpz.zone", rows)
        env = {"PYTHONPATH": python_path(), "BLOCKLIST_PLUGIN_CONFIG": str(config)}
        modes = {
            "baseline": ("iterator", ""),
            "noop_python": ("python iterator", f'python:\n  python-script: "{tmp / "noop.py"}"\n'),
            "module": ("python iterator", f'python:\n  python-script: "{MODULE}"\n'),
            "rpz": ("respip iterator", RPZ_SECTION.format(zone=RPZ_ZONE, path=zone)),
        }
        internet = Server(tmp / "internet", "internet", INTERNET, {}, other_cpus)
        try:
            result["agreement"] = _agreement(modes, rows, env, internet.port, tmp)
            for mix in args.mixes:
                queries = tmp / f"{mix}.txt"
                count = int(args.seconds * args.max_qps) if mix == "uncached" else args.queries
                write_queries(queries, mix, count, rows, args.listed)
                result["mixes"][mix] = measure_mix(mix, queries, args, modes, env, internet.port, tmp)
            if args.freshness:
                queries = tmp / "fresh-zipf.txt"
                write_queries(queries, "zipf", args.queries, rows, args.listed)
                result["freshness"] = measure_freshness(args, config, releases, zone, rows, queries, modes, env,
                                                        internet.port, tmp)
                releases[0].install(config)
                write_rpz(zone, rows)
            if args.reloads:
                result["reloads"] = measure_reloads(args.reloads, config, releases, modes, env, internet.port, tmp)
            if args.instructions:
                names = tmp / "callgrind-all.txt"
                write_queries(names, "uncached", CALLGRIND_WARM + args.instructions, rows, args.listed)
                lines = names.read_text().splitlines(keepends=True)
                (warm := tmp / "callgrind-warm.txt").write_text("".join(lines[:CALLGRIND_WARM]))
                (queries := tmp / "callgrind.txt").write_text("".join(lines[CALLGRIND_WARM:]))
                result["instructions"] = measure_instructions(warm, queries, args.instructions, modes, env,
                                                              internet.port, tmp)
        finally:
            internet.stop()
    result["summary"] = {
        f"Unbound capacity cost of stage 1, {mix} mix": {
            "figure": f"{f['module_cost']:.1%} ({f['module']['per_cpu_s']:,} vs {f['baseline']['per_cpu_s']:,} "
                      "q/CPU-s)",
            "goal": f"< {GOAL:.0%}", "met": f["module_cost"] < GOAL}
        for mix, f in result["mixes"].items()}
    for mix, f in result["mixes"].items():
        if "module_vs_rpz" in f:
            result["summary"][f"stage 1 vs Unbound's RPZ, {mix} mix (q/CPU-s)"] = {
                "figure": f"{f['module_vs_rpz']:.2f}x ({f['module']['per_cpu_s']:,} vs {f['rpz']['per_cpu_s']:,})",
                "goal": ">= 1.0x", "met": f["module_vs_rpz"] >= 1.0}
            result["summary"][f"Python bridge alone (no-op module) vs RPZ, {mix} mix: cost; best module/RPZ"] = {
                "figure": f"bridge {f['noop_python_cost']:.1%}, RPZ {f['rpz_cost']:.1%} of baseline; best possible "
                          f"{f['best_vs_rpz']:.2f}x ({f['noop_python']['per_cpu_s']:,} vs {f['rpz']['per_cpu_s']:,})",
                "goal": ">= 1.0x reachable", "met": f["best_vs_rpz"] >= 1.0}
    if "freshness" in result:
        m, r = result["freshness"]["module"], result["freshness"]["rpz"]
        result["summary"]["new version reaches a cached name (stage 1; zone reload)"] = {
            "figure": f"{m['latency_s']} s ({r['latency_s']} s)", "goal": "< 1 s",
            "met": m["latency_s"] is not None and m["latency_s"] < 1.0}
        cost = m["zipf_after_flush_cost"]
        result["summary"]["cost of the cache flush on a new version"] = {
            "figure": f"flush {m['flush_s']} s, {m['flushed_messages']} messages; zipf mix right after it "
                      f"{cost:.1%} below warm" if cost is not None else "not measured"}
    if "reloads" in result:
        f = result["reloads"]
        result["summary"][f"resolver RSS over {f['reloads']} reloads"] = {
            "figure": f"{f['rss_mb_after_warmup']} -> {f['rss_mb_after']} MB (peak {f['hwm_mb_after']} MB)",
            "goal": f"flat (< +{RELOAD_GROWTH_MB} MB)", "met": f["rss_growth_mb"] < RELOAD_GROWTH_MB}
    if "instructions" in result:
        f = result["instructions"]
        result["summary"]["Unbound user-space instructions per uncached query (callgrind)"] = {
            "figure": f"{f['baseline']['instructions_per_query']:,} + bridge {f['bridge_per_query']:,} "
                      f"+ stage 1 {f['stage1_per_query']:,}; RPZ {f.get('rpz_per_query', 0):,}"}
        if "best_vs_rpz" in f:
            result["summary"]["best module/RPZ through pythonmod, uncached (callgrind: RPZ / no-op module)"] = {
                "figure": f"{f['best_vs_rpz']:.2f}x ({f['rpz']['instructions_per_query']:,} vs "
                          f"{f['noop_python']['instructions_per_query']:,} instructions; stage 1 "
                          f"{f['module_vs_rpz']:.2f}x)",
                "goal": ">= 1.0x reachable", "met": f["best_vs_rpz"] >= 1.0}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k entries, 5 s runs, no repeat")
    parser.add_argument("--json", action="store_true", help="print one JSON document (for tools/bench.py)")
    parser.add_argument("--entries", type=int, default=None, help="list size (default 100000)")
    parser.add_argument("--seconds", type=float, default=None, help="per run (default 15)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per mode, best kept (default 2)")
    parser.add_argument("--listed", type=float, default=0.01, help="fraction of queries for listed hosts")
    parser.add_argument("--queries", type=int, default=None, help="names in the zipf mix's file (200000)")
    parser.add_argument("--mixes", type=lambda text: [m for m in text.split(",") if m], default=list(MIXES),
                        help=f"comma-separated, of {','.join(MIXES)} (default: all)")
    parser.add_argument("--max-qps", type=int, default=60_000, help="sizes the uncached file: seconds x this")
    parser.add_argument("--instructions", type=int, default=None,
                        help="uncached queries counted under callgrind, 0 for none (default 3000; --quick 0)")
    parser.add_argument("--reloads", type=int, default=None,
                        help="new versions the resolver's memory is followed over, 0 for none (default 100; "
                             "--quick 20)")
    parser.add_argument("--no-freshness", dest="freshness", action="store_false",
                        help="skip the freshness and cache-flush measurement")
    args = parser.parse_args()
    if args.reloads is None:
        args.reloads = 20 if args.quick else 100
    if args.instructions and not shutil.which("valgrind"):
        parser.error("--instructions needs valgrind (Debian package valgrind)")
    if args.instructions is None:
        args.instructions = 0 if args.quick else 3000
        if not shutil.which("valgrind"):
            print("bench_unbound: valgrind not installed; no instruction counts", file=sys.stderr)
            args.instructions = 0
    args.entries = args.entries or (10_000 if args.quick else 100_000)
    args.queries = args.queries or (100_000 if args.quick else 200_000)
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    args.repeats = args.repeats or (1 if args.quick else 2)
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return
    print(f"{result['entries']:,}-entry list, {result['seconds']:g} s runs, best of {result['repeats']}, "
          f"{result['listed']:.1%} listed queries")
    print("queries answered per CPU-second of the resolver (its capacity), and raw queries/s:")
    for mix, f in result["mixes"].items():
        b, n, m, r = f["baseline"], f["noop_python"], f["module"], f["rpz"]
        print(f"  {mix:9} baseline {b['per_cpu_s']:>8,} q/CPU-s {b['qps']:>8,.0f} q/s | "
              f"no-op python {n['per_cpu_s']:>8,} ({f['noop_python_cost']:.1%}) | "
              f"stage 1 {m['per_cpu_s']:>8,} ({f['module_cost']:.1%}, goal < {GOAL:.0%}) {m['qps']:>8,.0f} q/s "
              f"({f['module_qps_cost']:.1%}) | RPZ {r['per_cpu_s']:>8,} ({f['rpz_cost']:.1%}): "
              f"stage 1 / RPZ {f['module_vs_rpz']:.2f}x (goal >= 1.0x; best possible through pythonmod, "
              f"the no-op's: {f['best_vs_rpz']:.2f}x)")
    print(f"module and RPZ agree on {result['agreement']['answers']} answers: {result['agreement']['classes']}")
    for label, row in result["summary"].items():
        if "RPZ" not in label and "capacity" not in label:
            print(f"  {label}: {row['figure']}" + (f" (goal {row['goal']})" if "goal" in row else ""))
    if "instructions" in result:
        f = result["instructions"]
        print("user-space instructions the resolver runs per query it received, uncached mix (callgrind, "
              f"{f['queries']:,} queries at {f['rate_qps']} q/s; the kernel's work is not counted):")
        print(f"  baseline {f['baseline']['instructions_per_query']:,} | no-op python "
              f"{f['noop_python']['instructions_per_query']:,} (bridge {f['bridge_per_query']:,}) | stage 1 "
              f"{f['module']['instructions_per_query']:,} (our code {f['stage1_per_query']:,}) | RPZ "
              f"{f['rpz']['instructions_per_query']:,} (its own {f['rpz_per_query']:,}); module/RPZ "
              f"{f['module_vs_rpz']:.2f}x, best possible through pythonmod {f['best_vs_rpz']:.2f}x")


if __name__ == "__main__":
    main()
