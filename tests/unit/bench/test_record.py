"""bench/record.py: benchmark lines stamped into a record as they pass through, and two runs compared."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest

from bench import record

REPOSITORY = Path(__file__).resolve().parents[3]
MACHINE_A = {"cores": 2, "cpu_model": "CPU A"}
MACHINE_B = {"cores": 8, "cpu_model": "CPU B"}


def git(repository: Path, *arguments: str) -> str:
    command = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t"]
    command += ["-c", "commit.gpgsign=false", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with one commit and a clean tree."""
    folder = tmp_path / "repository"
    folder.mkdir()
    git(folder, "init", "--quiet")
    (folder / "code.py").write_text("x = 1\n")
    git(folder, "add", "code.py")
    git(folder, "commit", "--quiet", "-m", "first")
    return folder


def append(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes, *arguments: str
) -> str:
    """``append`` in this process with ``stdin``; what it wrote to stdout."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    assert record.main(["append", "--bare-loop-seconds", "0", *arguments]) == 0
    return capsys.readouterr().out


def figure(measure: str, value: float, better: str = "higher", **fields: Any) -> dict[str, Any]:
    return {"bench": "b", "workload": "w", "measure": measure, "value": value, "better": better, **fields}


def recorded(run_id: str, machine: dict[str, Any], *figures: dict[str, Any]) -> list[dict[str, Any]]:
    stamp = {"commit": "0" * 40, "dirty": False, "date": "2026-01-01T00:00:00+00:00", "run_id": run_id}
    return [{**line, **stamp, "machine": machine} for line in figures]


def write(path: Path, *runs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for run in runs for line in run))
    return path


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = record.main(list(arguments))
    out, err = capsys.readouterr()
    return code, out, err


def verdicts(out: str) -> dict[str, list[str]]:
    """The table's rows by measure key: on, before, after, change, noise, verdict."""
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines() if line.startswith("b/")]
    return {row[0]: row[1:] for row in rows}


def test_append_passes_stdin_through_unchanged_and_records_json_objects_stamped(
    tmp_path: Path, repository: Path
) -> None:
    path = tmp_path / "results.jsonl"
    line = figure("steps_per_s", 11238.0, runs=[11000.1, 11238.0], ratio=0.88)
    stdin = (json.dumps(line) + "\nstarting up...\n[1, 2]\n\n" + json.dumps(figure("other", 1.0))).encode()
    command = [sys.executable, "-m", "bench.record", "append", "--record", str(path), "--run-id", "r1"]
    command += ["--bare-loop-seconds", "0", "--repository", str(repository)]
    result = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        cwd=REPOSITORY,
        check=True,
    )
    assert result.stdout == stdin
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    assert [entry["measure"] for entry in lines] == ["steps_per_s", "other"]
    first = lines[0]
    assert {name: first[name] for name in line} == line
    assert first["run_id"] == "r1"
    assert first["commit"] == git(repository, "rev-parse", "HEAD")
    assert first["dirty"] is False
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first["date"])
    machine = first["machine"]
    assert set(machine) == {"cores", "cpu_model", "memory_gb", "python", "torch", "bare_loop_steps_per_s"}
    assert machine["bare_loop_steps_per_s"] is None
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(machine["cores"], int)
    assert machine["cpu_model"]


def test_dirty_ignores_the_record_but_not_other_changes(tmp_path: Path, repository: Path) -> None:
    results = repository / "bench" / "results.jsonl"
    assert record.commit_stamp(repository, results)[1] is False
    results.parent.mkdir()
    results.write_text("{}\n")
    assert record.commit_stamp(repository, results) == (git(repository, "rev-parse", "HEAD"), False)
    (repository / "code.py").write_text("x = 2\n")
    assert record.commit_stamp(repository, results)[1] is True
    assert record.commit_stamp(tmp_path / "nowhere", results) == (None, None)


