"""Client of K replay shards that samples one global prioritized batch with exact probabilities.

Ape-X's distributed prioritized replay (Horgan et al. 2018): the batch is split
over shards by a multinomial draw on the shards' total priority masses T_k, and
each shard samples its share proportionally to p^alpha. An item of shard k is
then drawn with probability

    P(i) = (T_k' / sum_j T_j') * (m_i / T_k)

where T' are the totals the split used and T the shard's total when it sampled;
with unchanged totals this is exactly m_i / sum_j T_j, one global buffer. The
importance weights use this P(i), so they are exact even while totals move:
w_i = (N * P(i))^-beta / max_batch w, N the item count over all shards.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from numpy.typing import NDArray

from apexrl.replay.v1 import replay_pb2, replay_pb2_grpc
from services.common import tensor_codec
from services.common.channels import create_channel
from services.common.encoded import Column, EncodedItems, decompress, join_rows, take_rows
from services.common.security import SecuritySettings
from services.common.serving import DEFAULT_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

# Codes after which a shard is skipped until its backoff expires.
_DOWN_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# Codes after which a shard is only left out of the current batch.
_NOT_NOW_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED})


def _kind(column: Column) -> tuple[object, ...]:
    """What must agree between shards for their parts to join: dtype, item shape, encoding."""
    if isinstance(column, EncodedItems):
        return ("encoded", column.codec, column.dtype, column.item_shape)
    return ("dense", column.dtype, column.shape[1:])


class ReplayUnavailableError(Exception):
    """No shard can be sampled (or written) right now; retry later."""


class InsertRefusedError(grpc.RpcError):
    """A shard answered an insert with a status that does not mark it down; names the shard.

    An ``RpcError`` itself (``code()``, ``details()``), so callers that catch those still do.
    """

    def __init__(self, shard: int, address: str, error: grpc.RpcError) -> None:
        self.shard = shard
        self.address = address
        self._code: grpc.StatusCode = error.code()
        self._details: str = error.details() or ""
        super().__init__(f"shard {shard} ({address}) refused the insert: {self._code.name} {self._details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _NoReplyError(grpc.RpcError):
    """A shard's stream gave no reply within the call's timeout: DEADLINE_EXCEEDED, as a unary call."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "no reply on the stream in time"


# A stream's own deadline: far beyond its use, as a stream is replaced once older than
# _STREAM_RENEW_S (a new one takes the next requests while the old one answers those it has).
_STREAM_DEADLINE_S = 24 * 3600.0
_STREAM_RENEW_S = 3600.0
# replay.proto: the trailing metadata key of an InsertStream a shard refused for its limit.
INSERT_STREAM_LIMIT_KEY = "apexrl-insert-stream-limit"
# How long a shard that refused an insert stream (at its limit) gets unary inserts instead.
_UNARY_INSERTS_S = 30.0

Reply = replay_pb2.SampleTransitionsResponse
ReplyT = TypeVar("ReplyT")


class _ReplyStream(Generic[ReplyT]):
    """One streaming call to a shard (SampleStream, InsertStream): requests go out as they are
    sent, and a reader thread queues the replies, which come back in the requests' order."""

    def __init__(
        self, method: grpc.StreamStreamMultiCallable[Any, Any], unwrap: Callable[[Any], ReplyT], name: str
    ) -> None:
        self._requests: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[ReplyT | grpc.RpcError] = queue.SimpleQueue()
        self._unwrap = unwrap
        self._call = method(iter(self._requests.get, None), timeout=_STREAM_DEADLINE_S)
        self.opened = time.monotonic()
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(self._unwrap(reply))
        except grpc.RpcError as error:
            self._replies.put(error)

    def send(self, request: Message) -> Callable[[float], ReplyT]:
        """Sends ``request``; the returned function waits at most its argument (s) for the reply."""
        self._requests.put(request)
        return self._receive

    def _receive(self, timeout_s: float) -> ReplyT:
        try:
            reply = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self.cancel()
            raise _NoReplyError() from None
        if isinstance(reply, grpc.RpcError):
            raise reply
        return reply

    def finish(self) -> None:
        """No more requests: the shard ends the stream after answering those sent."""
        self._requests.put(None)

    def cancel(self) -> None:
        self.finish()
        self._call.cancel()

    def join(self, timeout_s: float) -> None:
        """Waits for the reader, which ends once the call has ended (a cancelled one at once)."""
        self._reader.join(timeout_s)


