"""A preloaded parent for ``apexrl run``'s processes: torch imported once, every role forked from it.

Each role is still its own process, but importing torch takes about 2 s of CPU here, and
``apexrl run`` starts six processes on what may be two cores. The zygote
(``python -m services.launcher.zygote``, started by the launcher) imports torch,
gymnasium and the services' modules once, checks the experiment (``prechecks``), then
forks each role on request. A forked child starts its own session, points its standard
streams at its log, takes its environment from the request, and runs the ``apexrl``
command line as a spawned child would, so it behaves the same: it lowers its own
priority and asks for SIGTERM when its parent (the zygote, which itself dies with the
launcher) goes away.

The zygote forks only while it has no thread of its own beyond what importing numpy
starts, and never has used gRPC: forking then is safe, as it is not in the launcher
(whose threads and channels are why the launcher itself never forks).

The protocol is JSON lines on the zygote's standard input and output, no pickle:

- from the zygote at start: ``{"ready": PID}``;
- ``{"op": "precheck", "config": {...}}`` -> ``{"precheck": null}`` or ``{"precheck": "why"}``;
- ``{"op": "fork", "args": [...], "log": PATH, "env": {...}}`` -> ``{"forked": PID}``
  or ``{"error": "why"}``;
- whenever a child exits: ``{"exited": PID, "code": CODE}``, ``-N`` for signal N, as
  ``subprocess`` reports it.

End of input ends the zygote.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from services.common.local_process import ADDRESS_LINE, child_environment

_MODULE = "services.launcher.zygote"
# How often the zygote reaps children between requests, and a forked child's log is read.
_POLL_S = 0.01


# The zygote's side ------------------------------------------------------------------


def _preload() -> None:
    """Everything a role imports at start that takes long: torch above all."""
    import gymnasium  # noqa: F401, PLC0415
    import setproctitle  # noqa: F401, PLC0415
    import torch  # noqa: PLC0415
    import torch._dynamo  # noqa: F401, PLC0415 (the optimizers' constructors import it, 1-2 s)

    import services.actor.actor  # noqa: PLC0415
    import services.actor.evaluator  # noqa: PLC0415
    import services.cli  # noqa: PLC0415
    import services.launcher.prechecks  # noqa: PLC0415
    import services.learner.learner  # noqa: PLC0415
    import services.replay.shard  # noqa: F401, PLC0415


# The zygote's replies, on a descriptor of their own: whatever a preloaded module prints to
# standard output goes to standard error instead, never into the protocol.
_replies: IO[str] | None = None


def _send(message: Mapping[str, Any]) -> None:
    assert _replies is not None, "serve() opens the replies"
    _replies.write(json.dumps(message) + "\n")
    _replies.flush()


def _precheck(config: Mapping[str, Any]) -> str | None:
    """Why the learner could not start on the experiment, checked in a child of its own.

    The check builds the networks: torch's thread pools stay out of the zygote. Once the
    experiment passes, the zygote imports its environment's module, for every child.
    """
    from services.algorithms.experiment import ExperimentConfig  # noqa: PLC0415

    experiment = ExperimentConfig.model_validate(config)
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(readable)
        if _replies is not None:
            os.close(_replies.fileno())
        problem = "the check itself failed"
        try:
            from services.launcher.prechecks import problem_with  # noqa: PLC0415

            problem = problem_with(experiment) or ""
        finally:
            os.write(writable, problem.encode())
            os._exit(0)
    os.close(writable)
    with os.fdopen(readable, "rb") as answer:
        problem = answer.read().decode()
    os.waitpid(pid, 0)
    if problem:
        return problem
    _import_environment(experiment.environment.id)
    return None


def _import_environment(environment_id: str) -> None:
    """Imports the module of the environment's entry point (ale_py's, say), not the environment.

    Only a head start for the children, so a failure is said on stderr, never fatal.
    """
    import importlib  # noqa: PLC0415

    import gymnasium  # noqa: PLC0415

    try:
        module, _, name = environment_id.rpartition(":")  # gymnasium's "module:Id-v0" form
        if module:
            importlib.import_module(module)
        entry_point = gymnasium.spec(name).entry_point
        if isinstance(entry_point, str):
            gymnasium.envs.registration.load_env_creator(entry_point)
    except Exception as error:
        print(f"zygote: {environment_id} not preloaded: {type(error).__name__}: {error}", file=sys.stderr)


def _run_child(args: Sequence[str], log: str, environment: Mapping[str, str]) -> None:
    """In the forked child: a session of its own, streams to the log, then the command line. Never returns."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(null)
        if _replies is not None:
            # The zygote's replies are not the child's: a child holding them open would
            # keep the launcher from seeing the zygote's end.
            os.close(_replies.fileno())
        os.close(output)
        # Named as ps shows a spawned one; before the environment changes, whose space it takes.
        from setproctitle import setproctitle  # noqa: PLC0415 (the train extra's; preloaded)

        setproctitle(" ".join([sys.executable, "-m", "services", *args]))
        os.environ.clear()
        os.environ.update(environment)
        sys.argv = ["apexrl", *args]
        from services.cli import main  # noqa: PLC0415 (preloaded)

        try:
            main(list(args))
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
    except BaseException:
        import traceback  # noqa: PLC0415

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def serve() -> None:
    """The zygote's loop: preload, then answer requests and report exits until input ends."""
    from services.common.local_process import apply_child_settings  # noqa: PLC0415

    apply_child_settings()  # SIGTERM when the launcher dies; its children then get theirs
    global _replies  # noqa: PLW0603 - the one protocol channel of this process
    _replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    _preload()
    _send({"ready": os.getpid()})
    requests = sys.stdin.buffer
    while True:
        readable, _, _ = select.select([requests], [], [], _POLL_S)
        _reap()
        if not readable:
            continue
        line = requests.readline()
        if not line:
            os._exit(0)  # no teardown of torch's modules: the launcher is waiting
        request = json.loads(line)
        if request["op"] == "precheck":
            _send({"precheck": _precheck(request["config"])})
        elif request["op"] == "fork":
            try:
                pid = os.fork()
            except OSError as error:
                _send({"error": f"fork failed: {error}"})
                continue
            if pid == 0:
                _run_child(request["args"], request["log"], request["env"])
            _send({"forked": pid})


