"""A failed part's reason, read from logs that real processes wrote the way the services write them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from services.launcher.log_errors import MAX_LINES, MAX_WIDTH, error_lines, read_log

ROOT = Path(__file__).resolve().parents[3]


def log_of(code: str) -> str:
    """What a Python process running ``code`` writes to stderr, which is what its log holds."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, result.stderr
    return result.stderr


def service_log_of(body: str) -> str:
    """``log_of`` a process that logs as every service does (services.common.logs)."""
    setup = """
        import logging
        from services.common.logs import configure_logging
        configure_logging("learner")
        logger = logging.getLogger("services.learner.learner")
        logger.info("starting fresh algorithm=apex_dqn")
        logger.warning("registration failed code=UNAVAILABLE retry_in_s=0.2")
    """
    return log_of(textwrap.dedent(setup) + textwrap.dedent(body))


def command_log_of(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_an_uncaught_exception_gives_its_final_line() -> None:
    log = service_log_of("""
        def load(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        load("runs/x")
    """)
    assert "Traceback (most recent call last):" in log
    assert error_lines(log) == ["FileNotFoundError: no checkpoint at runs/x"]


def test_a_chained_exception_gives_the_last_one() -> None:
    log = service_log_of("""
        try:
            {}["device"]
        except KeyError as error:
            raise RuntimeError("CUDA error: out of memory") from error
    """)
    assert "KeyError" in log
    assert error_lines(log) == ["RuntimeError: CUDA error: out of memory"]


def test_a_multi_line_exception_message_is_kept_whole() -> None:
    log = service_log_of("""
        import pydantic
        class Settings(pydantic.BaseModel):
            capacity: int = pydantic.Field(ge=1)
        Settings(capacity=0)
    """)
    lines = error_lines(log)
    assert lines[0] == "pydantic_core._pydantic_core.ValidationError: 1 validation error for Settings"
    assert lines[1] == "capacity"
    assert lines[2].startswith("  Input should be greater than or equal to 1")


def test_an_error_record_gives_its_message_even_when_records_follow() -> None:
    log = service_log_of("""
        logger.error("release of slot 7, which does not exist; stopping")
        logger.info("stopping signal=SIGTERM")
        raise SystemExit(1)
    """)
    assert error_lines(log) == ["release of slot 7, which does not exist; stopping"]


def test_a_logged_exception_gives_the_record_and_the_exception() -> None:
    log = service_log_of("""
        try:
            open("/nonexistent/snapshot")
        except OSError:
            logger.exception("snapshot failed path=/nonexistent/snapshot")
        raise SystemExit(1)
    """)
    assert error_lines(log) == [
        "snapshot failed path=/nonexistent/snapshot",
        "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/snapshot'",
    ]


def test_the_last_reason_in_the_log_wins() -> None:
    log = service_log_of("""
        logger.error("skipping unreadable checkpoint path=c-1")
        logger.info("starting fresh")
        raise ValueError("the learner needs at least one replay shard address")
    """)
    assert error_lines(log) == ["ValueError: the learner needs at least one replay shard address"]
    log = service_log_of("""
        try:
            raise ValueError("first")
        except ValueError:
            logger.exception("retrying")
        logger.critical("giving up after 3 tries")
        raise SystemExit(1)
    """)
    assert error_lines(log) == ["giving up after 3 tries"]


def test_a_command_error_gives_its_line_and_its_detail_lines() -> None:
    log = command_log_of("replay", "--capacity", "0")
    assert error_lines(log) == [
        "apexrl replay: invalid configuration (apexrl replay flags):",
        "  capacity: Input should be greater than or equal to 1, got 0",
    ]


def test_a_command_line_error_gives_the_text_of_its_box() -> None:
    log = command_log_of("replay", "--no-such-flag")
    assert error_lines(log) == ["No such option: --no-such-flag"]


def test_a_crash_of_the_interpreter_gives_its_fatal_error() -> None:
    log = log_of("""
        import ctypes, faulthandler
        faulthandler.enable()
        ctypes.string_at(0)
    """)
    assert error_lines(log) == ["Fatal Python error: Segmentation fault"]


def test_a_log_without_a_reason_gives_none() -> None:
    assert error_lines("") == []
    log = service_log_of("raise SystemExit(3)")
    assert "WARNING" in log
    assert error_lines(log) == []


def test_a_reason_is_a_few_lines_of_readable_width() -> None:
    log = service_log_of("""
        raise ValueError("\\n".join(f"line {i} " + "x" * 2000 for i in range(50)))
    """)
    lines = error_lines(log)
    assert len(lines) == MAX_LINES
    assert all(len(line) <= MAX_WIDTH for line in lines)
    assert lines[0].startswith("ValueError: line 0 xxx")
    assert lines[0].endswith("…")
    assert lines[-1] == f"… ({50 - MAX_LINES + 1} more lines in the log)"


def test_only_the_latest_process_s_output_is_read(tmp_path: Path) -> None:
    log = tmp_path / "learner.log"
    earlier = service_log_of('raise ValueError("the first run failed")')
    log.write_text(earlier, encoding="utf-8")
    start = log.stat().st_size
    with open(log, "a", encoding="utf-8") as file:
        file.write(service_log_of("raise SystemExit(1)"))
    assert error_lines(read_log(log, 0)) == ["ValueError: the first run failed"]
    assert error_lines(read_log(log, start)) == []


def test_a_long_log_is_read_from_its_tail_in_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "actor-0.log"
    record = "2026-01-01 00:00:00,000 INFO service=actor pid=1 logger=a stepping " + "y" * 100 + "\n"
    failure = service_log_of('raise OSError("[Errno 98] Address already in use")')
    log.write_text(record * 10_000 + failure, encoding="utf-8")
    text = read_log(log, 0, max_bytes=64 * 1024)
    assert len(text.encode()) <= 64 * 1024
    assert text.startswith("2026-01-01 00:00:00,000 INFO ")  # the cut line is dropped
    assert error_lines(text) == ["OSError: [Errno 98] Address already in use"]
    assert read_log(tmp_path / "missing.log", 0) == ""
