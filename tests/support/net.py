"""Network helpers."""

from __future__ import annotations

import os
import socket


def _xdist_worker() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker ("gw0", "gw1", ...); (0, 1) in a run without workers."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return (int(name[2:]) if name.startswith("gw") else 0), max(count, 1)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (nothing listens on it).

    Each pytest-xdist worker only takes ports of its own residue (port % workers), so two workers never
    pick the same port between one's pick and its server's bind (which would point one's client at the
    other's server).
    """
    index, count = _xdist_worker()
    port = 0
    for _ in range(1000):  # the kernel picks at random: about `count` tries
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port % count == index:
            break
    return port