def _sampled(reply: replay_pb2.SampleStreamResponse) -> Reply:
    return reply.sample


def _inserted(reply: replay_pb2.InsertStreamResponse) -> replay_pb2.InsertTransitionsResponse:
    return reply.insert


def _insert_stream_refused(error: grpc.RpcError) -> bool:
    """Whether a shard refused to open an insert stream: at its limit, or from before InsertStream."""
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return True
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    trailing = getattr(error, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    return any(key == INSERT_STREAM_LIMIT_KEY for key, _ in metadata or ())


def _future_result(future: Any, _timeout_s: float) -> Reply:
    """A unary call's reply (its future has the call's own timeout)."""
    reply: Reply = future.result()
    return reply


@dataclass(frozen=True)
class _Draw:
    """A batch whose parts were asked of the shards: each part's reply, waited for by ``replies``."""

    batch_size: int
    max_wait_s: float
    eligible: list[int]
    split_probabilities: NDArray[np.float64]
    replies: dict[int, Callable[[float], Reply]]


@dataclass(frozen=True)
class ShardedSample:
    """A global prioritized batch; ``shards`` and ``keys`` route priority updates back.

    ``column_parts`` are the columns as each shard's reply brought them, in the order of
    the rows (over the replies' own buffers: nothing copied yet); ``columns`` joins them.
    """

    shards: NDArray[np.int64]
    keys: NDArray[np.int64]
    probabilities: NDArray[np.float64]
    importance_weights: NDArray[np.float32]
    column_parts: tuple[Mapping[str, Column], ...]
    total_size: int

    @cached_property
    def columns(self) -> dict[str, Column]:
        """The batch's columns, each joined over the shards' parts (a copy, made once)."""
        if len(self.column_parts) == 1:
            return dict(self.column_parts[0])
        names = self.column_parts[0].keys()
        return {name: join_rows([part[name] for part in self.column_parts]) for name in names}

    def pieces(self, parts: int, rng: np.random.Generator) -> list[SamplePiece]:
        """``parts`` batches of equal size from this one, each itself a valid prioritized batch.

        The items are independent draws, so a random permutation cut into equal pieces
        gives independent batches; each piece's importance weights are renormalized by
        its own maximum, as one batch's are. The batch size must divide evenly. A piece
        keeps its rows in the batch's order (any order of independent draws is as good),
        so the rows from one shard's reply lie together; it copies nothing until it is
        written out (:meth:`SamplePiece.write_into`).
        """
        size = self.keys.shape[0]
        if parts < 1 or size % parts:
            raise ValueError(f"cannot split a batch of {size} into {parts} equal parts")
        if parts == 1:
            return [SamplePiece(self, np.arange(size))]
        cuts = rng.permutation(size).reshape(parts, size // parts)
        return [SamplePiece(self, np.sort(rows)) for rows in cuts]

    def split(self, parts: int, rng: np.random.Generator) -> list[ShardedSample]:
        """:meth:`pieces`, each copied out as a batch of its own."""
        if parts == 1:
            self.pieces(1, rng)  # the same checks
            return [self]
        return [piece.materialize() for piece in self.pieces(parts, rng)]


@dataclass(frozen=True)
class SamplePiece:
    """The rows ``rows`` (ascending) of a sampled batch, as a batch of their own."""

    sample: ShardedSample
    rows: NDArray[np.int64]

    @property
    def shards(self) -> NDArray[np.int64]:
        return self.sample.shards[self.rows]

    @property
    def keys(self) -> NDArray[np.int64]:
        return self.sample.keys[self.rows]

    @property
    def importance_weights(self) -> NDArray[np.float32]:
        weights: NDArray[np.float32] = self.sample.importance_weights[self.rows]
        normalized: NDArray[np.float32] = weights / weights.max()
        return normalized

    def column_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """Each column's decoded shape and dtype for this piece."""
        count = len(self.rows)
        first = self.sample.column_parts[0]
        return {name: ((count, *column.shape[1:]), column.dtype) for name, column in first.items()}

    def _by_part(self) -> list[tuple[Mapping[str, Column], slice, NDArray[np.int64]]]:
        """For each shard's part: where its rows go in this piece, and which of its rows they are."""
        placed, offset = [], 0
        for part in self.sample.column_parts:
            count = len(next(iter(part.values())))
            begin, end = np.searchsorted(self.rows, [offset, offset + count])
            if end > begin:
                placed.append((part, slice(int(begin), int(end)), self.rows[begin:end] - offset))
            offset += count
        return placed

    def write_into(self, out: Mapping[str, NDArray[Any]]) -> None:
        """Writes the piece's columns, decoded, into ``out`` (one array per column, of its shape).

        Dense rows go from the replies' buffers straight into ``out``: one copy.
        """
        for part, into, rows in self._by_part():
            for name, column in part.items():
                target = out[name][into]
                if isinstance(column, EncodedItems):
                    np.copyto(target, decompress(column.take(rows)))
                else:
                    np.take(column, rows, axis=0, out=target)

    def materialize(self) -> ShardedSample:
        placed = self._by_part()
        names = self.sample.column_parts[0].keys()
        columns = {
            name: join_rows([take_rows(part[name], rows) for part, _, rows in placed]) for name in names
        }
        return ShardedSample(
            shards=self.shards,
            keys=self.keys,
            probabilities=self.sample.probabilities[self.rows],
            importance_weights=self.importance_weights,
            column_parts=(columns,),
            total_size=self.sample.total_size,
        )


@dataclass
class _Shard:
    address: str
    stub: replay_pb2_grpc.ReplayServiceStub
    channel: grpc.Channel
    total_mass: float = 0.0
    size: int = 0
    capacity: int = 0
    min_size_to_sample: int = 1
    down_until: float = 0.0
    backoff_s: float = 0.0
    known: bool = False
    failures: int = field(default=0)
    # Until then inserts go unary: the shard refused an insert stream (at its limit).
    unary_inserts_until: float = 0.0

    def sampleable(self, now: float) -> bool:
        return (
            self.known
            and now >= self.down_until
            and self.size >= self.min_size_to_sample
            and self.total_mass > 0
        )


class ShardedReplayClient:
    """Samples, inserts and updates priorities over shards; a shard that is down is skipped meanwhile.

    Samples go over one SampleStream per shard (``stream_samples``; a shard without it is sampled
    with unary calls instead). With ``stream_inserts``, inserts go over one InsertStream per
    shard: a shard serves them at lower cost than unary calls, but each stream adds two threads
    to this process (gRPC's request sender and the reply reader), which take the interpreter
    lock at every batch. An acting thread ran slower beside them, so actors insert from a
    process of their own (services/actor/transport.py). With ``lookahead`` n, the parts of
    the next n batches are asked for before a batch is waited for, so the shards draw them
    while it is on the wire: a batch
    is then drawn up to n calls before :meth:`sample` returns it, with the priorities of that
    moment (a prefetching learner's batches are that old anyway). Its probabilities stay exact:
    the split's and the shards' totals come with it.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        seed: int | None = None,
        timeout_s: float = 10.0,
        info_refresh_s: float = 0.5,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: SecuritySettings | None = None,
        stream_samples: bool = True,
        stream_inserts: bool = False,
        lookahead: int = 0,
    ) -> None:
        """``security``: the process's (services/common/security.py) unless given."""
        if not addresses:
            raise ValueError("at least one replay shard address is needed")
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self._shards = []
        for address in addresses:
            channel = create_channel(address, max_message_bytes, security=security)
            self._shards.append(_Shard(address, replay_pb2_grpc.ReplayServiceStub(channel), channel))
        self._rng = np.random.default_rng(seed)
        self._timeout_s = timeout_s
        self._info_refresh_s = info_refresh_s
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._refreshed_at = -np.inf
        self._next_insert_shard = 0
        self._stream_samples = stream_samples
        self._lookahead = lookahead
        self._streams: dict[int, _ReplyStream[Reply]] = {}
        self._stream_inserts = stream_inserts
        self._insert_streams: dict[int, _ReplyStream[replay_pb2.InsertTransitionsResponse]] = {}
        self._pending: deque[_Draw] = deque()

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def shards_up(self) -> int:
        now = time.monotonic()
        return sum(1 for shard in self._shards if shard.known and now >= shard.down_until)

    def totals(self) -> tuple[int, int]:
        """Items held and capacity over the shards known to be up, as last seen."""
        now = time.monotonic()
        up = [shard for shard in self._shards if shard.known and now >= shard.down_until]
        return sum(shard.size for shard in up), sum(shard.capacity for shard in up)

    def close(self) -> None:
        streams: list[_ReplyStream[Any]] = [*self._streams.values(), *self._insert_streams.values()]
        self._abandon_draws()
        for inserting in self._insert_streams.values():
            inserting.cancel()
        self._insert_streams.clear()
        for stream in streams:
            stream.join(timeout_s=5.0)
        for shard in self._shards:
            shard.channel.close()

    # Shard health -----------------------------------------------------------------

    def _mark_down(self, index: int, error: grpc.RpcError) -> None:
        shard = self._shards[index]
        shard.backoff_s = min(self._max_backoff_s, max(self._min_backoff_s, 2 * shard.backoff_s))
        shard.down_until = time.monotonic() + shard.backoff_s
        shard.failures += 1
        # Its cached totals are unknown until a GetInfo after the backoff confirms it is back.
        shard.known = False
        logger.warning(
            "replay shard unreachable shard=%d address=%s code=%s retry_in_s=%.2f",
            index,
            shard.address,
            error.code().name,
            shard.backoff_s,
        )

    def _mark_up(self, index: int) -> None:
        shard = self._shards[index]
        if shard.failures:
            logger.info("replay shard back shard=%d address=%s", index, shard.address)
        shard.backoff_s = 0.0
        shard.failures = 0

    def refresh(self) -> None:
        """Asks every shard that is not backing off for its totals, size and capacity."""
        now = time.monotonic()
        futures = {
            index: shard.stub.GetInfo.future(replay_pb2.GetInfoRequest(), timeout=self._timeout_s)
            for index, shard in enumerate(self._shards)
            if now >= shard.down_until
        }
        for index, future in futures.items():
            try:
                info = future.result()
            except grpc.RpcError as error:
                self._mark_down(index, error)
                continue
            shard = self._shards[index]
            shard.total_mass, shard.size = info.total_priority_mass, info.size
            shard.min_size_to_sample, shard.capacity = info.min_size_to_sample, info.capacity
            shard.known = True
            self._mark_up(index)
        self._refreshed_at = time.monotonic()

    # Sampling ---------------------------------------------------------------------

    def sample(self, batch_size: int, importance_exponent: float, max_wait_s: float = 0.0) -> ShardedSample:
        """One batch drawn as if from a single buffer; ReplayUnavailableError when no shard can serve."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if time.monotonic() - self._refreshed_at >= self._info_refresh_s:
            self.refresh()
        excluded: set[int] = set()
        # Each failed attempt removes at least one shard, so K + 1 attempts suffice (and one
        # more for a shard found to lack SampleStream).
        for _ in range(len(self._shards) + 2):
            draw = self._next_draw(batch_size, max_wait_s, excluded)
            if draw is None:
                break
            result = self._complete(draw, importance_exponent)
            if isinstance(result, ShardedSample):
                return result
            excluded |= result
        raise ReplayUnavailableError(
            f"no replay shard can be sampled now ({self.shards_up()} of {len(self._shards)} reachable)"
        )

    def _next_draw(self, batch_size: int, max_wait_s: float, excluded: set[int]) -> _Draw | None:
        """The oldest draw asked ahead if it is of this kind, else a new one; then ``lookahead``
        more are asked for. None when no shard can be sampled."""
        if self._pending and (self._pending[0].batch_size, self._pending[0].max_wait_s) != (
            batch_size,
            max_wait_s,
        ):
            self._abandon_draws()
        draw = self._pending.popleft() if self._pending else self._ask(batch_size, max_wait_s, excluded)
        while draw is not None and len(self._pending) < self._lookahead:
            ahead = self._ask(batch_size, max_wait_s, excluded)
            if ahead is None:
                break
            self._pending.append(ahead)
        return draw

    def _ask(self, batch_size: int, max_wait_s: float, excluded: set[int]) -> _Draw | None:
        """Splits a batch over the shards that can be sampled and asks each for its part."""
        now = time.monotonic()
        eligible = [i for i, s in enumerate(self._shards) if s.sampleable(now) and i not in excluded]
        if not eligible:
            return None
        split_totals = np.array([self._shards[i].total_mass for i in eligible], dtype=np.float64)
        split_probabilities = split_totals / split_totals.sum()
        counts = self._rng.multinomial(batch_size, split_probabilities)
        replies = {
            shard_index: self._send(
                shard_index, replay_pb2.SampleTransitionsRequest(batch_size=int(count), max_wait_s=max_wait_s)
            )
            for shard_index, count in zip(eligible, counts, strict=True)
            if count > 0
        }
        return _Draw(batch_size, max_wait_s, eligible, split_probabilities, replies)

    def _send(self, index: int, request: replay_pb2.SampleTransitionsRequest) -> Callable[[float], Reply]:
        """Asks shard ``index`` for a sample; the result waits for its reply."""
        stub = self._shards[index].stub
        if not self._stream_samples:
            future = stub.SampleTransitions.future(request, timeout=self._timeout_s + request.max_wait_s)
            return partial(_future_result, future)
        stream = self._streams.get(index)
        if stream is None or time.monotonic() - stream.opened > _STREAM_RENEW_S:
            if stream is not None:
                stream.finish()
            stream = self._streams[index] = _ReplyStream(stub.SampleStream, _sampled, "sample-stream")
        return stream.send(replay_pb2.SampleStreamRequest(sample=request))

    def _abandon_draws(self) -> None:
        """Forgets the draws asked ahead, and the streams that would still answer them."""
        self._pending.clear()
        for stream in self._streams.values():
            stream.cancel()
        self._streams.clear()

    def _complete(self, draw: _Draw, importance_exponent: float) -> ShardedSample | set[int]:
        """Waits for the draw's parts; on any shard failure returns the shards to leave out."""
        replies: dict[int, Reply] = {}
        failed: set[int] = set()
        unimplemented = False
        for shard_index, receive in draw.replies.items():
            try:
                replies[shard_index] = receive(self._timeout_s + draw.max_wait_s)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNIMPLEMENTED and self._stream_samples:
                    unimplemented = True
                    continue
                failed.add(shard_index)
                if code in _DOWN_CODES:
                    self._mark_down(shard_index, error)
                elif code not in _NOT_NOW_CODES:
                    self._abandon_draws()
                    raise
        for shard_index, reply in replies.items():
            shard = self._shards[shard_index]
            shard.total_mass, shard.size = reply.total_priority_mass, reply.size
        if unimplemented:
            # A shard from before SampleStream: every shard is sampled with unary calls from now.
            logger.warning("a replay shard has no SampleStream; sampling with unary calls")
            self._stream_samples = False
        if failed or unimplemented:
            # Keeping the other shards' items would bias the batch; draw it again without these.
            self._abandon_draws()
            return failed
        return self._assemble(
            draw.eligible, draw.split_probabilities, replies, draw.batch_size, importance_exponent
        )

    def _assemble(
        self,
        eligible: list[int],
        split_probabilities: NDArray[np.float64],
        replies: Mapping[int, replay_pb2.SampleTransitionsResponse],
        batch_size: int,
        importance_exponent: float,
    ) -> ShardedSample:
        share = dict(zip(eligible, split_probabilities, strict=True))
        shards, keys, probabilities, column_parts = [], [], [], []
        for shard_index, reply in replies.items():
            reply_keys = tensor_codec.decode(reply.keys, "keys")
            masses = tensor_codec.decode(reply.priority_masses, "priority_masses").astype(np.float64)
            shards.append(np.full(reply_keys.shape[0], shard_index, dtype=np.int64))
            keys.append(reply_keys.astype(np.int64, copy=False))
            probabilities.append(share[shard_index] * masses / reply.total_priority_mass)
            column_parts.append(tensor_codec.decode_columns(reply.batch))
        signature = {name: _kind(column) for name, column in column_parts[0].items()}
        for parts in column_parts[1:]:
            if {name: _kind(column) for name, column in parts.items()} != signature:
                raise ValueError(f"shards hold different columns: {sorted(signature)} vs {sorted(parts)}")
        probability = np.concatenate(probabilities)
        total_size = sum(self._shards[i].size for i in eligible)
        weights = (total_size * probability) ** -importance_exponent
        weights /= weights.max()
        assert probability.shape == (batch_size,)
        return ShardedSample(
            shards=np.concatenate(shards),
            keys=np.concatenate(keys),
            probabilities=probability,
            importance_weights=weights.astype(np.float32),
            column_parts=tuple(column_parts),
            total_size=total_size,
        )

    # Writing ----------------------------------------------------------------------

    def update_priorities(
        self, shards: NDArray[np.int64], keys: NDArray[np.int64], priorities: NDArray[np.floating]
    ) -> int:
        """Sends each key's new priority to the shard that holds it; returns how many were applied.

        Updates meant for a shard that is down are dropped: its items' keys are
        stale after it restarts anyway.
        """
        calls = {}
        for shard_index in np.unique(shards):
            mask = shards == shard_index
            calls[int(shard_index)] = self._shards[int(shard_index)].stub.UpdatePriorities.future(
                replay_pb2.UpdatePrioritiesRequest(
                    keys=tensor_codec.encode(keys[mask]),
                    priorities=tensor_codec.encode(np.asarray(priorities[mask], dtype=np.float64)),
                ),
                timeout=self._timeout_s,
            )
        updated = 0
        for shard_index, call in calls.items():
            try:
                updated += call.result().updated
            except grpc.RpcError as error:
                if error.code() not in _DOWN_CODES:
                    raise
                self._mark_down(shard_index, error)
        return updated

    def insert(
        self,
        columns: Mapping[str, Column],
        priorities: NDArray[np.floating],
        max_wait_s: float = 0.0,
    ) -> tuple[int, NDArray[np.int64]]:
        """Inserts into the next shard not backing off (round robin); returns the shard and the keys.

        A shard found down is marked so and the next one is tried, each at most once:
        ReplayUnavailableError when none took the batch, InsertRefusedError for any other failure.
        """
        request = replay_pb2.InsertTransitionsRequest(max_wait_s=max_wait_s)
        tensor_codec.encode_columns_into(request.batch, columns)
        tensor_codec.encode_into(request.priorities, np.asarray(priorities, dtype=np.float32))
        for _ in range(len(self._shards)):
            shard_index = self._next_insert_shard
            self._next_insert_shard = (shard_index + 1) % len(self._shards)
            shard = self._shards[shard_index]
            if time.monotonic() < shard.down_until:
                continue
            try:
                reply = self._insert_into(shard_index, request, self._timeout_s + max_wait_s)
            except grpc.RpcError as error:
                if error.code() not in _DOWN_CODES:
                    raise InsertRefusedError(shard_index, shard.address, error) from error
                self._mark_down(shard_index, error)
                continue
            self._mark_up(shard_index)
            return shard_index, tensor_codec.decode(reply.keys, "keys").astype(np.int64, copy=False)
        raise ReplayUnavailableError(
            f"no replay shard accepted the insert: all {len(self._shards)} are down or backing off"
        )

    def _insert_into(
        self, index: int, request: replay_pb2.InsertTransitionsRequest, timeout_s: float
    ) -> replay_pb2.InsertTransitionsResponse:
        """Shard ``index``'s answer to one insert: over its InsertStream, or unary where it has none.

        One insert is in flight per stream (the caller waits for each), so a failure is this
        request's alone, as a unary call's would be; the stream ends with it and the next insert
        opens another. A shard at its limit of insert streams, or from before InsertStream, is
        sent the same request unary at once (nothing was stored: the shard refused the stream
        before reading it), and unary inserts for a while.
        """
        shard = self._shards[index]
        now = time.monotonic()
        if not self._stream_inserts or now < shard.unary_inserts_until:
            return shard.stub.InsertTransitions(request, timeout=timeout_s)
        stream = self._insert_streams.get(index)
        if stream is None or now - stream.opened > _STREAM_RENEW_S:
            if stream is not None:
                stream.finish()
            stream = _ReplyStream(shard.stub.InsertStream, _inserted, "insert-stream")
            self._insert_streams[index] = stream
        try:
            return stream.send(replay_pb2.InsertStreamRequest(insert=request))(timeout_s)
        except grpc.RpcError as error:
            del self._insert_streams[index]
            stream.cancel()
            if not _insert_stream_refused(error):
                raise
            refusal = error.code()
        if refusal == grpc.StatusCode.UNIMPLEMENTED:
            logger.warning("replay shard has no InsertStream; inserting unary shard=%d", index)
            shard.unary_inserts_until = np.inf
        else:
            shard.unary_inserts_until = now + _UNARY_INSERTS_S
        return shard.stub.InsertTransitions(request, timeout=timeout_s)
