"""The learner's replay traffic in a process of its own, batches handed over in shared memory.

Sampling (gRPC calls, decoding, splitting) and priority updates cost Python work
that, on threads, competes with the optimizer for the interpreter lock and slows every
update. Here a feed process (``python -m services.learner.feed_process``) runs the
:class:`BatchPrefetcher` and :class:`PrioritySender`; the learner reads ready batches
from shared memory slots and writes each batch's new priorities back into its slot.

Nothing crosses the boundary but raw array bytes and two tiny frames on the child's
pipes (no pickle):

* child -> parent (stdout): ``(BATCH, slot)`` when a slot holds a new batch, or
  ``(LAYOUT, n)`` followed by ``n`` bytes of JSON describing the slots, sent once the
  first batch fixes the column signature;
* parent -> child (stdin): ``(slot, importance_exponent)`` when the learner is done with a
  slot and has written its priorities; end of file stops the child.

A fixed statistics block (replay size, capacity, shards up, sample latency, dropped
priority updates) is written by the child into a second shared mapping.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import mmap
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from services.common.local_process import die_with_parent
from services.common.logs import configure_logging
from services.common.sharded_replay import SamplePiece
from services.common.signals import exit_without_teardown
from services.learner.replay_feed import BatchPrefetcher, PrioritySender

logger = logging.getLogger(__name__)

_FRAME = struct.Struct("<ii")  # child -> parent: kind, value
_RELEASE = struct.Struct("<id")  # parent -> child: slot, importance exponent
_BATCH, _LAYOUT = 0, 1
_STATS_FIELDS = ("replay_size", "replay_capacity", "shards_up", "sample_seconds", "priority_updates_dropped")
_STATS_BYTES = mmap.PAGESIZE
_ALIGN = 64
# Parts of a slot besides the replay's columns (prefixed so no column name can clash).
_KEYS, _SHARDS, _WEIGHTS, _PRIORITIES = "#keys", "#shards", "#weights", "#priorities"
_MAX_RESTARTS = 3
# Put in the free slots' queue when the learner has gone: no slot, stop waiting.
_NO_SLOT = -1


def _shared_file(name: str) -> int:
    """An anonymous file both processes can map: a memfd where there is one, else an unlinked temp file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name)
    handle, path = tempfile.mkstemp(prefix=name)
    os.unlink(path)
    return handle


