"""Free local ports chosen before the services start, so every role can start at once."""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20_000


def _ephemeral_low() -> int:
    """The first port the kernel hands out for bind(0) and outgoing connections (Linux default 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free now, drawn below the kernel's ephemeral range.

    Below that range neither bind(0) nor outgoing connections take a port, so a
    port found free here stays free until the service binds it, short of another
    program choosing the same number explicitly.
    """
    high = _ephemeral_low()
    if high - _LOWEST < 10 * count:
        raise RuntimeError(f"too few ports below the ephemeral range (starts at {high}) to choose from")
    chooser = random.SystemRandom()
    ports: list[int] = []
    for candidate in chooser.sample(range(_LOWEST, high), k=min(high - _LOWEST, 50 * count)):
        if _is_free(host, candidate):
            ports.append(candidate)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"found only {len(ports)} of {count} free ports on {host}")
