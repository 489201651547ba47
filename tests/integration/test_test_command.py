"""``apexrl test`` on real run folders (``apexrl run`` for a few seconds) and on files the learner writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
import yaml
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from PIL import Image, ImageSequence
from safetensors import safe_open
from safetensors.numpy import save_file
from typer.testing import CliRunner, Result

from services.actor.actor import build_policy, make_spec_environment
from services.actor.evaluator import play_deterministic_episodes
from services.algorithms.experiment import ExperimentConfig, experiment_spec
from services.algorithms.training_state import prefixed
from services.cli import app
from services.common.config import validate
from services.learner.checkpoint import checkpoints, load_checkpoint
from services.learner.learner import BEST_MODEL, Learner, LearnerSettings
from tests.integration.conftest import ShardFactory
from tests.integration.training_fixtures import pong_checkpoint, small_config

ROOT = Path(__file__).resolve().parents[2]
# Seconds of training: enough for the evaluator to finish evaluations (a best model) and
# the learner to checkpoint as it stops.
RUN_BUDGET = (
    "--actors", "1", "--shards", "1",
    "--set", "general.seed=5", "--set", "general.device=cpu", "--set", "general.max_wall_time_s=8",
    "--set", "algorithm.min_replay_size=200",
)  # fmt: skip
EVALUATION_SEEDS = [5 + 1_000_000 + i for i in range(10)]  # the evaluator's: general.seed + 1e6 + i


def real_run(directory: Path, preset: str) -> Path:
    run_dir = directory / "run"
    result = subprocess.run(
        [sys.executable, "-m", "services", "run", preset, "--run-dir", str(run_dir), *RUN_BUDGET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "COLUMNS": "1000"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run_dir / BEST_MODEL).is_file(), "no evaluation finished in the budget: " + result.stdout[-2000:]
    assert checkpoints(run_dir / "checkpoints")
    return run_dir


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_run(tmp_path_factory.mktemp("cartpole"), "cartpole")


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_run(tmp_path_factory.mktemp("pendulum"), "pendulum")


def apexrl_test(*arguments: str | Path) -> Result:
    return CliRunner().invoke(app, ["test", *map(str, arguments)])


def report_of(*arguments: str | Path) -> dict[str, Any]:
    """The JSON report of a run that must succeed."""
    result = apexrl_test(*arguments, "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def refusal(*arguments: str | Path) -> str:
    """The one-line error of a run that must exit 2."""
    result = apexrl_test(*arguments)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def best_model_metadata(run_dir: Path) -> dict[str, str]:
    with safe_open(str(run_dir / BEST_MODEL), framework="pt") as reader:
        metadata: dict[str, str] = reader.metadata()
    return metadata


@pytest.mark.parametrize(("run", "family"), [("cartpole_run", "apex_dqn"), ("pendulum_run", "td3")])
def test_a_runs_best_model_plays_the_evaluation_that_made_it_best_again(
    request: pytest.FixtureRequest, run: str, family: str
) -> None:
    run_dir: Path = request.getfixturevalue(run)
    result = apexrl_test(run_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metadata = best_model_metadata(run_dir)
    assert report["model"] == str(run_dir / BEST_MODEL)
    assert report["kind"] == "best model"
    assert report["algorithm"] == family
    assert report["parameter_version"] == int(metadata["parameter_version"])
    # The config's 10 episodes with the evaluator's seeds, played as it plays them.
    assert report["seeds"] == EVALUATION_SEEDS
    assert report["return"]["mean"] == pytest.approx(float(metadata["mean_return"]), rel=1e-9)
    assert report["training_evaluation_return"] == pytest.approx(float(metadata["mean_return"]))
    returns, lengths = report["returns"], report["lengths"]
    assert (report["return"]["min"], report["return"]["max"]) == (min(returns), max(returns))
    assert report["length"]["mean"] == pytest.approx(sum(lengths) / 10)
    # The readable table went to stderr.
    assert f"model        {run_dir / BEST_MODEL} (best model, parameter version" in result.stderr
    assert [line.split()[0] for line in result.stderr.splitlines()[-2:]] == ["return", "length"]


def test_a_runs_checkpoints_are_tested_as_the_latest_by_name_or_as_a_file(cartpole_run: Path) -> None:
    newest = checkpoints(cartpole_run / "checkpoints")[-1]
    tensors, counters, config = load_checkpoint(newest)
    latest = report_of(cartpole_run, "--model", "latest", "--episodes", "3", "--seed", "7")
    assert latest["model"] == str(newest)
    assert latest["kind"] == "checkpoint"
    assert (latest["updates"], latest["parameter_version"]) == (counters.updates, counters.parameter_version)
    assert latest["seeds"] == [7, 8, 9]
    named = report_of(cartpole_run, "--checkpoint", newest.name, "--episodes", "3", "--seed", "7")
    direct = report_of(newest, "--episodes", "3", "--seed", "7")
    assert named["model"] == direct["model"] == str(newest)
    assert named["returns"] == direct["returns"] == latest["returns"]
    # The evaluator's own code, with the checkpoint's online Q network, plays the same episodes.
    spec = experiment_spec(validate(ExperimentConfig, yaml.safe_load(config), "checkpoint"))
    policy, environment = build_policy(spec)
    policy.load_parameters(prefixed(tensors, "online"))
    environments = [environment, make_spec_environment(spec), make_spec_environment(spec)]
    assert play_deterministic_episodes(policy, environments, seed=7) == latest["returns"]


def test_the_readable_table_names_the_model_and_the_statistics(cartpole_run: Path) -> None:
    result = apexrl_test(cartpole_run, "--episodes", "2", "--seed", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["episode", "seed", "return", "length"]
    assert [line.split()[:2] for line in lines[1:3]] == [["1", "0"], ["2", "1"]]
    assert "experiment   apex_dqn on CartPole-v1" in lines
    assert "episodes     2, seeds 0..1" in lines
    assert [(line.split()[0], len(line.split())) for line in lines[-2:]] == [("return", 5), ("length", 5)]


def gif_frames(path: Path) -> tuple[int, int]:
    """Frames and total duration (ms) of a GIF; Pillow merges identical frames, adding their time."""
    with Image.open(path) as image:
        durations = [int(frame.info["duration"]) for frame in ImageSequence.Iterator(image)]
    return len(durations), sum(durations)


def test_record_writes_a_gif_per_episode_with_a_frame_per_step(cartpole_run: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    arguments = ("--episodes", "2", "--max-steps", "40", "--record", videos, "--video-format", "gif")
    report = report_of(cartpole_run, *arguments)
    paths = [videos / "episode-001.gif", videos / "episode-002.gif"]
    assert report["videos"] == [str(path) for path in paths]
    for path, length in zip(paths, report["lengths"], strict=True):
        assert path.read_bytes()[:6] == b"GIF89a"
        frames, duration_ms = gif_frames(path)
        assert frames > 1
        # CartPole renders at 50 frames a second: 20 ms for the reset's frame and each step's.
        assert duration_ms == 20 * (length + 1)


def test_record_writes_mp4_where_imageio_ffmpeg_is_installed(cartpole_run: Path, tmp_path: Path) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    videos = tmp_path / "videos"
    report = report_of(cartpole_run, "--episodes", "1", "--max-steps", "15", "--record", videos)
    path = videos / "episode-001.mp4"
    assert report["videos"] == [str(path)]
    assert path.read_bytes()[4:8] == b"ftyp"
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == report["lengths"][0] + 1 <= 16


def test_record_refuses_an_environment_without_rgb_array_frames(cartpole_run: Path, tmp_path: Path) -> None:
    class UnrenderedCartPole(CartPoleEnv):
        metadata = {"render_modes": ["human"], "render_fps": 50}  # noqa: RUF012 (gymnasium's convention)

    def make(**options: Any) -> gym.Env[Any, Any]:
        return UnrenderedCartPole(**options)

    gym.register("UnrenderedCartPole-v0", entry_point=make, max_episode_steps=500)
    try:
        message = refusal(cartpole_run, "--record", tmp_path, "--set", "environment.id=UnrenderedCartPole-v0")
    finally:
        del gym.registry["UnrenderedCartPole-v0"]
    assert message == (
        "apexrl test: UnrenderedCartPole-v0 has no rgb_array render mode (its modes: ['human']); "
        "--record needs one"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is Linux's")
def test_render_needs_a_display(cartpole_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "--render needs a display" in refusal(cartpole_run, "--render")


def test_render_shows_the_episodes_where_a_display_exists(
    cartpole_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pygame")
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # SDL's window that draws nowhere
    report = report_of(cartpole_run, "--render", "--episodes", "2", "--max-steps", "5")
    assert report["lengths"] == [min(5, length) for length in report["lengths"]]
    assert report["episodes"] == 2


def test_a_path_that_does_not_exist_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    assert refusal(missing) == (
        f"apexrl test: {missing} does not exist: name a run folder or a model file (.safetensors)"
    )


def test_files_that_are_not_apexrl_models_are_refused_by_name(cartpole_run: Path, tmp_path: Path) -> None:
    config = cartpole_run / "config.yaml"
    assert refusal(config).startswith(f"apexrl test: {config} is not an apexrl model: not a readable")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3).numpy()}, str(foreign), metadata={"author": "someone"})
    assert refusal(foreign).startswith(f"apexrl test: {foreign} is not an apexrl model: a safetensors file")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert "holds no model" in refusal(empty)


def test_a_damaged_checkpoint_is_refused(cartpole_run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "checkpoint-000000000001.safetensors"
    shutil.copyfile(checkpoints(cartpole_run / "checkpoints")[-1], damaged)
    data = bytearray(damaged.read_bytes())
    data[-8:] = bytes(8 * [0x7F])  # the last tensor's bytes
    damaged.write_bytes(bytes(data))
    assert f"learner checkpoint {damaged} is damaged" in refusal(damaged)


def test_a_model_choice_the_run_folder_lacks_is_refused(cartpole_run: Path, tmp_path: Path) -> None:
    only_checkpoints = tmp_path / "run"
    shutil.copytree(cartpole_run / "checkpoints", only_checkpoints / "checkpoints")
    assert "has no best_model.safetensors" in refusal(only_checkpoints, "--model", "best")
    # Without a choice, the newest checkpoint stands in for the missing best model.
    assert report_of(only_checkpoints, "--episodes", "1")["kind"] == "checkpoint"
    assert "no checkpoint nope" in refusal(only_checkpoints, "--checkpoint", "nope")
    assert "give one of them" in refusal(cartpole_run, "--model", "best", "--checkpoint", "nope")


def test_a_model_for_another_environment_is_refused_naming_both(
    cartpole_run: Path, pendulum_run: Path
) -> None:
    assert refusal(cartpole_run, "--set", "environment.id=Acrobot-v1") == (
        f"apexrl test: {cartpole_run / BEST_MODEL}: the model for CartPole-v1 (observation (4,), 2 actions) "
        "cannot act in Acrobot-v1 (observation (6,), 3 actions)"
    )
    assert refusal(pendulum_run, "--model", "latest", "--set", "environment.id=CartPole-v1").endswith(
        ": the model for Pendulum-v1 (observation (3,), continuous actions (1,)) cannot act in "
        "CartPole-v1 (observation (4,), 2 actions)"
    )


def test_environment_options_may_change_and_the_algorithm_may_not(cartpole_run: Path) -> None:
    # A shorter time limit: the same model in a variant of its environment.
    report = report_of(cartpole_run, "--episodes", "2", "--set", "environment.options={max_episode_steps: 3}")
    assert report["lengths"] == [3, 3]
    assert "the algorithm's are the model's own" in refusal(cartpole_run, "--set", "algorithm.n_step=1")


def test_sac_best_models_and_checkpoints_act_alike(start_shard: ShardFactory, tmp_path: Path) -> None:
    shard = start_shard(capacity=1000)
    run_dir = tmp_path / "run"
    learner = Learner(small_config(preset="pendulum-sac"), LearnerSettings((shard.address,), run_dir))
    learner.save_best(learner.store.version)
    learner.stop()  # checkpoints the same, untrained, parameters
    arguments = ("--episodes", "2", "--max-steps", "50")
    best = report_of(run_dir, "--model", "best", *arguments)
    latest = report_of(run_dir, "--model", "latest", *arguments)
    assert (best["algorithm"], best["kind"], latest["kind"]) == ("sac", "best model", "checkpoint")
    assert best["lengths"] == [50, 50]
    assert best["returns"] == latest["returns"]


def test_an_atari_checkpoint_plays_and_records_the_game(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    path = pong_checkpoint(tmp_path)
    videos = tmp_path / "videos"
    result = apexrl_test(path, "--episodes", "1", "--max-steps", "20", "--record", videos, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["environment"], report["parameter_version"], report["updates"]) == ("ALE/Pong-v5", 2, 3)
    assert report["lengths"] == [20]
    assert [video.name for video in videos.iterdir()] == [Path(report["videos"][0]).name]
