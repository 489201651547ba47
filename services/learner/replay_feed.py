"""The learner's link to the replay: batches prefetched on one thread, priority updates sent on another."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from numpy.typing import NDArray

from services.common.sharded_replay import ReplayUnavailableError, SamplePiece, ShardedReplayClient

logger = logging.getLogger(__name__)

# How long a sample may wait on the shards' samples-per-insert limiter for actors
# to catch up, before the prefetcher backs off and asks again.
_SAMPLE_WAIT_S = 1.0
# Sample requests asked of each shard ahead of the one waited for: the shard draws the next
# while the last is on the wire (docs/replay.md, "Sampling over a stream").
_LOOKAHEAD = 1


class BatchPrefetcher:
    """Keeps a few sampled batches ready so the optimizer never waits on the network.

    Sampling starts once the shards together hold ``min_replay_size`` items (the
    learning-starts threshold). The client is owned by this thread alone. Each request
    draws ``batches_per_request`` batches at once and splits them: a sample costs about
    as much per request as per item, so this cuts the learner's share of RPC work; and the
    next request is asked for before this one's reply is waited for.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        batch_size: int,
        importance_exponent: Callable[[], float],
        min_replay_size: int,
        seed: int,
        batches_per_request: int = 1,
        depth: int = 8,
    ) -> None:
        if batches_per_request < 1:
            raise ValueError(f"batches_per_request must be >= 1, got {batches_per_request}")
        self._client = ShardedReplayClient(addresses, seed=seed, lookahead=_LOOKAHEAD)
        self._rng = np.random.default_rng(seed)
        self._batch_size = batch_size
        self._batches_per_request = batches_per_request
        self._importance_exponent = importance_exponent
        self._min_replay_size = min_replay_size
        # None: no batch, a get() woken by wake().
        self._batches: queue.Queue[SamplePiece | None] = queue.Queue(maxsize=max(depth, batches_per_request))
        self._stop = threading.Event()
        self.replay_size = 0
        self.replay_capacity = 0
        self.shards_up = 0
        self.sample_seconds = 0.0
        self._quiet_until = 0.0
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def start(self) -> BatchPrefetcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._fetch_one()
            except (ReplayUnavailableError, grpc.RpcError) as error:
                # Expected while actors warm up or a shard restarts: say so now and then, not per try.
                if time.monotonic() >= self._quiet_until:
                    self._quiet_until = time.monotonic() + 10.0
                    logger.warning("replay sampling failed error=%s", error)
                self._stop.wait(0.2)

    def _fetch_one(self) -> None:
        self.replay_size, self.replay_capacity = self._client.totals()
        self.shards_up = self._client.shards_up()
        if self.replay_size < self._min_replay_size:
            self._client.refresh()
            self.replay_size, self.replay_capacity = self._client.totals()
            if self.replay_size < self._min_replay_size:
                self._stop.wait(0.1)
                return
        started = time.perf_counter()
        sample = self._client.sample(
            self._batch_size * self._batches_per_request,
            self._importance_exponent(),
            max_wait_s=_SAMPLE_WAIT_S,
        )
        self.sample_seconds = time.perf_counter() - started
        self.replay_size = sample.total_size
        pending = sample.pieces(self._batches_per_request, self._rng)
        while pending and not self._stop.is_set():
            try:
                self._batches.put(pending[0], timeout=0.2)
                pending.pop(0)
            except queue.Full:
                continue

    def get(self, timeout_s: float) -> SamplePiece | None:
        """The next batch: rows of a sample, written out (decoded) by whoever takes it; None if
        none came within ``timeout_s`` or :meth:`wake` was called."""
        try:
            return self._batches.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def wake(self) -> None:
        """Makes a :meth:`get` that waits now return None at once (its caller is stopping)."""
        with contextlib.suppress(queue.Full):  # full: a get returns a batch at once anyway
            self._batches.put_nowait(None)

    def stop(self) -> None:
        """Ends the thread without waiting out its polls: the batches held are dropped, so a put
        waiting for room returns at once and the thread sees the stop."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._batches.get_nowait()
        self._thread.join(timeout=10)
        self._client.close()


class PrioritySender:
    """Sends new priorities back to the shards without blocking the next update.

    A request costs the shards far more than the items in it, so updates are
    gathered until ``min_items`` keys are waiting or the oldest has waited
    ``max_delay_s``, then go out together, one request per shard. For a key updated
    twice the later priority wins, as it would one by one.
    """

    def __init__(
        self, addresses: Sequence[str], min_items: int = 1, max_delay_s: float = 0.05, depth: int = 64
    ) -> None:
        self._client = ShardedReplayClient(addresses)
        self._min_items = min_items
        self._max_delay_s = max_delay_s
        self._updates: queue.Queue[
            tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]] | None
        ] = queue.Queue(maxsize=depth)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="priorities", daemon=True)

    def start(self) -> PrioritySender:
        self._thread.start()
        return self

    def send(
        self, shards: NDArray[np.int64], keys: NDArray[np.int64], priorities: NDArray[np.float64]
    ) -> None:
        """Queues an update; if the shards fall far behind, this update is dropped (and counted)."""
        try:
            self._updates.put_nowait((shards, keys, priorities))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        stopping = False
        while not stopping:
            update = self._updates.get()
            if update is None:
                return
            updates, items = [update], len(update[1])
            deadline = time.monotonic() + self._max_delay_s
            while items < self._min_items and (remaining := deadline - time.monotonic()) > 0:
                try:
                    update = self._updates.get(timeout=remaining)
                except queue.Empty:
                    break
                if update is None:
                    stopping = True
                    break
                updates.append(update)
                items += len(update[1])
            shards, keys, priorities = (np.concatenate(parts) for parts in zip(*updates, strict=True))
            try:
                self._client.update_priorities(shards, keys, priorities)
            except grpc.RpcError as error:
                logger.warning("priority update failed code=%s", error.code().name)

    def stop(self) -> None:
        self._updates.put(None)
        self._thread.join(timeout=10)
        self._client.close()
