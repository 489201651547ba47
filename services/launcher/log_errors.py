"""A failed part's own reason, read from its log: the lines the launcher shows next to the log's path.

A part says why it stops in one of a few ways, all of which end up in its log: a command's
``apexrl ROLE: message`` line (with indented detail lines), an uncaught exception's
traceback, an ``ERROR`` or ``CRITICAL`` log record (``logger.exception`` adds a traceback),
the command line parser's boxed ``Error``, or the interpreter's ``Fatal Python error``.
The last of these in the log is the reason; a few lines of it, each cut to a readable width.
"""

from __future__ import annotations

import re
from pathlib import Path

MAX_LINES = 6
MAX_WIDTH = 400
# A part's tail is enough: a reason is its last lines, and a log can be gigabytes long.
MAX_READ_BYTES = 256 * 1024

_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<rest>.*)$")
# The ``key=value`` fields services.common.logs puts before the message.
_RECORD_FIELDS = re.compile(r"^(?:(?:service|pid|logger)=\S+ )+")
_COMMAND_ERROR = re.compile(r"^apexrl [a-z-]+: ")
_TRACEBACK = "Traceback (most recent call last):"
_FATAL = "Fatal Python error: "
_BOX_TOP = re.compile(r"^╭─ Error ─")
_BOX_LINE = re.compile(r"^│ ?(?P<text>.*?) *│$")


def read_log(path: Path, start: int = 0, max_bytes: int = MAX_READ_BYTES) -> str:
    """What ``path`` holds from byte ``start`` on, at most its last ``max_bytes`` (whole lines)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            begin = max(start, size - max_bytes)
            file.seek(begin)
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if begin > start:  # cut inside the part's output: drop the partial first line
        text = text.partition("\n")[2]
    return text


def error_lines(log: str, max_lines: int = MAX_LINES, max_width: int = MAX_WIDTH) -> list[str]:
    """The last reason ``log`` gives for a part stopping, in at most ``max_lines`` lines; [] if none."""
    lines = log.splitlines()
    reason: list[str] = []
    index = 0
    while index < len(lines):
        found, index = _reason_at(lines, index)
        if found:
            reason = found
    return _bounded(reason, max_lines, max_width)


def _reason_at(lines: list[str], index: int) -> tuple[list[str], int]:
    """The reason starting at ``lines[index]`` ([] if none starts there) and the index after it."""
    line = lines[index]
    if line.startswith(_TRACEBACK):
        return _traceback(lines, index)
    if record := _RECORD.match(line):
        return _record(lines, index, record)
    if _COMMAND_ERROR.match(line) or line.startswith(_FATAL):
        end = _indented_after(lines, index + 1)
        return lines[index:end], end
    if _BOX_TOP.match(line):
        return _box(lines, index)
    return [], index + 1


def _record(lines: list[str], index: int, record: re.Match[str]) -> tuple[list[str], int]:
    """An ERROR or CRITICAL record's message (and its traceback's, from ``logger.exception``)."""
    if record.group("level") not in ("ERROR", "CRITICAL"):
        return [], index + 1
    message = _RECORD_FIELDS.sub("", record.group("rest"))
    if index + 1 < len(lines) and lines[index + 1].startswith(_TRACEBACK):
        exception, after = _traceback(lines, index + 1)
        return [message, *exception], after
    return [message], index + 1


def _traceback(lines: list[str], header: int) -> tuple[list[str], int]:
    """The exception message ending the traceback at ``lines[header]``, after its indented frames."""
    index = header + 1
    while index < len(lines) and lines[index][:1].isspace():  # the frames
        index += 1
    start = index
    # The message runs on (pydantic's has unindented lines) until a blank line or other output.
    while index < len(lines) and lines[index].strip() and not _starts_output(lines[index]):
        index += 1
    return lines[start:index], max(index, header + 1)


def _starts_output(line: str) -> bool:
    """Whether ``line`` is output of its own (a record, a traceback) rather than a message line."""
    return line.startswith(_TRACEBACK) or bool(_RECORD.match(line) or _COMMAND_ERROR.match(line))


def _indented_after(lines: list[str], index: int) -> int:
    """The index after the indented (continuation) lines from ``lines[index]`` on."""
    while index < len(lines) and lines[index][:1].isspace() and lines[index].strip():
        index += 1
    return index


def _box(lines: list[str], top: int) -> tuple[list[str], int]:
    """The text inside the parser's ``╭─ Error ─╮`` box."""
    text: list[str] = []
    index = top + 1
    while index < len(lines) and (inside := _BOX_LINE.match(lines[index])):
        text.append(inside.group("text"))
        index += 1
    if index < len(lines) and lines[index].startswith("╰"):
        index += 1
    return [" ".join(part for part in text if part)], index


def _bounded(lines: list[str], max_lines: int, max_width: int) -> list[str]:
    kept = [line if len(line) <= max_width else line[: max_width - 1] + "…" for line in lines]
    if len(kept) > max_lines:
        return [*kept[: max_lines - 1], f"… ({len(kept) - max_lines + 1} more lines in the log)"]
    return kept
