"""Graceful stop: SIGTERM and SIGINT set an event the main thread waits on."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import NoReturn

logger = logging.getLogger(__name__)


def install_stop_handlers() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def wait_until_stopped(stop: threading.Event) -> None:
    """Blocks the main thread until ``stop`` is set (by the handlers above).

    The wait wakes every half second: a signal the kernel delivers to another
    (busy) thread only sets a flag, and CPython runs the handler when the main
    thread next executes bytecode, which a wait without timeout would never do.
    """
    while not stop.wait(0.5):
        pass


def exit_without_teardown(code: int = 0) -> NoReturn:
    """Ends a service process whose work is done and whose resources are closed, with ``code``.

    The interpreter's own teardown is skipped: there, the native threads of torch and
    gRPC can stall garbage collection and keep a stopped process (or container) from
    exiting. Logs and standard streams are flushed first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
