"""A record of benchmark figures across commits and machines, and a comparison of two of its runs.

Usage: ``.venv/bin/python bench/x.py | .venv/bin/python -m bench.record append [--record FILE]``
(default bench/results.jsonl) passes the benchmark's lines through unchanged and appends
each JSON object line to the record, stamped with the commit (and whether the tree was
dirty, the record aside), the date, a run id (``--run-id``, else ``APEXRL_BENCH_RUN_ID``,
else the date and the commit) and the machine: cores, CPU model, memory, Python and torch,
and the speed of bench/actor_throughput.py's bare actor loop, measured once per run id,
after the first benchmark of the run ends (``--bare-loop-seconds 0`` skips it).

``.venv/bin/python -m bench.record compare [--run ID] [--against ID] [--any-machine]`` compares a
run (default the newest) with an earlier one (default the newest before it on the same CPU
model and core count), measure by measure: the ratio to the reference where both lines have
one (the reference ran beside it, so the machine's drift cancels), else the value. A measure
regressed when it moved the worse way by more than its noise: the largest of the relative
spread (max - min over median) of either line's ``runs`` (where neither has runs: that of the
measure over three or more earlier runs on this machine), and 5%. Exit 1 if one did, 2 on
bad input.

``.venv/bin/python -m bench.record latest [--bench B]`` prints the newest line of every measure;
``.venv/bin/python -m bench.record readme [--check]`` writes them as the README's table of figures
(``--check``: exit 1 where the README's table is not the record's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD = Path("bench/results.jsonl")
NOISE_FLOOR = 0.05
_REPOSITORY = Path(__file__).resolve().parent.parent
# Settings some benchmarks vary under one measure name (parameter_broadcast's watchers, the
# learner's device, soak's processes): part of the key, so those lines stay apart.
_KEY_SETTINGS = ("device", "watchers", "pullers", "process")

Line = dict[str, Any]


class BadInputError(Exception):
    """A problem with the arguments or the record, said in one line."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_object(text: bytes | str) -> Line | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(line: Line, field: str) -> float | None:
    value = line.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def key(line: Line) -> str | None:
    """``bench/workload/measure [settings]``, or None for a line that names no benchmark."""
    if "bench" not in line:
        return None
    parts = (line["bench"], line.get("workload", line.get("preset")), line.get("measure"))
    settings = ",".join(f"{name}={line[name]}" for name in _KEY_SETTINGS if name in line)
    return "/".join(str(part) for part in parts if part is not None) + (f" [{settings}]" if settings else "")


def _git(repository: Path, *arguments: str) -> str | None:
    try:
        command = ["git", "-C", str(repository), *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def commit_stamp(repository: Path, record: Path) -> tuple[str | None, bool | None]:
    """HEAD, and whether the tree differs from it in anything but the record."""
    head = _git(repository, "rev-parse", "HEAD", "--show-toplevel")
    status = _git(repository, "status", "--porcelain", "--untracked-files=all")
    if head is None or status is None:
        return None, None
    commit, top = head.splitlines()
    absolute, root = record.resolve(), Path(top).resolve()
    relative = absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else ""
    return commit, any(row[3:] != relative for row in status.splitlines())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for row in file:
                name, _, value = row.partition(":")
                if name.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, OSError, ValueError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bare_loop_steps_per_s(run_id: str, seconds: float) -> float | None:
    """bench/actor_throughput.py's bare loop for ``seconds``, once per run id (cached in the temp dir)."""
    if seconds <= 0:
        return None
    safe = re.sub(r"[^\w.-]", "_", run_id)
    cache = Path(tempfile.gettempdir()) / f"apexrl-bench-bare-loop-{safe}.json"
    cached = _json_object(cache.read_bytes()) if cache.is_file() else None
    if cached is not None and cached.get("run_id") == run_id and _number(cached, "steps_per_s") is not None:
        return float(cached["steps_per_s"])
    from bench.actor_throughput import bare_steps_per_s  # noqa: PLC0415 (torch, only when measured)

    value = round(bare_steps_per_s(seconds), 1)
    cache.write_text(json.dumps({"run_id": run_id, "seconds": seconds, "steps_per_s": value}))
    print(f"bench.record: bare loop {value:.0f} steps/s for run {run_id}", file=sys.stderr)
    return value


def append(arguments: argparse.Namespace) -> int:
    """Stdin to stdout unchanged; its JSON object lines, stamped, to the record once stdin ends."""
    record: Path = arguments.record
    commit, dirty = commit_stamp(arguments.repository, record)
    run_id = (
        arguments.run_id
        or os.environ.get("APEXRL_BENCH_RUN_ID")
        or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{(commit or 'nogit')[:7]}"
    )
    machine: Line = {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "torch": _version("torch"),
    }
    lines: list[tuple[str, Line]] = []
    interrupted = False
    try:
        for raw in iter(sys.stdin.buffer.readline, b""):
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            if (line := _json_object(raw)) is not None:
                lines.append((_now(), line))
    except KeyboardInterrupt:
        interrupted = True  # keep what the benchmark printed; measure nothing more
    if not lines:
        return 130 if interrupted else 0
    seconds = 0.0 if interrupted else arguments.bare_loop_seconds
    machine["bare_loop_steps_per_s"] = bare_loop_steps_per_s(run_id, seconds)
    stamp = {"commit": commit, "dirty": dirty, "run_id": run_id, "machine": machine}
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record, "a", encoding="utf-8") as file:
        for date, line in lines:
            file.write(json.dumps({**line, **stamp, "date": date}) + "\n")
            file.flush()
    return 130 if interrupted else 0


