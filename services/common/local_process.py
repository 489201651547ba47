"""A service started as a local child process, its address read from its start-up log line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_ADDRESS = re.compile(r"serving address=(\S+)")


class LocalProcess:
    """Runs ``python -m MODULE ARGS``, waits until it serves and copies its log to ``log_path``."""

    def __init__(
        self, module: str, args: Sequence[str], log_path: Path, start_timeout_s: float = 60.0
    ) -> None:
        self.module = module
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stderr=subprocess.PIPE,
            stdout=self._log,
            text=True,
        )
        assert self.process.stderr is not None
        self.address = self._read_address(self.process.stderr, start_timeout_s)
        # Keep draining stderr, or the child blocks once the pipe buffer fills.
        self._drain = threading.Thread(target=self._copy_log, args=(self.process.stderr,), daemon=True)
        self._drain.start()

    def _read_address(self, stream: IO[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        for line in stream:
            self._log.write(line)
            match = _ADDRESS.search(line)
            if match:
                return match.group(1)
            if time.monotonic() > deadline:
                break
        self.process.kill()
        self._log.close()
        raise RuntimeError(
            f"{self.module} did not start serving (exit code {self.process.poll()}); see its log"
        )

    def _copy_log(self, stream: IO[str]) -> None:
        for line in stream:
            self._log.write(line)
            self._log.flush()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain.join(timeout=5)
        self._log.close()
        return self.process.returncode
