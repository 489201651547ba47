"""The evaluator against a real learner: it reports evaluations and never drops out of the status."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from services.actor.evaluator import Evaluator
from services.actor.learner_client import LearnerClient
from services.actor.metrics import EvaluatorMetrics
from services.learner.learner import Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import small_config, wait_for

NAME = "evaluator-under-test"


def test_the_evaluator_stays_registered_while_it_waits_between_evaluations(
    start_shard: ShardFactory, tmp_path: Path
) -> None:
    # The learner forgets a client silent for 2 s; the evaluator waits 8 s between
    # evaluations, beating every 0.2 s meanwhile.
    shard = start_shard(capacity=1000)
    config = small_config("general.evaluation_interval_s=8")
    learner = Learner(config, LearnerSettings((shard.address,), tmp_path / "run", client_expiry_s=2.0))
    client = LearnerClient(learner.address, timeout_s=5.0)
    evaluator = Evaluator(client, NAME, EvaluatorMetrics(), heartbeat_interval_s=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=evaluator.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.status().latest_evaluation.episodes > 0, 60.0, "a first evaluation")
        # 5 s, well inside the 8 s wait that follows the evaluation, and 2.5 expiries long.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            names = [record.client_name for record in client.status().actors]
            assert NAME in names, "the evaluator dropped out of the learner's status"
            time.sleep(0.1)
        assert client.status().latest_evaluation.episodes > 0
    finally:
        stop.set()
        thread.join(timeout=10)
        client.close()
        learner.stop()
    assert not thread.is_alive()
