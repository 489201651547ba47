"""Supervised child processes: restarted when they die, on the same port, up to a limit."""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

from services.common.local_process import LocalProcess
from services.launcher.log_errors import error_lines, read_log
from services.launcher.zygote import ForkedProcess, Zygote, ZygoteError

logger = logging.getLogger(__name__)


class RunFailedError(RuntimeError):
    """A part of the run cannot be kept alive; the message says which, and where its log is.

    ``reason`` holds the part's own words for why it stopped, read from its log; the
    message shows them on indented lines after its first.
    """

    def __init__(self, message: str, reason: Sequence[str] = ()) -> None:
        self.reason = tuple(reason)
        super().__init__("\n".join([message, *(f"  {line}" for line in self.reason)]))


class Child:
    """One role's process. ``args(port)`` builds its command line; port 0 means any free port.

    With a ``zygote`` the process is forked from it, torch already imported (see
    ``zygote.py``); without one, or once it is gone, it is started as ``python -m services``.
    """

    def __init__(
        self,
        name: str,
        args: Callable[[int], list[str]],
        log_path: Path,
        serves: bool,
        max_restarts: int = 3,
        niceness: int = 0,
        zygote: Zygote | None = None,
    ) -> None:
        self.name = name
        self._zygote = zygote
        self._args = args
        self.log_path = log_path
        self._serves = serves
        self._max_restarts = max_restarts
        self._niceness = niceness
        self.restarts = 0
        self.port = 0
        self.process: LocalProcess | ForkedProcess | None = None
        self._log_start = 0  # where the current process's output begins in the (shared) log

    @property
    def address(self) -> str:
        """Where a serving child listens: known before it starts when its port was chosen for it."""
        if self.port:
            return f"127.0.0.1:{self.port}"
        return self.process.address if self.process is not None else ""

    def launch(self) -> Child:
        """Starts the process without waiting for it to serve."""
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = self._args(self.port)
        if self._zygote is not None and self._zygote.alive:
            try:
                self.process = self._zygote.fork(args, self.log_path, self._niceness)
                return self
            except ZygoteError as error:
                logger.warning("zygote unavailable, spawning child=%s error=%s", self.name, error)
        self.process = LocalProcess(args, self.log_path, self._niceness)
        return self

    def ready(self) -> Child:
        """Waits until a serving child logs its address (a restart keeps the same port)."""
        if self._serves and self.process is not None:
            try:
                address = self.process.wait_for_address()
            except RuntimeError as error:
                self.process.stop()  # gone already; this waits until all its output is in the log
                raise RunFailedError(
                    f"{self.name} failed to start: {error}; see {self.log_path}", self.reason()
                ) from None
            self.port = int(address.rsplit(":", 1)[1])
        return self

    def start(self) -> Child:
        return self.launch().ready()

    def check(self) -> None:
        """Restarts the process if it exited; RunFailedError once it has died too often."""
        if self.process is None:
            return
        code = self.process.exit_code()
        if code is None:
            return
        self.process.stop()
        reason = self.reason(code)
        if self.restarts >= self._max_restarts:
            raise RunFailedError(
                f"{self.name} exited with code {code} after {self.restarts} restarts; see {self.log_path}",
                reason,
            )
        self.restarts += 1
        logger.warning(
            "restarting child=%s exit_code=%s restart=%d reason=%r",
            self.name,
            code,
            self.restarts,
            " / ".join(reason),
        )
        self.start()

    def exited_at(self) -> float:
        """When its process exited (``time.monotonic()``); infinity while it runs or before it starts."""
        at = self.process.exited_at() if self.process is not None else None
        return math.inf if at is None else at

    def reason(self, exit_code: int | None = None) -> list[str]:
        """Why the last process stopped, in its own words from the log (and the signal that killed it)."""
        reason = error_lines(read_log(self.log_path, self._log_start))
        if exit_code is not None and exit_code < 0:
            try:
                reason.append(f"killed by {signal.Signals(-exit_code).name}")
            except ValueError:
                reason.append(f"killed by signal {-exit_code}")
        return reason

    def stop(self, timeout_s: float = 60.0) -> int | None:
        if self.process is None:
            return None
        code = self.process.stop(timeout_s)
        self.process = None
        return code

    def terminate(self) -> None:
        if self.process is not None:
            self.process.terminate()


def check_children(children: Sequence[Child]) -> None:
    """:meth:`Child.check` for each, the first to have exited first.

    When one part's death brings down another before the launcher looks (a learner group's
    rank killed, the other failing at its next collective), the run names the cause.
    """
    for child in sorted(children, key=Child.exited_at):
        child.check()