# The launcher's side ----------------------------------------------------------------

_early: Zygote | None = None


def start_early() -> None:
    """Starts this process's zygote now (Linux), for :func:`take_early` to hand to the launcher."""
    global _early  # noqa: PLW0603 - one zygote per process, started before the launcher exists
    if _early is None and sys.platform.startswith("linux"):
        _early = Zygote()


def take_early() -> Zygote | None:
    """The zygote :func:`start_early` started, if any; the caller owns it from then on."""
    global _early
    zygote, _early = _early, None
    return zygote


class ZygoteError(RuntimeError):
    """The zygote is gone or did not answer; the launcher starts processes the usual way instead."""


class Zygote:
    """The launcher's handle on its zygote: prechecks and forks, one request at a time, from any thread."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", _MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=child_environment(0),
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._lock = threading.Lock()
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._exited: dict[int, int] = {}
        self._exited_at: dict[int, float] = {}  # time.monotonic() when the exit was reported
        self._exits = threading.Condition()
        self._alive = True
        self.errors: list[str] = []  # the zygote's own stderr, for a failure's message
        threading.Thread(target=self._read, args=(self._process.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self._process.stderr,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                self.errors = [*self.errors[-20:], f"not a reply: {line!r}"]
                continue
            if "ready" in message:
                continue  # requests sent meanwhile wait in the pipe until the imports are done
            if "exited" in message:
                with self._exits:
                    self._exited[int(message["exited"])] = int(message["code"])
                    self._exited_at[int(message["exited"])] = time.monotonic()
                    self._exits.notify_all()
            else:
                self._replies.put(message)
        with self._exits:
            self._alive = False
            self._exits.notify_all()
        self._replies.put(None)

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.errors = [*self.errors[-20:], line.decode(errors="replace").rstrip()]

    def _request(self, request: Mapping[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            if not self.alive:
                raise ZygoteError("the zygote has exited")
            assert self._process.stdin is not None
            try:
                self._process.stdin.write((json.dumps(request) + "\n").encode())
                self._process.stdin.flush()
            except OSError as error:
                raise ZygoteError(f"the zygote has exited: {error}") from None
            try:
                reply = self._replies.get(timeout=timeout_s)
            except queue.Empty:
                raise ZygoteError(f"the zygote did not answer within {timeout_s} s") from None
            if reply is None:
                raise ZygoteError("the zygote has exited: " + " / ".join(self.errors[-3:]))
            return reply

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        with self._exits:
            return self._alive

    def precheck(self, config: Mapping[str, Any]) -> str | None:
        """Why the learner could not start on this experiment (``prechecks``), or None."""
        reply = self._request({"op": "precheck", "config": config}, timeout_s=120.0)
        problem: str | None = reply["precheck"]
        return problem

    def fork(self, args: Sequence[str], log_path: Path, niceness: int = 0) -> ForkedProcess:
        """Starts ``apexrl ARGS`` as a child of the zygote, writing to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        offset = log_path.stat().st_size  # where this process's output will begin
        environment = child_environment(niceness, parent=self.pid)
        reply = self._request(
            {"op": "fork", "args": list(args), "log": str(log_path), "env": environment}, 30.0
        )
        if "forked" not in reply:
            raise ZygoteError(str(reply.get("error")))
        return ForkedProcess(self, int(reply["forked"]), list(args), log_path, offset)

    def exit_code(self, pid: int) -> int | None:
        with self._exits:
            return self._exited.get(pid)

    def exited_at(self, pid: int) -> float | None:
        """When the child's exit was reported (``time.monotonic()``, within 10 ms of it)."""
        with self._exits:
            return self._exited_at.get(pid)

    def wait_exit(self, pid: int, timeout_s: float) -> int | None:
        """The child's exit code once it exited within ``timeout_s``; None if still running."""
        deadline = time.monotonic() + timeout_s
        with self._exits:
            while pid not in self._exited and self._alive:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._exits.wait(left)
            # A zygote gone takes its children with it (they get SIGTERM): count them as stopped so.
            return self._exited.get(pid, -signal.SIGTERM)

    def close(self, timeout_s: float = 5.0) -> None:
        """Ends the zygote (its children, if any are left, get SIGTERM)."""
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class ForkedProcess:
    """One role forked by the zygote: the interface of :class:`LocalProcess`."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str], log_path: Path, offset: int) -> None:
        self.args = args
        self.pid = pid
        self.address = ""
        self._zygote = zygote
        self._log_path = log_path
        self._offset = offset
        self._terminated = False
        self._lost_at: float | None = None

    def wait_for_address(self, timeout_s: float = 120.0) -> str:
        """The address the child serves on, read from its log; RuntimeError if it exits or stays silent."""
        deadline = time.monotonic() + timeout_s
        with open(self._log_path, "rb") as log:
            log.seek(self._offset)
            text = ""
            while time.monotonic() < deadline:
                text += log.read().decode(errors="replace")
                if match := ADDRESS_LINE.search(text):
                    self.address = match.group(1)
                    return self.address
                if self.exit_code() is not None:
                    text += log.read().decode(errors="replace")
                    break
                time.sleep(_POLL_S)
        if match := ADDRESS_LINE.search(text):
            self.address = match.group(1)
            return self.address
        self.kill()
        code = self._zygote.wait_exit(self.pid, 30.0)
        raise RuntimeError(f"`apexrl {self.args[0]}` did not start serving (exit code {code})")

    def exit_code(self) -> int | None:
        if not self._zygote.alive:
            return self._zygote.wait_exit(self.pid, 0.0)
        return self._zygote.exit_code(self.pid)

    def exited_at(self) -> float | None:
        """When it exited (``time.monotonic()``), or None while it runs."""
        if self.exit_code() is None:
            return None
        at = self._zygote.exited_at(self.pid)
        if at is None:  # gone with the zygote, unreported: seen now
            at = self._lost_at = self._lost_at or time.monotonic()
        return at

    def _signal(self, number: signal.Signals) -> None:
        if self.exit_code() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def terminate(self) -> None:
        """Sends SIGTERM once: a second one could land after the child's handler is gone, mid-exit."""
        if not self._terminated:
            self._terminated = True
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
        self.terminate()
        code = self._zygote.wait_exit(self.pid, timeout_s)
        if code is None:
            self.kill()
            code = self._zygote.wait_exit(self.pid, 30.0)
        return code if code is not None else -signal.SIGKILL


if __name__ == "__main__":
    serve()
