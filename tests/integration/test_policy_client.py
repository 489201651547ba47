"""PolicyClient against a real learner: the experiment's policy, new versions, the served example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from services.learner.learner import Learner
from services.policy_client import PolicyClient

ROOT = Path(__file__).resolve().parents[2]


def publish_changed(learner: Learner) -> int:
    core = learner.core
    with torch.no_grad():
        for tensor in core.policy_parameters().values():
            tensor.add_(0.5)
    return learner.store.publish(core.actor_parameters(), core.policy_parameters(), core.updates)


def greedy(learner: Learner, observations: np.ndarray) -> list[int]:
    with torch.no_grad():
        q_values = learner.core.online(torch.as_tensor(observations))  # type: ignore[attr-defined]
    return [int(action) for action in q_values.argmax(dim=1)]


def test_the_client_acts_greedily_with_the_learners_latest_policy(learner: Learner) -> None:
    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with PolicyClient(learner.address, refresh_s=3600) as policy:
        assert (policy.version, policy.lineage) == (learner.store.version, learner.store.lineage)
        assert policy.environment_id == "CartPole-v1"
        assert policy.act_batch(observations).tolist() == greedy(learner, observations)
        assert isinstance(policy.act(observations[0]), int)
        version = publish_changed(learner)
        assert policy.refresh()
        assert policy.version == version
        assert policy.act_batch(observations).tolist() == greedy(learner, observations)
        assert not policy.refresh()  # nothing newer
        with pytest.raises(ValueError, match=r"observations of shape \(2, 3\) do not fit CartPole-v1"):
            policy.act_batch(np.zeros((2, 3)))


def test_the_served_example_answers_actions_from_a_running_learner(learner: Learner) -> None:
    example = subprocess.Popen(
        [sys.executable, "docs/examples/serve_actions.py", "--learner", learner.address, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert example.stdout is not None
        line = example.stdout.readline()
        match = re.search(r"serving actions address=(\S+)", line)
        assert match is not None, line
        url = f"http://{match.group(1)}/act"
        observations = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
        request = urllib.request.Request(
            url, data=json.dumps({"observations": observations.tolist()}).encode()
        )
        reply = json.loads(urllib.request.urlopen(request, timeout=30).read())
        assert reply == {"actions": greedy(learner, observations), "parameter_version": learner.store.version}
        bad = urllib.request.Request(url, data=json.dumps({"observations": [[1.0, 2.0]]}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        assert refused.value.code == 400
    finally:
        example.terminate()
        example.wait(timeout=30)
