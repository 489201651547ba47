"""Soak: the local system (``apexrl run``) for a given time, with every process's memory over time.

Usage: ``.venv/bin/python bench/soak.py --seconds 300 [--preset cartpole] [--set section.key=value ...]``.
It starts the real launcher (``python -m services run``) on a fresh run folder, reads the
resident memory (VmRSS) of the launcher and of every process below it every
``--interval`` seconds, asks the learner how full the replay is, and after ``--seconds``
stops the run with SIGINT, as Ctrl-C does. The replay is kept small
(``algorithm.replay_capacity=20000`` unless overridden) so that it fills within the
first minute, and the run is kept from ending early (no solved return, a wall-time
budget beyond the soak).

It prints one JSON line per process role (replay-0, replay-1, learner, feed, evaluator,
actor-N, launcher): the memory when the replay became full and at the end, the growth
between them, and the slope of a least-squares line through every sample from
``--settle`` seconds (30) after the replay was full to the end, in MB/min. A role is
``bounded`` when that slope is at most ``--tolerance-mb-per-min`` (1 by default): a
leak of 1 MB/min is 1.4 GB a day, which would take a CartPole-sized process (60-370 MB)
to several times its size within hours, while a process that is done growing wanders
by well under 1 MB over minutes (allocator arenas, interpreter caches). A line through
all the samples is less sensitive to one noisy sample than the end minus the start;
the settle window keeps the last step of filling (the shards' last rows, their server
threads' first allocations) out of the fit, where a short run would read it as a slope.
No verdict (``bounded`` null) with fewer than 10 fitted samples or 60 fitted seconds, or
for a role whose process restarted after full. A last line sums it up and names the plot
(``memory.png``, RSS over time per process) and the samples (``memory.csv``) in the run
folder. Exit code 0 when every role is bounded; 1 when one grows, the run ended early or
the replay never filled; 2 when some role got no verdict (a run too short for the fit).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np

from apexrl.learner.v1 import learner_pb2, learner_pb2_grpc
from bench.process_memory import descendants, resident_bytes, role_of
from services.common.channels import create_channel

_REPOSITORY = Path(__file__).resolve().parent.parent
_LEARNER_ADDRESS = re.compile(r"learner serving address=(\S+)")
MB = 1 << 20
# Fewer fitted samples or seconds than this and no verdict is given.
MIN_FIT_SAMPLES = 10
MIN_FIT_S = 60.0


@dataclass
class Series:
    """One role's samples: seconds since the start, the process's pid then and its resident bytes."""

    seconds: list[float] = field(default_factory=list)
    pid: list[int] = field(default_factory=list)
    resident: list[int] = field(default_factory=list)

    def add(self, at: float, pid: int, resident: int) -> None:
        self.seconds.append(at)
        self.pid.append(pid)
        self.resident.append(resident)


@dataclass
class Soak:
    """What was seen: memory per role, the replay's fill, and how the launcher ended."""

    run_dir: Path
    series: dict[str, Series] = field(default_factory=dict)
    full_at_s: float | None = None
    replay_capacity: int = 0
    replay_size: list[tuple[float, int]] = field(default_factory=list)
    launcher_exit_code: int | None = None
    ended_early: bool = False

    def record(self, at: float, role: str, pid: int, resident: int) -> None:
        self.series.setdefault(role, Series()).add(at, pid, resident)


def experiment_overrides(seconds: float, overrides: Sequence[str]) -> list[str]:
    """A small replay, no solved stop and a budget beyond the soak; the caller's --set values win."""
    return [
        "algorithm.replay_capacity=20000",
        "general.solved_return=null",
        f"general.max_wall_time_s={seconds + 600:g}",
        *overrides,
    ]