def load(record: Path) -> dict[str, list[Line]]:
    """The record's lines by run id, runs in the order they were first recorded."""
    if not record.is_file():
        raise BadInputError(f"no record at {record}")
    runs: dict[str, list[Line]] = {}
    with open(record, encoding="utf-8") as file:
        for number, text in enumerate(file, 1):
            line = _json_object(text)
            if line is None or not isinstance(line.get("run_id"), str):
                if text.strip():
                    print(f"bench.record: {record}:{number} is not a recorded line; skipped", file=sys.stderr)
                continue
            ratios = line.get("ratios")  # time_to_solve: one ratio per apexrl side
            if "ratio" not in line and isinstance(ratios, dict) and len(ratios) == 1:
                line["ratio"] = next(iter(ratios.values()))
            runs.setdefault(line["run_id"], []).append(line)
    if not runs:
        raise BadInputError(f"{record} holds no recorded runs")
    return runs


def _machine(run: list[Line]) -> tuple[object, object]:
    machine = run[0].get("machine")
    return (machine.get("cpu_model"), machine.get("cores")) if isinstance(machine, dict) else (None, None)


def _figures(run: list[Line]) -> dict[str, Line]:
    """The run's comparable lines by key, the last of a key winning."""
    return {
        name: line
        for line in run
        if (name := key(line)) is not None
        and line.get("better") in ("higher", "lower")
        and _number(line, "value") is not None
    }


def _spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / abs(middle) if middle else 0.0