def test_run_id_from_the_environment_groups_the_lines_of_several_benchmarks(
    tmp_path: Path,
    repository: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "results.jsonl"
    options = ("--record", str(path), "--repository", str(repository))
    monkeypatch.setenv("APEXRL_BENCH_RUN_ID", "make-bench-1")
    append(capsys, monkeypatch, (json.dumps(figure("first", 1.0)) + "\n").encode(), *options)
    append(capsys, monkeypatch, (json.dumps(figure("second", 2.0)) + "\n").encode(), *options)
    monkeypatch.delenv("APEXRL_BENCH_RUN_ID")
    append(capsys, monkeypatch, (json.dumps(figure("first", 1.0)) + "\n").encode(), *options)
    run_ids = [json.loads(line)["run_id"] for line in path.read_text().splitlines()]
    short = git(repository, "rev-parse", "--short=7", "HEAD")
    assert run_ids[:2] == ["make-bench-1", "make-bench-1"]
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{short}", run_ids[2])
    assert list(record.load(path)) == ["make-bench-1", run_ids[2]]
    code, out, _ = run(capsys, "compare", "--record", str(path))
    assert code == 0
    assert verdicts(out) == {
        "b/w/first": ["value", "1", "1", "+0.0%", "5.0%", "same"],
        "b/w/second": ["value", "2", "-", "-", "-", "gone"],
    }


def test_the_bare_loop_is_measured_once_per_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[float] = []

    def bare_steps_per_s(seconds: float, preset: str = "cartpole") -> float:
        measured.append(seconds)
        return 1234.56

    actor_throughput = types.ModuleType("bench.actor_throughput")  # not the real one: no torch here
    actor_throughput.bare_steps_per_s = bare_steps_per_s  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.actor_throughput", actor_throughput)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert record.bare_loop_steps_per_s("run/1", 0) is None
    assert record.bare_loop_steps_per_s("run/1", 2.0) == 1234.6
    assert record.bare_loop_steps_per_s("run/1", 2.0) == 1234.6
    assert record.bare_loop_steps_per_s("run 1", 2.0) == 1234.6  # the same file name, another run
    assert measured == [2.0, 2.0]


def test_compare_takes_the_newest_earlier_run_on_the_same_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("m", 100.0)),
        recorded("r2", MACHINE_B, figure("m", 50.0)),
        recorded("r3", MACHINE_A, figure("m", 100.0)),
    )
    code, out, _ = run(capsys, "compare", "--record", str(path))
    assert (code, out.splitlines()[1].split()[1]) == (0, "r1")
    assert verdicts(out)["b/w/m"][-1] == "same"
    code, out, _ = run(capsys, "compare", "--record", str(path), "--any-machine")
    assert (code, out.splitlines()[1].split()[1]) == (0, "r2")
    assert verdicts(out)["b/w/m"] == ["value", "50", "100", "+100.0%", "5.0%", "better"]
    code, out, _ = run(capsys, "compare", "--record", str(path), "--run", "r2", "--against", "r3")
    assert (code, verdicts(out)["b/w/m"][-1]) == (1, "REGRESSED")


@pytest.mark.parametrize(
    ("better", "before", "after", "verdict", "code"),
    [
        ("higher", 100.0, 80.0, "REGRESSED", 1),
        ("higher", 100.0, 96.0, "same", 0),
        ("higher", 100.0, 120.0, "better", 0),
        ("lower", 10.0, 12.0, "REGRESSED", 1),
        ("lower", 10.0, 8.0, "better", 0),
        ("lower", 10.0, 10.4, "same", 0),
    ],
)
def test_a_move_the_worse_way_beyond_the_noise_is_a_regression(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    better: str,
    before: float,
    after: float,
    verdict: str,
    code: int,
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("m", before, better)),
        recorded("r2", MACHINE_A, figure("m", after, better)),
    )
    status, out, _ = run(capsys, "compare", "--record", str(path))
    assert (status, verdicts(out)["b/w/m"][-1]) == (code, verdict)
    assert out.splitlines()[-1].startswith(f"{code} REGRESSED")


def test_noise_is_the_spread_of_the_runs_or_of_earlier_runs_on_the_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spread = write(
        tmp_path / "spread.jsonl",
        recorded("r1", MACHINE_A, figure("m", 100.0, runs=[90.0, 100.0, 110.0])),
        recorded("r2", MACHINE_A, figure("m", 85.0)),
    )
    code, out, _ = run(capsys, "compare", "--record", str(spread))
    assert (code, verdicts(out)["b/w/m"][-2:]) == (0, ["20.0%", "same"])
    history = [recorded(f"h{i}", MACHINE_A, figure("m", value)) for i, value in enumerate((100, 125, 100))]
    elsewhere = recorded("other", MACHINE_B, figure("m", 1.0))  # not this machine's noise
    path = write(
        tmp_path / "history.jsonl", *history, elsewhere, recorded("r2", MACHINE_A, figure("m", 80.0))
    )
    code, out, _ = run(capsys, "compare", "--record", str(path))
    assert (code, verdicts(out)["b/w/m"][-2:]) == (0, ["25.0%", "same"])
    # Where the lines have runs, theirs is the noise: the history holds what changes measured.
    runs = recorded("r3", MACHINE_A, figure("m", 70.0, runs=[69.0, 70.0, 71.0]))
    path = write(tmp_path / "runs.jsonl", *history, recorded("r2", MACHINE_A, figure("m", 80.0)), runs)
    code, out, _ = run(capsys, "compare", "--record", str(path))
    assert (code, verdicts(out)["b/w/m"][-2:]) == (1, ["5.0%", "REGRESSED"])
    two = write(tmp_path / "two.jsonl", *history[1:], recorded("r2", MACHINE_A, figure("m", 80.0)))
    code, out, _ = run(capsys, "compare", "--record", str(two))
    assert (code, verdicts(out)["b/w/m"][-2:]) == (1, ["5.0%", "REGRESSED"])


def test_the_ratio_is_compared_where_both_lines_have_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("m", 100.0, ratio=0.9), figure("n", 100.0, ratio=0.9)),
        # A slower machine: the value fell with the reference; n's new line has no ratio.
        recorded("r2", MACHINE_A, figure("m", 80.0, ratio=0.9), figure("n", 80.0)),
    )
    code, out, _ = run(capsys, "compare", "--record", str(path))
    rows = verdicts(out)
    assert code == 1
    assert rows["b/w/m"] == ["ratio", "0.9", "0.9", "+0.0%", "5.0%", "same"]
    assert rows["b/w/n"] == ["value", "100", "80", "-20.0%", "5.0%", "REGRESSED"]