def learner_address(run_dir: Path) -> str | None:
    """The address the (latest) learner logged, or None before it serves."""
    try:
        text = (run_dir / "logs" / "learner.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = _LEARNER_ADDRESS.findall(text)
    return found[-1] if found else None


class LearnerStatus:
    """GetStatus of the run's learner, found through its log; None while it does not answer."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._address: str | None = None
        self._channel: grpc.Channel | None = None
        self._stub: learner_pb2_grpc.LearnerServiceStub | None = None

    def get(self) -> learner_pb2.GetStatusResponse | None:
        address = learner_address(self._run_dir)
        if address is None:
            return None
        if address != self._address or self._stub is None:
            self.close()
            self._address = address
            self._channel = create_channel(address, default_timeout_s=2.0)
            self._stub = learner_pb2_grpc.LearnerServiceStub(self._channel)
        try:
            status: learner_pb2.GetStatusResponse = self._stub.GetStatus(
                learner_pb2.GetStatusRequest(), timeout=2.0
            )
        except grpc.RpcError:
            return None
        return status

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel, self._stub = None, None


def sample_memory(soak: Soak, launcher: int, at: float) -> None:
    """The resident memory of the launcher and of every process below it, now."""
    for pid in [launcher, *descendants(launcher)]:
        role = "launcher" if pid == launcher else None
        if role is None:
            found = role_of(pid)
            if found is None:
                continue
            role = found.role
        try:
            soak.record(at, role, pid, resident_bytes(pid))
        except (OSError, ValueError):
            continue  # it exited between the listing and the read


def stop_launcher(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGINT (Ctrl-C: the launcher stops every role in order), then SIGTERM, then SIGKILL."""
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        process.send_signal(stop)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"soak: the launcher outlived {stop.name} by {timeout_s:g} s", file=sys.stderr)
    return process.wait()


def observe(soak: Soak, process: subprocess.Popen[bytes], seconds: float, interval_s: float) -> None:
    """Samples memory and the replay's fill until ``seconds`` have passed or the launcher exits."""
    status = LearnerStatus(soak.run_dir)
    started = time.monotonic()
    try:
        while (at := time.monotonic() - started) < seconds:
            if process.poll() is not None:
                soak.ended_early = True
                return
            sample_memory(soak, process.pid, at)
            reply = status.get()
            if reply is not None and reply.replay_capacity > 0:
                soak.replay_capacity = reply.replay_capacity
                soak.replay_size.append((at, reply.replay_size))
                if soak.full_at_s is None and reply.replay_size >= reply.replay_capacity:
                    soak.full_at_s = at
                    print(f"soak: replay full at {at:.0f} s ({reply.replay_size} items)", file=sys.stderr)
            time.sleep(max(0.0, interval_s - (time.monotonic() - started - at)))
    finally:
        status.close()


def summarize(
    role: str, series: Series, full_at_s: float | None, settle_s: float, tolerance: float
) -> dict[str, object]:
    """One role's line: memory at full and at the end, growth after full, the fitted slope, the verdict.

    The line is fitted from ``settle_s`` after the replay filled: the last rows' pages and
    the server threads' allocations settle within seconds of it, a step a short fit would
    read as a slope.
    """
    seconds = np.asarray(series.seconds)
    resident_mb = np.asarray(series.resident, dtype=np.float64) / MB
    pids = np.asarray(series.pid)
    line: dict[str, object] = {
        "bench": "soak",
        "process": role,
        "pids": list(dict.fromkeys(series.pid)),
        "samples": len(seconds),
        "rss_start_mb": round(float(resident_mb[0]), 1),
        "rss_peak_mb": round(float(resident_mb.max()), 1),
        "rss_end_mb": round(float(resident_mb[-1]), 1),
        "rss_at_full_mb": None,
        "growth_after_full_mb": None,
        "growth_after_full_mb_per_min": None,
        "slope_after_full_mb_per_min": None,
        "fit_from_s": None,
        "fit_samples": 0,
        "fit_s": 0.0,
        "tolerance_mb_per_min": tolerance,
        "bounded": None,
    }
    after = seconds >= full_at_s if full_at_s is not None else np.zeros(len(seconds), dtype=bool)
    if after.sum() < 2:
        return line
    span_s = float(seconds[after][-1] - seconds[after][0])
    at_full, end = float(resident_mb[after][0]), float(resident_mb[after][-1])
    line.update(
        rss_at_full_mb=round(at_full, 1),
        growth_after_full_mb=round(end - at_full, 1),
        growth_after_full_mb_per_min=round((end - at_full) / (span_s / 60.0), 3) if span_s else None,
    )
    fit = seconds >= float(seconds[after][0]) + settle_s
    if fit.sum() < 2:
        return line
    fit_s = float(seconds[fit][-1] - seconds[fit][0])
    slope = float(np.polyfit(seconds[fit] / 60.0, resident_mb[fit], 1)[0])
    line.update(
        slope_after_full_mb_per_min=round(slope, 3),
        fit_from_s=round(float(seconds[fit][0]), 1),
        fit_samples=int(fit.sum()),
        fit_s=round(fit_s, 1),
    )
    # A process restarted after full is a new process: its samples are not one line.
    one_process = len(set(pids[after].tolist())) == 1
    if fit.sum() >= MIN_FIT_SAMPLES and fit_s >= MIN_FIT_S and one_process:
        line["bounded"] = slope <= tolerance
    return line


