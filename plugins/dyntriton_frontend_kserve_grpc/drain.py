"""This process's own sockets on a TCP port, from ``/proc``: stop listening, count connections (Linux).

Draining a gRPC frontend that shares its port (``SO_REUSEPORT``) needs two things grpc-python
does not offer without shutting the server down, which cancels calls (see ``server.py``): to
stop accepting while still serving, and to know when the clients are gone.

- :func:`stop_listening` calls ``shutdown(SHUT_RD)`` on the process's listening sockets for the
  port. The kernel takes them out of the port's ``SO_REUSEPORT`` group at once: new connections
  go to the other processes on the port (grpc core's acceptor sees ``EINVAL`` and stops; it
  logs one line at ``--log-verbose`` > 0). Connections already accepted are not touched; a
  connection still in this socket's accept queue at that instant is reset (unless
  ``net.ipv4.tcp_migrate_req`` = 1 hands it to another listener).
- :func:`connections` counts the process's sockets on the port that are not listening.
- :func:`others_listen` says whether another process (another socket) still listens on the port:
  if none does, clients have nowhere to go and waiting for them is pointless.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass

__all__ = ["Sockets", "connections", "others_listen", "stop_listening"]

_LISTEN = "0A"


@dataclass(frozen=True)
class Sockets:
    """TCP sockets on one local port: this process's listening fds and connections, others' listeners."""

    listening_fds: tuple[int, ...]
    connections: int
    others_listening: int


def _own_socket_fds() -> dict[int, int]:
    """Socket inode -> fd, for this process's open fds."""
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{name}")
                if target.startswith("socket:["):
                    found[int(target[8:-1])] = int(name)
    return found


def scan(port: int) -> Sockets:
    """This process's sockets on local TCP ``port`` (IPv4 and IPv6), and how many others listen on it."""
    own = _own_socket_fds()
    listening: list[int] = []
    connected = others = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or int(fields[1].rsplit(":", 1)[1], 16) != port:
                        continue
                    inode, listens = int(fields[9]), fields[3] == _LISTEN
                    fd = own.get(inode)
                    if fd is None:
                        others += listens
                    elif listens:
                        listening.append(fd)
                    else:
                        connected += 1
        except OSError:
            continue
    return Sockets(tuple(listening), connected, others)


def stop_listening(port: int) -> int:
    """``shutdown(SHUT_RD)`` this process's listening sockets on ``port``; returns how many were stopped."""
    stopped = 0
    for fd in scan(port).listening_fds:
        # A duplicate, so that closing the Python object leaves grpc core's fd alone.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RD)
            stopped += 1
    return stopped


def connections(port: int) -> int:
    """This process's TCP connections on local ``port`` (accepted by its listeners)."""
    return scan(port).connections


def others_listen(port: int) -> bool:
    """Whether a socket this process does not own listens on ``port`` (another frontend process)."""
    return scan(port).others_listening > 0
