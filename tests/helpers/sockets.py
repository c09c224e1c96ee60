"""Which sockets the tests' processes listen on, and the check that all of them are loopback
(a plain module, no fixtures).

- ``LOOPBACK`` (127.0.0.1) and ``free_port()``: where every helper binds its servers.
- ``listening_sockets(pids)`` / ``ss_listening_sockets(pids)`` / ``non_loopback(...)``: every
  listening TCP socket (and bound UDP socket) of a set of processes and their children, as
  ``Listener`` records.
- ``assert_all_loopback(procs, what)``: fail unless every listener (psutil, and ``ss`` when
  present) is on loopback; ``ListenerLog``: the same, sampled repeatedly while work runs.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Iterable

import psutil

# The loopback rule lives in one place: 127.0.0.0/8, ::1, IPv4-mapped ::ffff:127.x, zone ids
# stripped; wildcards (0.0.0.0, ::) are not loopback.
from orchestrator.pipeline.preflight import is_loopback

from .processes import process_tree

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    proto: str  # "tcp" or "udp"
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}[{self.pid}] {self.proto} {self.ip}:{self.port}"


def listening_sockets(pids: Iterable[int | psutil.Process]) -> list[Listener]:
    """Listening TCP and bound UDP sockets of ``pids`` and their descendants (via psutil)."""
    out = []
    for p in process_tree(pids):
        try:
            name = p.name()
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for c in conns:
            if c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN:
                continue
            if c.type == socket.SOCK_DGRAM and c.raddr:
                continue  # a connected UDP socket, not a listener
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            out.append(Listener(p.pid, name, proto, c.laddr.ip, c.laddr.port))
    return out


listening_ports_of = listening_sockets  # the name other notes use


def ss_listening_sockets(pids: Iterable[int | psutil.Process]) -> list[Listener]:
    """Same question answered by ``ss -ltunpH`` (an independent check of psutil's answer)."""
    wanted = {p.pid: p for p in process_tree(pids)}
    res = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True, timeout=30)
    out = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 6 or "users:" not in line:
            continue
        proto, local = parts[0], parts[4]
        ip, _, port = local.rpartition(":")
        ip = ip.strip("[]").split("%", 1)[0]
        if ip == "*":
            ip = "::"  # ss prints a dual-stack wildcard as '*'
        users = line[line.index("users:") :]
        for chunk in users.split("pid=")[1:]:
            pid = int(chunk.split(",", 1)[0])
            if pid in wanted:
                name = users.split('"')[1] if '"' in users else "?"
                out.append(Listener(pid, name, proto, ip, int(port)))
    return sorted(set(out), key=lambda l: (l.pid, l.port))


def non_loopback(listeners: Iterable[Listener]) -> list[Listener]:
    return [l for l in listeners if not is_loopback(l.ip)]


def assert_all_loopback(procs: Iterable[int | psutil.Process], what: str) -> list[Listener]:
    """Every listening socket of ``procs`` (and children) is on loopback, per psutil and per ss(8)."""
    procs = list(procs)
    listeners = listening_sockets(procs)
    assert listeners, f"{what}: found no listening sockets at all (the check would be vacuous)"
    bad = non_loopback(listeners)
    assert not bad, f"{what}: listening beyond loopback:\n" + "\n".join(map(str, bad))
    try:  # independent second opinion, when ss is installed
        ss = ss_listening_sockets(procs)
    except (FileNotFoundError, subprocess.SubprocessError):
        ss = []
    bad_ss = non_loopback(ss)
    assert not bad_ss, f"{what}: ss shows listeners beyond loopback:\n" + "\n".join(map(str, bad_ss))
    return listeners


@dataclass
class ListenerLog:
    """Listeners seen across repeated samples of a changing set of processes (workers come and go)."""

    seen: set[Listener] = field(default_factory=set)
    cmdlines: dict[int, str] = field(default_factory=dict)
    samples: int = 0

    def sample(self, procs: Iterable[int | psutil.Process]) -> None:
        """One system-wide socket scan (cheaper than one per process), kept for ``procs``' trees."""
        tree = {p.pid: p for p in process_tree(procs)}
        found = []
        for c in psutil.net_connections(kind="inet"):
            if c.pid not in tree or not c.laddr:
                continue
            if (c.type == socket.SOCK_STREAM and c.status != psutil.CONN_LISTEN) or \
                    (c.type == socket.SOCK_DGRAM and c.raddr):
                continue
            try:
                name = tree[c.pid].name()
            except psutil.Error:
                name = "?"
            found.append(Listener(c.pid, name, "tcp" if c.type == socket.SOCK_STREAM else "udp", c.laddr.ip, c.laddr.port))
        self.samples += 1
        for l in found:
            if l not in self.seen and not is_loopback(l.ip):
                with contextlib.suppress(psutil.Error):
                    self.cmdlines[l.pid] = " ".join(" ".join(psutil.Process(l.pid).cmdline()).split())[:300]
        self.seen.update(found)

    def bad(self) -> list[Listener]:
        return sorted(non_loopback(self.seen), key=lambda l: (l.pid, l.port))

    def describe(self, listeners: Iterable[Listener]) -> str:
        return "\n".join(f"{l}  ({self.cmdlines.get(l.pid, '?')})" for l in listeners)