def write_samples(soak: Soak, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["process", "pid", "seconds", "rss_mb"])
        for role, series in sorted(soak.series.items()):
            for at, pid, resident in zip(series.seconds, series.pid, series.resident, strict=True):
                writer.writerow([role, pid, f"{at:.2f}", f"{resident / MB:.2f}"])


def plot(soak: Soak, path: Path, title: str) -> None:
    """RSS over time, one line per process, the moment the replay filled marked."""
    import matplotlib  # noqa: PLC0415 - the plot is the last step; the soak itself needs no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(10, 6))
    for role, series in sorted(soak.series.items()):
        axes.plot(series.seconds, np.asarray(series.resident) / MB, label=role, linewidth=1.2)
    if soak.full_at_s is not None:
        axes.axvline(soak.full_at_s, color="grey", linestyle="--", label="replay full")
    axes.set_xlabel("seconds since launch")
    axes.set_ylabel("resident memory (VmRSS), MB")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def launch(arguments: argparse.Namespace, run_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "services", "run", arguments.preset, "--run-dir", str(run_dir)]
    command += ["--actors", str(arguments.actors), "--shards", str(arguments.shards)]
    for override in experiment_overrides(arguments.seconds, arguments.set):
        command += ["--set", override]
    print(f"soak: {' '.join(command)}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    output = open(run_dir / "soak-launcher-output.log", "wb")  # noqa: SIM115 - the child holds it
    try:
        # Its own session: a Ctrl-C on the soak reaches the launcher only as the soak's SIGINT.
        return subprocess.Popen(
            command,
            cwd=_REPOSITORY,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "1000"},
        )
    finally:
        output.close()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the run goes (300)")
    parser.add_argument("--preset", default="cartpole", help="experiment preset or YAML file (cartpole)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a config override"
    )
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples (2)")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds after full left out of the fit (30)"
    )
    parser.add_argument("--tolerance-mb-per-min", type=float, default=1.0, help="largest bounded slope (1)")
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (runs/soak-DATE-TIME)")
    parser.add_argument("--stop-timeout", type=float, default=120.0, help="seconds per stop signal (120)")
    arguments = parser.parse_args(argv)
    if arguments.seconds <= 0 or arguments.interval <= 0:
        parser.error("--seconds and --interval must be positive")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse(argv)
    run_dir: Path = arguments.run_dir or _REPOSITORY / "runs" / f"soak-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and any(run_dir.iterdir()):
        print(f"soak: {run_dir} is not empty; a soak needs a fresh run folder", file=sys.stderr)
        return 2
    soak = Soak(run_dir)
    process = launch(arguments, run_dir)
    try:
        observe(soak, process, arguments.seconds, arguments.interval)
    except KeyboardInterrupt:
        print("soak: interrupted; stopping the run", file=sys.stderr)
    finally:
        soak.launcher_exit_code = stop_launcher(process, arguments.stop_timeout)
    return report(soak, arguments)


def report(soak: Soak, arguments: argparse.Namespace) -> int:
    lines = [
        summarize(role, series, soak.full_at_s, arguments.settle, arguments.tolerance_mb_per_min)
        for role, series in sorted(soak.series.items())
    ]
    for line in lines:
        print(json.dumps(line), flush=True)
    picture, samples = soak.run_dir / "memory.png", soak.run_dir / "memory.csv"
    write_samples(soak, samples)
    if soak.series:
        plot(soak, picture, f"apexrl run {arguments.preset}: resident memory per process")
    growing = [str(line["process"]) for line in lines if line["bounded"] is False]
    unjudged = [str(line["process"]) for line in lines if line["bounded"] is None]
    print(
        json.dumps(
            {
                "bench": "soak",
                "measure": "summary",
                "preset": arguments.preset,
                "seconds": arguments.seconds,
                "replay_capacity": soak.replay_capacity,
                "replay_full_at_s": None if soak.full_at_s is None else round(soak.full_at_s, 1),
                "launcher_exit_code": soak.launcher_exit_code,
                "ended_early": soak.ended_early,
                "settle_s": arguments.settle,
                "tolerance_mb_per_min": arguments.tolerance_mb_per_min,
                "growing": growing,
                "unjudged": unjudged,
                "plot": str(picture) if soak.series else None,
                "samples": str(samples),
                "run_dir": str(soak.run_dir),
            }
        ),
        flush=True,
    )
    print(f"soak: memory plot {picture}", file=sys.stderr)
    if soak.ended_early or soak.full_at_s is None or growing:
        return 1
    return 2 if unjudged else 0


if __name__ == "__main__":
    sys.exit(main())
