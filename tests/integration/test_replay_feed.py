"""The replay feed process: batches through shared memory, priorities back to the right shards."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from services.common.sharded_replay import ShardedReplayClient
from services.learner.feed_process import FeedBatch, ReplayFeed
from services.learner.replay_feed import PrioritySender
from services.replay.shard import ReplayShard
from tests.integration.conftest import ShardFactory, transitions
from tests.integration.training_fixtures import wait_for


def two_shards(start_shard: ShardFactory, items: int) -> tuple[list[ReplayShard], ShardedReplayClient]:
    shards = [start_shard(capacity=1000) for _ in range(2)]
    client = ShardedReplayClient([shard.address for shard in shards], seed=0)
    client.insert(transitions(0, items // 2), np.ones(items // 2))
    client.insert(transitions(items // 2, items - items // 2), np.ones(items - items // 2))
    return shards, client


def next_batch(feed: ReplayFeed) -> FeedBatch:
    batch = feed.get(timeout_s=30.0)
    assert batch is not None, "no batch from the feed within 30 s"
    return batch


def test_batches_hold_stored_items_and_priorities_reach_their_shards(start_shard: ShardFactory) -> None:
    shards, _ = two_shards(start_shard, 200)
    feed = ReplayFeed([s.address for s in shards], 32, 0.4, 1, seed=0, batches_per_request=4).start()
    try:
        batch = next_batch(feed)
        actions = batch.columns["action"]
        assert actions.shape == (32,)
        # Every row is a stored item: its observation repeats its index, and the columns agree.
        np.testing.assert_array_equal(batch.columns["observation"], np.repeat(actions[:, None], 4, 1))
        np.testing.assert_array_equal(batch.columns["next_observation"], batch.columns["observation"] + 1)
        assert batch.importance_weights.shape == (32,)
        assert batch.importance_weights.max() == pytest.approx(1.0)
        zeroed = {int(a) for a in actions}
        feed.release(batch, np.zeros(32), 0.5)
        # Only the released batch changes priorities: every other batch stays with the learner.
        wait_for(
            lambda: (
                sum(s.table.info().total_priority_mass for s in shards) == pytest.approx(200 - len(zeroed))
            ),
            10.0,
            "the released priorities to reach the shards",
        )
        assert (feed.replay_size, feed.replay_capacity, feed.shards_up) == (200, 2000, 2)
    finally:
        feed.stop()


def test_no_batch_before_the_shards_hold_min_replay_size(start_shard: ShardFactory) -> None:
    shards, client = two_shards(start_shard, 50)
    feed = ReplayFeed([s.address for s in shards], 16, 0.4, 100, seed=0).start()
    try:
        assert feed.get(timeout_s=1.0) is None
        client.insert(transitions(50, 60), np.ones(60))
        assert next_batch(feed).columns["action"].shape == (16,)
    finally:
        feed.stop()


def test_a_killed_feed_process_is_started_again_and_stop_leaves_none(start_shard: ShardFactory) -> None:
    shards, _ = two_shards(start_shard, 100)
    feed = ReplayFeed([s.address for s in shards], 16, 0.4, 1, seed=0).start()
    try:
        first = next_batch(feed)
        feed.release(first, np.ones(16), 0.4)
        pid = feed.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # Batches the killed process announced before it died may still come first; each is
        # whole (a slot is written before it is announced), and releasing one is ignored.
        batch = next_batch(feed)
        for _ in range(2 * 4):
            if feed.pid != pid:
                break
            feed.release(batch, np.ones(16), 0.4)
            batch = next_batch(feed)
        restarted = feed.pid
        np.testing.assert_array_equal(batch.columns["next_observation"], batch.columns["observation"] + 1)
        assert batch.generation == first.generation + 1
        feed.release(batch, np.ones(16), 0.4)
    finally:
        feed.stop()
    assert restarted is not None
    assert restarted != pid
    assert feed.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(restarted, 0)


def test_priority_updates_are_gathered_into_one_request_and_the_later_priority_wins(
    start_shard: ShardFactory,
) -> None:
    shards, client = two_shards(start_shard, 100)
    sample = client.sample(40, importance_exponent=0.4)
    distinct = len({(int(s), int(k)) for s, k in zip(sample.shards, sample.keys, strict=True)})

    def applied() -> int:
        return sum(s.table.info().priority_updates for s in shards)

    sender = PrioritySender([s.address for s in shards], min_items=80, max_delay_s=30.0).start()
    try:
        sender.send(sample.shards, sample.keys, np.full(40, 0.5))
        time.sleep(0.5)
        assert applied() == 0, "40 of 80 items: the update waits for more"
        sender.send(sample.shards, sample.keys, np.full(40, 2.0))
        wait_for(lambda: applied() == 80, 10.0, "the gathered update to reach the shards")
    finally:
        sender.stop()
    total = sum(s.table.info().total_priority_mass for s in shards)
    assert total == pytest.approx(100 - distinct + distinct * 2.0**0.6)