@dataclass(frozen=True)
class _Field:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class SlotLayout:
    """Where each array of a slot lies; slot ``s`` starts at ``s * slot_bytes``."""

    slots: int
    slot_bytes: int
    fields: tuple[_Field, ...]

    @classmethod
    def for_batch(cls, slots: int, arrays: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> SlotLayout:
        """Slots for arrays of the given shapes and dtypes."""
        fields, offset = [], 0
        for name, (shape, dtype) in arrays.items():
            field = _Field(name, dtype.str, tuple(shape), offset)
            fields.append(field)
            offset += -(-field.nbytes // _ALIGN) * _ALIGN
        return cls(slots, max(offset, _ALIGN), tuple(fields))

    def to_json(self) -> bytes:
        fields = [[f.name, f.dtype, list(f.shape), f.offset] for f in self.fields]
        return json.dumps({"slots": self.slots, "slot_bytes": self.slot_bytes, "fields": fields}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SlotLayout:
        raw = json.loads(data)
        fields = tuple(
            _Field(name, dtype, tuple(shape), offset) for name, dtype, shape, offset in raw["fields"]
        )
        return cls(int(raw["slots"]), int(raw["slot_bytes"]), fields)

    @property
    def total_bytes(self) -> int:
        return self.slots * self.slot_bytes

    def views(self, buffer: mmap.mmap, slot: int) -> dict[str, NDArray[Any]]:
        base = slot * self.slot_bytes
        return {
            f.name: np.frombuffer(buffer, np.dtype(f.dtype), int(np.prod(f.shape)), base + f.offset).reshape(
                f.shape
            )
            for f in self.fields
        }


@dataclass(frozen=True)
class FeedBatch:
    """One prioritized batch, valid until :meth:`ReplayFeed.release` hands its slot back.

    ``generation`` counts feed processes: a batch of a process that has since been
    replaced names a slot of the old mapping, so its release is ignored.
    """

    slot: int
    columns: dict[str, NDArray[Any]]
    importance_weights: NDArray[np.float32]
    generation: int


class ReplayFeed:
    """The learner's side: starts the feed process and hands out its batches.

    One thread calls :meth:`get` and :meth:`release`; the statistics may be read from
    any thread. A feed process that dies is started again (its batches in flight are
    lost, nothing else); one that dies ``_MAX_RESTARTS`` times in a row, before handing
    out a batch, raises RuntimeError from :meth:`get`.
    The feed holds ``max(slots, 2 * batches_per_request)`` batches: one request's worth
    being trained on while the next is drawn.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        batch_size: int,
        importance_exponent: float,
        min_replay_size: int,
        seed: int,
        batches_per_request: int = 1,
        slots: int = 4,
    ) -> None:
        self._arguments = [
            "--replay",
            ",".join(addresses),
            "--batch-size",
            str(batch_size),
            "--min-replay-size",
            str(min_replay_size),
            "--seed",
            str(seed),
            "--batches-per-request",
            str(batches_per_request),
            "--slots",
            str(max(slots, 2 * batches_per_request)),
        ]
        self._importance_exponent = importance_exponent
        self._stats_fd = _shared_file("apexrl-feed-stats")
        os.ftruncate(self._stats_fd, _STATS_BYTES)
        self._stats_map = mmap.mmap(self._stats_fd, _STATS_BYTES)
        self._stats = np.frombuffer(self._stats_map, np.float64, len(_STATS_FIELDS))
        self._slots_fd = -1
        self._slots_map: mmap.mmap | None = None
        self._batches: list[FeedBatch] = []  # one per slot, over the shared mapping
        self._priorities: list[NDArray[np.float64]] = []  # each slot's priorities, written back
        self._process: subprocess.Popen[bytes] | None = None
        self._restarts = 0  # since the last batch handed out
        self._generation = 0

    def start(self) -> ReplayFeed:
        self._launch()
        return self

    def _launch(self) -> None:
        self._close_slots()
        self._generation += 1
        self._slots_fd = _shared_file("apexrl-feed-slots")
        command = [
            sys.executable,
            "-m",
            "services.learner.feed_process",
            *self._arguments,
            "--importance-exponent",
            repr(self._importance_exponent),
            "--stats-fd",
            str(self._stats_fd),
            "--slots-fd",
            str(self._slots_fd),
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # select() must see every byte the child wrote: no read-ahead buffer
            pass_fds=(self._stats_fd, self._slots_fd),
        )

    def _close_slots(self) -> None:
        self._batches.clear()
        self._priorities.clear()
        if self._slots_map is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a batch: it keeps the mapping
                self._slots_map.close()
            self._slots_map = None
        if self._slots_fd >= 0:
            os.close(self._slots_fd)
            self._slots_fd = -1

    @staticmethod
    def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
        """``size`` bytes from the unbuffered pipe, or None at end of file (the child exited)."""
        data = b""
        while len(data) < size:
            chunk = stream.read(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def get(self, timeout_s: float) -> FeedBatch | None:
        """The next batch, or None if none is ready within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            process = self._process
            assert process is not None, "start() the feed first"
            assert process.stdout is not None
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([process.stdout], [], [], max(remaining, 0.0))
            if not readable:
                return None
            frame = self._read_exactly(process.stdout, _FRAME.size)
            if frame is None:
                self._relaunch()
                continue
            kind, value = _FRAME.unpack(frame)
            if kind == _LAYOUT:
                layout = self._read_exactly(process.stdout, value)
                if layout is None:
                    self._relaunch()
                    continue
                self._map_slots(SlotLayout.from_json(layout))
                continue
            self._restarts = 0
            return self._batches[int(value)]

    def _map_slots(self, layout: SlotLayout) -> None:
        self._slots_map = mmap.mmap(self._slots_fd, layout.total_bytes)
        for slot in range(layout.slots):
            views = layout.views(self._slots_map, slot)
            columns = {name: array for name, array in views.items() if not name.startswith("#")}
            self._batches.append(FeedBatch(slot, columns, views[_WEIGHTS], self._generation))
            self._priorities.append(views[_PRIORITIES])

    def _relaunch(self) -> None:
        assert self._process is not None
        code = self._process.wait()
        self._restarts += 1
        if self._restarts > _MAX_RESTARTS:
            raise RuntimeError(
                f"the replay feed process exited {self._restarts} times in a row (exit code {code})"
            )
        logger.warning("replay feed process exited code=%s; starting it again", code)
        self._launch()

    def release(self, batch: FeedBatch, priorities: NDArray[np.floating], importance_exponent: float) -> None:
        """Hands the slot back with its items' new priorities; sets beta for the batches drawn next."""
        self._importance_exponent = importance_exponent
        process = self._process
        if batch.generation != self._generation or process is None or process.stdin is None:
            return  # a batch of a feed process since replaced: its slot is gone
        self._priorities[batch.slot][:] = priorities
        try:
            process.stdin.write(_RELEASE.pack(batch.slot, importance_exponent))
            process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the feed process is gone: get() starts it again

    @property
    def pid(self) -> int | None:
        """The feed process's id (None before start and after stop)."""
        return self._process.pid if self._process is not None else None

    def _stat(self, name: str) -> float:
        return float(self._stats[_STATS_FIELDS.index(name)])

    @property
    def replay_size(self) -> int:
        return int(self._stat("replay_size"))

    @property
    def replay_capacity(self) -> int:
        return int(self._stat("replay_capacity"))

    @property
    def shards_up(self) -> int:
        return int(self._stat("shards_up"))

    @property
    def sample_seconds(self) -> float:
        return self._stat("sample_seconds")

    @property
    def dropped(self) -> int:
        return int(self._stat("priority_updates_dropped"))

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ends the feed process (it sends the priorities it holds first) and unmaps the slots."""
        process = self._process
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
            self._process = None
        self._close_slots()


# The feed process ------------------------------------------------------------------


class _Worker:
    """Moves sampled batches into free slots and sends released slots' priorities."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        addresses = [address for address in arguments.replay.split(",") if address]
        self._beta = float(arguments.importance_exponent)
        self._prefetcher = BatchPrefetcher(
            addresses,
            arguments.batch_size,
            lambda: self._beta,
            arguments.min_replay_size,
            seed=arguments.seed,
            batches_per_request=arguments.batches_per_request,
        )
        # Priorities go back about as often as batches are drawn: one request per shard for each.
        self._sender = PrioritySender(
            addresses, min_items=arguments.batch_size * arguments.batches_per_request
        )
        self._slot_count = arguments.slots
        self._slots_fd = arguments.slots_fd
        self._stats_map = mmap.mmap(arguments.stats_fd, _STATS_BYTES)
        self._stats = np.frombuffer(self._stats_map, np.float64, len(_STATS_FIELDS))
        self._slots_map: mmap.mmap | None = None
        self._views: list[dict[str, NDArray[Any]]] = []  # empty until the first batch fixes the layout
        self._free: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._out = sys.stdout.buffer

    def run(self) -> None:
        self._prefetcher.start()
        self._sender.start()
        releases = threading.Thread(target=self._read_releases, name="releases", daemon=True)
        releases.start()
        try:
            while not self._stop.is_set():
                self._publish_stats()
                batch = self._prefetcher.get(timeout_s=0.2)
                if batch is None:
                    continue
                if not self._views:
                    self._create_slots(batch)
                slot = self._free_slot()
                if slot is None:
                    break
                views = self._views[slot]
                # Straight into the slot: one copy of each column, decoded there if it came compressed.
                batch.write_into(views)
                views[_KEYS][...] = batch.keys
                views[_SHARDS][...] = batch.shards
                views[_WEIGHTS][...] = batch.importance_weights
                self._out.write(_FRAME.pack(_BATCH, slot))
                self._out.flush()
        except BrokenPipeError:
            pass  # the learner is gone
        finally:
            self._prefetcher.stop()
            self._sender.stop()

    def _publish_stats(self) -> None:
        prefetcher = self._prefetcher
        self._stats[:] = (
            prefetcher.replay_size,
            prefetcher.replay_capacity,
            prefetcher.shards_up,
            prefetcher.sample_seconds,
            self._sender.dropped,
        )

    def _create_slots(self, batch: SamplePiece) -> None:
        count = (len(batch.rows),)
        layout = SlotLayout.for_batch(
            self._slot_count,
            {
                **batch.column_shapes(),
                _KEYS: (count, np.dtype(np.int64)),
                _SHARDS: (count, np.dtype(np.int64)),
                _WEIGHTS: (count, np.dtype(np.float32)),
                _PRIORITIES: (count, np.dtype(np.float64)),  # the learner writes them back here
            },
        )
        os.ftruncate(self._slots_fd, layout.total_bytes)
        self._slots_map = mmap.mmap(self._slots_fd, layout.total_bytes)
        self._views = [layout.views(self._slots_map, slot) for slot in range(layout.slots)]
        for slot in range(layout.slots):
            self._free.put(slot)
        description = layout.to_json()
        self._out.write(_FRAME.pack(_LAYOUT, len(description)) + description)
        self._out.flush()

    def _free_slot(self) -> int | None:
        while not self._stop.is_set():
            try:
                slot = self._free.get(timeout=0.2)
            except queue.Empty:
                self._publish_stats()
                continue
            return None if slot == _NO_SLOT else slot
        return None

    def _read_releases(self) -> None:
        stream = sys.stdin.buffer
        while (frame := stream.read(_RELEASE.size)) and len(frame) == _RELEASE.size:
            slot, beta = _RELEASE.unpack(frame)
            if not 0 <= slot < len(self._views):
                logger.error("release of slot %d, which does not exist; stopping", slot)
                break
            self._beta = beta
            views = self._views[slot]
            self._sender.send(views[_SHARDS].copy(), views[_KEYS].copy(), views[_PRIORITIES].copy())
            self._free.put(slot)
        # The learner is stopping: the main loop stops now, not at the end of its current wait.
        self._stop.set()
        self._free.put(_NO_SLOT)
        self._prefetcher.wake()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.learner.feed_process", description=__doc__)
    parser.add_argument("--replay", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--batches-per-request", type=int, default=1)
    parser.add_argument("--min-replay-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--importance-exponent", type=float, default=0.4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--stats-fd", type=int, required=True)
    parser.add_argument("--slots-fd", type=int, required=True)
    arguments = parser.parse_args(argv)
    # The learner stops this process by closing its stdin; a terminal's Ctrl-C is the learner's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Set here rather than between fork and exec (the learner has threads then); the end of
    # stdin stops this process too if the learner dies before the line below runs.
    die_with_parent()
    configure_logging("learner-feed", os.environ.get("APEXRL_LOG_LEVEL", "INFO"))
    _Worker(arguments).run()
    exit_without_teardown()


if __name__ == "__main__":
    main()
