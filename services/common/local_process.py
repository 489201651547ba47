"""A service started as a local child process, its address read from its start-up log line."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ADDRESS_LINE = re.compile(r"serving address=(\S+)")
_PR_SET_PDEATHSIG = 1
# "<launcher pid>:<niceness>", for a child to apply itself (apply_child_settings).
_CHILD_VARIABLE = "APEXRL_LOCAL_CHILD"


def die_with_parent() -> None:
    """Asks the kernel to send this process SIGTERM when its parent dies (no orphans); Linux only."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def child_environment(niceness: int, parent: int | None = None) -> dict[str, str]:
    """This process's environment for a child of ``parent`` (this process by default) that lowers
    its priority by ``niceness``: what :func:`apply_child_settings` reads in the child."""
    return {**os.environ, _CHILD_VARIABLE: f"{parent or os.getpid()}:{niceness}"}


def apply_child_settings() -> None:
    """Called first by every ``python -m services`` process: a child of a launcher asks for SIGTERM
    when the launcher dies, and lowers its own priority.

    The child does this after exec, not in a ``preexec_fn`` between fork and exec: such a hook
    forces a real fork of the multithreaded launcher, and gRPC's fork handlers then abort the
    child now and then (exit -6, "epoll_wait error: Bad file descriptor").
    """
    setting = os.environ.pop(_CHILD_VARIABLE, None)
    if setting is None:
        return
    launcher, niceness = (int(part) for part in setting.split(":"))
    die_with_parent()
    if os.getppid() != launcher:  # the launcher died before the request above: no signal will come
        os._exit(1)
    if niceness:
        os.nice(niceness)


class LocalProcess:
    """Runs ``python -m services ARGS`` in its own session and copies its log to ``log_path``.

    A service logs ``serving address=HOST:PORT`` once it serves; :meth:`wait_for_address`
    waits for that line, so several children can start in parallel and be awaited after.
    The child gets its own session so a terminal's Ctrl-C reaches only the launcher,
    which then stops the children in order.
    """

    def __init__(self, args: Sequence[str], log_path: Path, niceness: int = 0) -> None:
        self.args = list(args)
        self.address = ""
        self._terminated = False
        self._serving = threading.Event()
        self._ended_at: float | None = None  # time.monotonic() when its output ended (it exited)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services", *args],
            stderr=subprocess.PIPE,
            stdout=self._log,
            text=True,
            start_new_session=True,
            env=child_environment(niceness),
        )
        assert self.process.stderr is not None
        # Keep draining stderr, or the child blocks once the pipe buffer fills.
        self._drain = threading.Thread(target=self._copy_log, args=(self.process.stderr,), daemon=True)
        self._drain.start()

    def _copy_log(self, stream: IO[str]) -> None:
        for line in stream:
            self._log.write(line)
            self._log.flush()
            if not self.address and (match := ADDRESS_LINE.search(line)):
                self.address = match.group(1)
                self._serving.set()
        self._ended_at = time.monotonic()
        self._serving.set()  # the stream ended: the process is gone

    def wait_for_address(self, timeout_s: float = 120.0) -> str:
        """The address the child serves on; RuntimeError if it exits or stays silent."""
        if not self._serving.wait(timeout_s) or not self.address:
            self.process.kill()
            code = self.process.wait()
            raise RuntimeError(f"`apexrl {self.args[0]}` did not start serving (exit code {code})")
        return self.address

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def exited_at(self) -> float | None:
        """When it exited (``time.monotonic()``: its output ended), or None while it runs."""
        if self.process.poll() is None:
            return None
        self._drain.join(timeout=1.0)  # its stream ends as it exits, unless something else holds it
        if self._ended_at is None:
            self._ended_at = time.monotonic()  # held: when it was seen gone
        return self._ended_at

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (tests)."""
        self.process.kill()

    def terminate(self) -> None:
        """Sends SIGTERM once: a second one could land after the child's handler is gone, mid-exit."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drain.join(timeout=5)
        self._log.close()
        return self.process.returncode
