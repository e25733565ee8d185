"""Free TCP ports for the services a test starts."""

from __future__ import annotations

import random
import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+) and above Ray's worker ports (10002-19999): a port
    the kernel hands out (bind to 0) may be taken by any outgoing connection or Ray gRPC server before the
    service that is to listen there starts."""
    for _ in range(200):
        port = random.randint(20000, 32767)
        if port in _HANDED_OUT:  # to another service of this session, which may not listen yet
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port between 20000 and 32767")
