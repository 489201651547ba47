"""Start-up and stop of ``apexrl run``: launch to the learner's first update, and Ctrl-C to exit.

Usage: ``.venv/bin/python bench/startup.py [--preset cartpole] [--repeats 5]``.

Each attempt launches ``python -m services run PRESET`` (the real launcher, 2 actors and
2 shards, as ``apexrl run`` starts them) in a fresh run folder and polls the learner's
``GetStatus`` every 10 ms from the moment its address is in its log, until it reports an
update. Then it sends the launcher SIGINT, as Ctrl-C does, and times it to exit. Along
the way it reads, from each part's log, when it first said it was ready (``serving``,
``actor running``, ``evaluator running``), relative to the launch: where the seconds go.

The reference, measured before each attempt, is the time a bare
``python -c "import torch, torch._dynamo"`` takes here: the floor of any process that
builds a torch optimizer (the optimizers' constructors import ``torch._dynamo``), as the
learner must before its first update. Figures are medians over the attempts (each
attempt to stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
# The first line of each part that says it is ready, by log file.
_READY = {
    "replay-0": "serving address=",
    "replay-1": "serving address=",
    "learner": "serving address=",
    "actor-0": "actor running",
    "actor-1": "actor running",
    "evaluator": "evaluator running",
}


_MEASURES = {"first_update_s": "launch_to_first_update_s", "stop_s": "sigint_to_exit_s"}


def bare_torch_import_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torch._dynamo"], check=True)
    return time.perf_counter() - started


def _first_update(log: Path, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> float:
    """The epoch time of the learner's ``first update`` line (its log has milliseconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stamp := _stamp_of(log, "first update"):
            return stamp
        if process.poll() is not None:
            raise RuntimeError(f"apexrl run exited with code {process.returncode} before an update")
        time.sleep(0.01)
    raise TimeoutError(f"no update within {timeout_s} s")


def _stamp_of(log: Path, marker: str) -> float | None:
    """When ``log`` first said ``marker``, as epoch seconds; None if it has not (yet)."""
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if marker in line and (match := _TIMESTAMP.match(line)):
            return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def _ready_times(logs: Path, launched_at: float) -> dict[str, float]:
    """Seconds from launch to each part's first ready line."""
    ready = {}
    for part, marker in _READY.items():
        if (stamp := _stamp_of(logs / f"{part}.log", marker)) is not None:
            ready[part] = round(stamp - launched_at, 3)
    return ready


def attempt(preset: str, root: Path, index: int) -> dict[str, object]:
    run_dir = root / f"run-{index}"
    launched_at = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "services", "run", preset, "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first_update_s = _first_update(run_dir / "logs" / "learner.log", process) - launched_at
        time.sleep(1.0)  # the run settles into training before it is stopped
        stopping = time.perf_counter()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        stop_s = time.perf_counter() - stopping
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return {
        "first_update_s": first_update_s,
        "stop_s": stop_s,
        "ready_s": _ready_times(run_dir / "logs", launched_at),
    }


def _line(measure: str, values: list[float], reference: float) -> dict[str, object]:
    value = statistics.median(values)
    return {
        "bench": "startup",
        "workload": "cartpole",
        "measure": measure,
        "value": round(value, 3),
        "unit": "s",
        "reference": "bare_import_of_torch_and_dynamo",
        "reference_value": round(reference, 3),
        "ratio": round(value / reference, 3),
        "better": "lower",
        "runs": [round(v, 3) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cartpole")
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    imports, results = [], []
    for index in range(arguments.repeats):
        imports.append(bare_torch_import_s())
        results.append(attempt(arguments.preset, root, index))
        print(json.dumps({"attempt": index, **results[-1]}), file=sys.stderr)
    reference = statistics.median(imports)
    print(f"bare import of torch and torch._dynamo: {[round(v, 2) for v in imports]} s", file=sys.stderr)
    for measure in ("first_update_s", "stop_s"):
        values = [float(result[measure]) for result in results]  # type: ignore[arg-type]
        line = _line(_MEASURES[measure], values, reference)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
