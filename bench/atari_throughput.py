"""Atari end to end: actor steps/s against a bare loop, learner updates/s against an in-process buffer.

Usage: ``.venv/bin/python bench/atari_throughput.py [--seconds 45] [--actors 1,2,4] [--repeats 3]
[--runs 3] [--device cpu] [--skip actors|learner]``. Both halves run the pong preset:

* actors: real ``apexrl actor`` processes (the preset's 4 environments each, the standard
  preprocessing, the Nature CNN, compressed inserts into two replay shards), registered
  with a learner that serves parameters but does not train, against one process stepping
  the same environments with the same network, n-step builder and exploration, with no
  replay, learner or compression in between (as ``bench/actor_throughput.py`` does for
  CartPole). A step is 4 emulator frames.
* learner: the preset's learner on real Pong transitions (random play, 3-step, compressed
  as actors send them) sampled from two remote shards through the feed process, which
  decompresses them, against the same learner sampling the same transitions, raw, from a
  table in its own process.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.actor_throughput import measure_actors
from bench.atari_frames import as_inserted, pong_transitions
from bench.learner_throughput import Stored, measure, report

PRESET = "pong"
FRAMES_PER_STEP = 4
# Transitions per shard for the learner half: real frames are slow to make and 56 KB raw.
ITEMS_PER_SHARD = 5_000
INSERT_BATCH = 256


def pong_data() -> Stored:
    transitions = pong_transitions(2 * ITEMS_PER_SHARD, seed=0)
    rng = np.random.default_rng(0)
    raw = [
        {name: column[first : first + INSERT_BATCH] for name, column in transitions.items()}
        for first in range(0, 2 * ITEMS_PER_SHARD, INSERT_BATCH)
    ]
    priorities = [rng.uniform(0.01, 1.0, len(part["reward"])) for part in raw]
    return Stored(raw, [as_inserted(part) for part in raw], priorities, ITEMS_PER_SHARD)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Actors report their steps every 400 steps: long windows keep that granularity small.
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of the actor half; medians reported.")
    parser.add_argument("--runs", type=int, default=3, help="Runs of the learner half; medians reported.")
    parser.add_argument("--device", default="cpu", help="The learner's device: cpu, cuda or auto.")
    parser.add_argument("--skip", choices=["actors", "learner"], default=None)
    arguments = parser.parse_args()
    if arguments.skip != "actors":
        counts = [int(value) for value in arguments.actors.split(",")]
        extra = {"frames_per_step": FRAMES_PER_STEP}
        measure_actors(PRESET, counts, arguments.seconds, arguments.repeats, "atari_throughput", extra)
    if arguments.skip != "learner":
        value, reference = measure(PRESET, arguments.device, arguments.runs, arguments.seconds, pong_data())
        report(PRESET, arguments.device, value, reference)


if __name__ == "__main__":
    main()
