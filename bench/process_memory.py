"""Resident memory of a process tree from /proc (Linux): who the processes are and how much each holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_FEED_MODULE = "services.learner.feed_process"


def memory_field(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM``-style line of /proc/PID/status, in bytes; OSError once the process is gone."""
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"unexpected unit {unit!r} in {line!r}")
            return int(value) * 1024
    raise ValueError(f"no {field} in /proc/{pid}/status")


def resident_bytes(pid: int) -> int:
    """VmRSS: the process's resident memory now."""
    return memory_field(pid, "VmRSS")


def _parent(pid: int) -> int | None:
    """The parent's pid from /proc/PID/stat, or None if the process is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, theirs, ...), in pid order."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        below = children.get(pending.pop(), [])
        found.extend(below)
        pending.extend(below)
    return sorted(found)


def _command_line(pid: int) -> list[str]:
    return (_PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


@dataclass(frozen=True)
class ProcessRole:
    pid: int
    role: str


def role_of(pid: int) -> ProcessRole | None:
    """What the process is in an ``apexrl run``; None if it is gone.

    The launcher starts each role with its stdout on ``logs/ROLE.log`` (replay-0,
    learner, evaluator, actor-3, ...), which names it even where command lines are
    identical (every actor's); the learner's feed process is known by its module.
    """
    try:
        command = _command_line(pid)
        if _FEED_MODULE in command:
            return ProcessRole(pid, "feed")
        stdout = Path(os.readlink(_PROC / str(pid) / "fd" / "1"))
    except OSError:
        return None
    if stdout.suffix == ".log" and stdout.parent.name == "logs":
        return ProcessRole(pid, stdout.stem)
    name = " ".join(command[1:4]) if len(command) > 1 else (command[0] if command else str(pid))
    return ProcessRole(pid, f"other:{name}")