def test_new_and_gone_measures_and_keys_told_apart_by_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("a", 1.0), figure("b", 2.0), figure("c", 5.0, watchers=1)),
        recorded(
            "r2", MACHINE_A, figure("b", 2.0), figure("c", 5.0, watchers=1), figure("c", 9.0, watchers=8)
        ),
        recorded("r2", MACHINE_A, {"bench": "soak", "process": "learner", "bounded": True}),
    )
    code, out, _ = run(capsys, "compare", "--record", str(path))
    rows = verdicts(out)
    assert code == 0
    assert {name: row[-1] for name, row in rows.items()} == {
        "b/w/a": "gone",
        "b/w/b": "same",
        "b/w/c [watchers=1]": "same",
        "b/w/c [watchers=8]": "new",
    }
    assert "1 gone" in out.splitlines()[-1]


def test_latest_prints_the_newest_line_of_each_measure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("a", 1.0), figure("b", 2.0)),
        recorded("r2", MACHINE_A, figure("a", 3.0), {"bench": "other", "measure": "x", "value": 4.0}),
    )
    code, out, _ = run(capsys, "latest", "--record", str(path))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(line["measure"], line["value"], line["run_id"]) for line in lines] == [
        ("b", 2.0, "r1"),
        ("a", 3.0, "r2"),
        ("x", 4.0, "r2"),
    ]
    code, out, _ = run(capsys, "latest", "--record", str(path), "--bench", "other")
    assert (code, [json.loads(line)["value"] for line in out.splitlines()]) == (0, [4.0])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["compare"], "no record at {path}missing.jsonl"),
        (["latest"], "no record at {path}missing.jsonl"),
        (["compare", "--run", "r9"], "no run 'r9' in {path}results.jsonl (newest: r1, r2)"),
        (["compare", "--against", "r9"], "no run 'r9' in {path}results.jsonl (newest: r1, r2)"),
        (["compare", "--run", "r1"], "no run recorded before 'r1' on this machine (CPU A, 2 cores)"),
        (["compare", "--run", "r1", "--any-machine"], "no run recorded before 'r1'"),
        (["latest", "--bench", "nope"], "no lines of bench 'nope' in {path}results.jsonl"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    path = write(
        tmp_path / "results.jsonl",
        recorded("r1", MACHINE_A, figure("m", 1.0)),
        recorded("r2", MACHINE_A, figure("m", 1.0)),
    )
    name = path.name if "missing" not in message else "missing.jsonl"
    code, out, err = run(capsys, *arguments, "--record", str(tmp_path / name))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"bench.record: {message.format(path=f'{tmp_path}/')}")


def test_a_record_without_runs_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"bench": "b"}\nnot json\n')
    code, _, err = run(capsys, "compare", "--record", str(path))
    assert code == 2
    assert err.splitlines()[-1] == f"bench.record: {path} holds no recorded runs"


def test_readme_writes_the_newest_figure_of_each_measure_between_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    lines = [
        {
            "bench": "b",
            "workload": "w",
            "measure": "m",
            "value": 2.0,
            "unit": "s",
            "better": "lower",
            "run_id": "one",
            "commit": "a" * 40,
            "dirty": False,
            "date": "2026-01-01T00:00:00+00:00",
            "machine": {"cores": 2, "bare_loop_steps_per_s": 12000.0},
        },
        {
            "bench": "b",
            "workload": "w",
            "measure": "m",
            "value": 1.5,
            "unit": "s",
            "better": "lower",
            "reference": "floor",
            "reference_value": 1.0,
            "ratio": 1.5,
            "run_id": "two",
            "commit": "b" * 40,
            "dirty": True,
            "date": "2026-01-02T00:00:00+00:00",
            "machine": {"cores": 16},
        },
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{record._README_START}\nstale\n{record._README_END}\nafter\n")
    arguments = ["--readme", str(readme), "--record", str(path)]
    assert record.main(["readme", "--check", *arguments]) == 1
    assert record.main(["readme", *arguments]) == 0
    text = readme.read_text()
    assert text.startswith(f"before\n{record._README_START}\n| measure |")
    assert text.endswith(f"{record._README_END}\nafter\n")
    (row,) = [line for line in text.splitlines() if line.startswith("| `b/w/m`")]
    assert row == "| `b/w/m` | 1.5 s | 1 s (floor) | 1.50 | bbbbbbb (dirty) | 2026-01-02 | 16 cores |"
    assert record.main(["readme", "--check", *arguments]) == 0


def test_the_readme_s_figures_are_the_record_s() -> None:
    """The README's table is the one the committed record gives (make bench rewrites both)."""
    root = Path(record.__file__).resolve().parent.parent
    arguments = ["--readme", str(root / "README.md"), "--record", str(root / "bench" / "results.jsonl")]
    assert record.main(["readme", "--check", *arguments]) == 0
