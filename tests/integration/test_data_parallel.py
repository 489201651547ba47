"""Two data-parallel learners (gloo) end every update where one learner ends on the whole batch."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.launcher.ports import pick_free_ports
from tests.integration.data_parallel_worker import core_and_environment, train

ROOT = Path(__file__).resolve().parents[2]


# Updates per algorithm: TD3's include 6 policy steps (policy_delay 2). SAC's differences in
# the last float bits grow faster (its sampled actions pass through tanh and log pi), so
# its tolerance holds for fewer updates.
UPDATES = {"cartpole": 12, "pendulum": 12, "pendulum-sac": 4}


@pytest.mark.parametrize("preset", sorted(UPDATES))
def test_two_learners_take_the_steps_of_one_learner_on_the_concatenated_batches(
    preset: str, tmp_path: Path
) -> None:
    (port,) = pick_free_ports(1)
    outputs = [tmp_path / f"rank-{rank}.safetensors" for rank in range(2)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.data_parallel_worker",
                "--preset",
                preset,
                "--rank",
                str(rank),
                "--world-size",
                "2",
                "--address",
                f"127.0.0.1:{port}",
                "--updates",
                str(UPDATES[preset]),
                "--out",
                str(output),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, output in enumerate(outputs)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, output[-3000:]

    single, environment = core_and_environment(preset)
    train(single, environment, UPDATES[preset], slice(None))
    expected = single.state_tensors()
    ranks = [load_file(str(output)) for output in outputs]
    assert set(ranks[0]) == set(ranks[1]) == set(expected)
    for name, tensor in expected.items():
        # Both learners hold the same networks, optimizer moments and generator states...
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        # ... and they are the single learner's, up to the order of float additions.
        if tensor.is_floating_point():
            named = functools.partial("{}: {}".format, name)
            torch.testing.assert_close(ranks[0][name], tensor, rtol=1e-4, atol=1e-5, msg=named)
        else:
            assert torch.equal(ranks[0][name], tensor), name
