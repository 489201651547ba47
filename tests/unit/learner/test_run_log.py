"""metrics.csv: one row per call, every column; a file from before keeps its own columns."""

from __future__ import annotations

import csv
from pathlib import Path

from services.learner.run_log import COLUMNS, RunLog


def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def test_a_new_file_has_every_column_and_a_family_without_a_signal_leaves_it_empty(tmp_path: Path) -> None:
    log = RunLog(tmp_path)
    log.append({"updates": 3, "loss": 0.5, "policy_loss": -1.25})
    log.append({"updates": 4, "loss": 0.25})
    log.close()
    header, written = rows(tmp_path / "metrics.csv")
    assert header == list(COLUMNS)
    assert [(row["updates"], row["policy_loss"], row["temperature"]) for row in written] == [
        ("3", "-1.25", ""),
        ("4", "", ""),
    ]


def test_an_older_file_is_appended_to_in_its_own_columns(tmp_path: Path) -> None:
    older = ["elapsed_s", "updates", "loss"]
    (tmp_path / "metrics.csv").write_text(",".join(older) + "\n1.0,10,0.5\n", encoding="utf-8")
    log = RunLog(tmp_path)  # a run resumed by this version
    log.append({"elapsed_s": 2.0, "updates": 20, "loss": 0.25, "policy_loss": -3.0, "temperature": 0.1})
    log.close()
    header, written = rows(tmp_path / "metrics.csv")
    assert header == older
    assert written == [
        {"elapsed_s": "1.0", "updates": "10", "loss": "0.5"},
        {"elapsed_s": "2.0", "updates": "20", "loss": "0.25"},
    ]