@dataclass(frozen=True)
class Row:
    key: str
    field: str
    before: float | None
    after: float | None
    noise: float | None
    verdict: str

    @property
    def change(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        if self.before == 0:
            return 0.0 if self.after == 0 else math.copysign(math.inf, self.after)
        return (self.after - self.before) / abs(self.before)


def compare_lines(name: str, old: Line, new: Line, earlier: list[Line]) -> Row:
    """One measure of two runs; ``earlier``: its lines in the runs before ``new`` on the same machine."""
    field = "ratio" if _number(old, "ratio") is not None and _number(new, "ratio") is not None else "value"
    samples = []
    for line in (old, new):
        runs = line.get("runs")
        values = [run for run in runs if isinstance(run, int | float)] if isinstance(runs, list) else []
        samples += [values] if len(values) >= 2 else []
    if not samples:
        # Without repeated runs, the measure's spread over earlier runs on this machine (which
        # also holds whatever changes they measured, so only where nothing better is there).
        history = [value for line in earlier if (value := _number(line, field)) is not None]
        samples = [history] if len(history) >= 3 else []
    noise = max([NOISE_FLOOR, *map(_spread, samples)])
    row = Row(name, field, _number(old, field), _number(new, field), noise, "same")
    change = row.change or 0.0
    if abs(change) <= noise:
        return row
    worse = change < 0 if new["better"] == "higher" else change > 0
    return replace(row, verdict="REGRESSED" if worse else "better")


def _unpaired(name: str, line: Line, verdict: str) -> Row:
    field = "ratio" if _number(line, "ratio") is not None else "value"
    figure = _number(line, field)
    before, after = (None, figure) if verdict == "new" else (figure, None)
    return Row(name, field, before, after, None, verdict)


def compare_runs(runs: dict[str, list[Line]], after: str, before: str) -> list[Row]:
    """Every measure of either run, its noise from the runs before ``after`` on the same machine."""
    order = list(runs)
    machine = _machine(runs[after])
    earlier = [_figures(runs[run]) for run in order[: order.index(after)] if _machine(runs[run]) == machine]
    old, new = _figures(runs[before]), _figures(runs[after])
    rows = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            rows.append(_unpaired(name, new[name], "new"))
        elif name not in new:
            rows.append(_unpaired(name, old[name], "gone"))
        else:
            history = [figures[name] for figures in earlier if name in figures]
            rows.append(compare_lines(name, old[name], new[name], history))
    return rows


def _previous(runs: dict[str, list[Line]], after: str, machine_match: bool) -> str:
    order = list(runs)
    machine = _machine(runs[after])
    earlier = [
        run for run in order[: order.index(after)] if not machine_match or _machine(runs[run]) == machine
    ]
    if earlier:
        return earlier[-1]
    where = (
        f" on this machine ({machine[0]}, {machine[1]} cores); --any-machine takes any"
        if machine_match
        else ""
    )
    raise BadInputError(f"no run recorded before {after!r}{where}")


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _describe(run_id: str, run: list[Line]) -> str:
    first = run[0]
    commit = str(first.get("commit") or "no commit")[:7] + ("+dirty" if first.get("dirty") else "")
    cpu, cores = _machine(run)
    return f"{run_id} ({commit}, {first.get('date')}, {cpu}, {cores} cores)"


def compare(arguments: argparse.Namespace) -> int:
    runs = load(arguments.record)
    after = arguments.run or list(runs)[-1]
    for run_id in (after, arguments.against):
        if run_id is not None and run_id not in runs:
            raise BadInputError(
                f"no run {run_id!r} in {arguments.record} (newest: {', '.join(list(runs)[-3:])})"
            )
    before = arguments.against or _previous(runs, after, arguments.machine_match)
    rows = compare_runs(runs, after, before)
    print(f"{_describe(after, runs[after])}\n  against {_describe(before, runs[before])}")
    table = [("measure", "on", "before", "after", "change", "noise", "verdict")] + [
        (
            row.key,
            row.field,
            _format(row.before),
            _format(row.after),
            "-" if row.change is None else f"{row.change:+.1%}",
            "-" if row.noise is None else f"{row.noise:.1%}",
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(cells[column]) for cells in table) for column in range(len(table[0]))]
    for cells in table:
        aligned = [
            cell.rjust(width) if 2 <= i <= 5 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        print("  ".join(aligned).rstrip())
    verdicts = [row.verdict for row in rows]
    print(", ".join(f"{verdicts.count(v)} {v}" for v in ("REGRESSED", "better", "same", "new", "gone")))
    return 1 if "REGRESSED" in verdicts else 0


def latest(arguments: argparse.Namespace) -> int:
    newest: dict[str, Line] = {}
    for run in load(arguments.record).values():
        for line in run:
            name = key(line)
            if name is not None and arguments.bench in (None, line["bench"]):
                newest.pop(name, None)
                newest[name] = line
    if not newest:
        raise BadInputError(f"no lines of bench {arguments.bench!r} in {arguments.record}")
    for line in newest.values():
        print(json.dumps(line))
    return 0


README = _REPOSITORY / "README.md"
_README_START = "<!-- bench-record: written by `python -m bench.record readme` from bench/results.jsonl -->"
_README_END = "<!-- /bench-record -->"


def _newest(runs: dict[str, list[Line]]) -> dict[str, Line]:
    """The newest recorded line of every measure, in the order the measures were first recorded."""
    newest: dict[str, Line] = {}
    for run in runs.values():
        for line in run:
            if (name := key(line)) is not None:
                newest[name] = line
    return newest


def _figure(value: float | None, unit: object) -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}" if unit else text


def readme_table(runs: dict[str, list[Line]]) -> str:
    """A markdown table of the newest figure of every measure, with where and when it was taken."""
    rows = [
        "| measure | value | reference | ratio | commit | date | machine |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for name, line in _newest(runs).items():
        machine = line.get("machine") if isinstance(line.get("machine"), dict) else {}
        assert isinstance(machine, dict)
        bare = _number(machine, "bare_loop_steps_per_s")
        where = f"{machine.get('cores')} cores" + (f", bare loop {bare:,.0f} steps/s" if bare else "")
        reference = line.get("reference")
        reference_value = _number(line, "reference_value")
        referred = "-" if reference is None else f"{_figure(reference_value, line.get('unit'))} ({reference})"
        ratio = _number(line, "ratio")
        shown_ratio = "-" if ratio is None else f"{ratio:.2f}"
        commit = str(line.get("commit") or "-")[:7] + (" (dirty)" if line.get("dirty") else "")
        date = str(line.get("date", "-"))[:10]
        value = _figure(_number(line, "value"), line.get("unit"))
        rows.append(f"| `{name}` | {value} | {referred} | {shown_ratio} | {commit} | {date} | {where} |")
    return "\n".join(rows)


def readme_block(record: Path) -> str:
    return f"{_README_START}\n{readme_table(load(record))}\n{_README_END}"


def readme(arguments: argparse.Namespace) -> int:
    """Writes the README's table of figures from the record (or, with --check, says whether it is current)."""
    text = arguments.readme.read_text(encoding="utf-8")
    start, end = text.find(_README_START), text.find(_README_END)
    if start < 0 or end < start:
        raise BadInputError(f"{arguments.readme} has no {_README_START!r} ... {_README_END!r} block")
    updated = text[:start] + readme_block(arguments.record) + text[end + len(_README_END) :]
    if arguments.check:
        if updated != text:
            differ = f"bench.record: {arguments.readme}'s figures differ from {arguments.record}"
            print(differ, file=sys.stderr)
            return 1
        return 0
    arguments.readme.write_text(updated, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.record",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(required=True)
    adding = commands.add_parser("append", help="Stdin to stdout, its JSON lines stamped into the record.")
    adding.add_argument("--run-id", default=None, help="Default: $APEXRL_BENCH_RUN_ID, else date and commit.")
    adding.add_argument("--bare-loop-seconds", type=float, default=2.0, help="0: skip, record null.")
    adding.add_argument("--repository", type=Path, default=_REPOSITORY, help="Whose commit stamps the lines.")
    adding.set_defaults(command=append)
    comparing = commands.add_parser("compare", help="A run against an earlier one; exit 1 on a regression.")
    comparing.add_argument("--run", default=None, help="Default: the newest run.")
    comparing.add_argument("--against", default=None, help="Default: the newest earlier run on this machine.")
    machine = comparing.add_mutually_exclusive_group()
    machine.add_argument("--machine-match", dest="machine_match", action="store_true", default=True)
    machine.add_argument("--any-machine", dest="machine_match", action="store_false")
    comparing.set_defaults(command=compare)
    newest = commands.add_parser("latest", help="The newest line of every measure, as JSON lines.")
    newest.add_argument("--bench", default=None)
    newest.set_defaults(command=latest)
    writing = commands.add_parser("readme", help="The README's table of figures, from the record.")
    writing.add_argument("--readme", type=Path, default=README)
    writing.add_argument("--check", action="store_true", help="Exit 1 if the README is not current.")
    writing.set_defaults(command=readme)
    for command in (adding, comparing, newest, writing):
        command.add_argument("--record", type=Path, default=RECORD, help=f"Default: {RECORD}.")
    arguments = parser.parse_args(argv)
    try:
        status: int = arguments.command(arguments)
    except (BadInputError, OSError) as problem:
        print(f"bench.record: {problem}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
