"""The ``apexrl run`` command: trains an experiment on this machine with one command."""

from __future__ import annotations

import functools
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from services.algorithms.experiment import load_experiment
from services.common.certificates import generate_secrets
from services.common.config import ConfigError
from services.common.security import configure
from services.common.signals import install_stop_handlers
from services.launcher.local_run import DATASETS
from services.launcher.progress_view import ProgressView

if TYPE_CHECKING:
    from services.algorithms.experiment import ExperimentConfig
    from services.launcher.local_run import RunOutcome
    from services.launcher.zygote import Zygote

logger = logging.getLogger(__name__)


def _log_to_file(path: Path, level: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s service=launcher logger=%(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _summary(console: Console, outcome: RunOutcome, solved_return: float | None) -> None:
    status = outcome.status
    best = status.best_evaluation if status is not None and status.HasField("best_evaluation") else None
    if best is None:
        console.print("no evaluation finished")
    else:
        solved = solved_return is not None and best.mean_return >= solved_return
        verdict = "[bold green]solved[/]" if solved else "not solved"
        console.print(
            f"{verdict}: best evaluation return {best.mean_return:.1f} at parameter version "
            f"{best.parameter_version} after {status.elapsed_s:.0f} s"  # type: ignore[union-attr]
        )
    # Each line fits 80 columns whole (a long folder name gets a line of its own).
    console.print(f"run folder: {outcome.run_dir}", soft_wrap=True, highlight=False)
    console.print("  config.yaml, metrics.csv, learning_curve.png, best_model.safetensors,", highlight=False)
    datasets = ", datasets/" if (outcome.run_dir / DATASETS).is_dir() else ""
    console.print(f"  checkpoints/, tensorboard/, logs/{datasets}", highlight=False)
    console.print(f"  continue it: apexrl run --resume {outcome.run_dir}", soft_wrap=True, highlight=False)


def _refuse(console: Console, error: Exception) -> NoReturn:
    console.print(f"apexrl run: {error}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def start_zygote() -> Zygote | None:
    """The run's preloaded parent (``zygote.py``), where processes can be forked (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    from services.launcher.zygote import Zygote, take_early

    return take_early() or Zygote()


def _close_early_zygote() -> None:
    """Ends the zygote started for a run that is refused before it starts (it would otherwise
    finish importing torch, for nothing, before its launcher's exit reached it)."""
    from services.launcher.zygote import take_early

    zygote = take_early()
    if zygote is not None:
        zygote.close(timeout_s=0.0)


def precheck(experiment: ExperimentConfig, zygote: Zygote | None) -> str | None:
    """Why the learner could not start on ``experiment`` (``prechecks``), checked in the zygote."""
    from services.launcher.prechecks import problem_with
    from services.launcher.zygote import ZygoteError

    if zygote is not None:
        try:
            return zygote.precheck(experiment.model_dump(mode="json"))
        except ZygoteError as error:
            logger.warning("zygote unavailable, checking here error=%s", error)
    return problem_with(experiment)


class RunFolderError(ValueError):
    """A run folder that does not fit the request (a new run in an old folder, a resume of nothing)."""


def holds_a_run(folder: Path) -> bool:
    return (folder / "config.yaml").exists() or (folder / "checkpoints").exists()


def _choose_run(
    config: str | None, overrides: list[str], run_dir: Path | None, resume: Path | None, shards: int
) -> tuple[ExperimentConfig, Path]:
    """The experiment and its folder: a new run in a new folder, or the run ``resume`` names."""
    from services.launcher.local_run import default_run_dir

    if resume is None:
        experiment = load_experiment(config, overrides)
        folder = run_dir or default_run_dir(experiment)
        if holds_a_run(folder):
            raise RunFolderError(
                f"run folder {folder} already holds a run: continue it with `apexrl run --resume {folder}`, "
                f"or give another --run-dir for a new run"
            )
        return experiment, folder
    if config is not None:
        raise RunFolderError(
            f"--resume continues the run with its own config ({resume / 'config.yaml'}): drop {config!r} "
            f"(--set still changes settings)"
        )
    if run_dir is not None and run_dir.resolve() != resume.resolve():
        raise RunFolderError(f"--resume {resume} and --run-dir {run_dir} name different folders: give one")
    if not (resume / "config.yaml").is_file():
        raise RunFolderError(f"{resume} is not a run folder to resume: it has no config.yaml")
    snapshots = sorted(resume.glob("replay-*.snapshot"))
    if snapshots and len(snapshots) != shards:
        raise RunFolderError(
            f"{resume} was run with {len(snapshots)} replay shards (their snapshots are there): "
            f"resume it with --shards {len(snapshots)}"
        )
    return load_experiment(str(resume / "config.yaml"), overrides), resume


def _draw_learning_curve(run_dir: Path, title: str) -> None:
    """The run's learning_curve.png, from its whole metrics.csv (a resumed run's too)."""
    from services.learner.learning_curve import plot_learning_curve  # matplotlib: only when needed

    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        plot_learning_curve(metrics, run_dir / "learning_curve.png", title)


def run_command(
    config: Annotated[
        str | None, typer.Argument(help="Experiment YAML file or preset (see configs/).")
    ] = None,
    actors: Annotated[int, typer.Option(min=1, max=256, help="Actor processes.")] = 2,
    shards: Annotated[int, typer.Option(min=1, max=64, help="Replay shard processes.")] = 2,
    learners: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Learner processes training data-parallel (torch.distributed), each on 1/N of every batch.",
        ),
    ] = 1,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Folder of a new run (default: runs/ENV-TIME).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the stopped run in this folder: its config, checkpoint and replay snapshots; "
            "counters and budgets go on from where it stopped (--set may raise a budget)."
        ),
    ] = None,
    secure: Annotated[
        bool,
        typer.Option(
            help="Mutual TLS and a token between the run's processes, from a throwaway CA and token "
            "written to the run folder's secrets/."
        ),
    ] = False,
    record_actors: Annotated[
        bool,
        typer.Option(
            help="Each actor also writes the episodes it plays, exploring, as a Minari dataset in the "
            "run folder's datasets/ (needs apexrl[datasets])."
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="Level of the launcher's own log file.")] = "INFO",
) -> None:
    """Train on this machine: replay shards, learner, evaluator and actors as local processes."""
    from services.algorithms.experiment import batch_share
    from services.datasets.writer import DatasetError, require_minari
    from services.launcher.children import RunFailedError
    from services.launcher.local_run import run_locally
    from services.launcher.prechecks import PrecheckError

    console = Console()
    try:
        experiment, folder = _choose_run(config, overrides or [], run_dir, resume, shards)
        batch_share(experiment.algorithm.batch_size, learners)
        if record_actors:
            require_minari()
    except (ConfigError, DatasetError, FileNotFoundError, RunFolderError) as error:
        _close_early_zygote()
        _refuse(console, error)
    # It imports torch while the run folder and the shards are made ready (started already
    # when the launcher runs as `apexrl run`, see services/__main__.py).
    zygote = start_zygote()
    new_folder = not folder.exists()
    _log_to_file(folder / "logs" / "launcher.log", log_level)
    if secure:
        # The children inherit the settings through the environment (file paths only).
        configure(generate_secrets(folder / "secrets", ("localhost", "127.0.0.1")).settings)
        logger.info("secure run: mutual TLS and a token, secrets in %s", folder / "secrets")
    stop = install_stop_handlers()
    view = ProgressView(console, experiment)
    try:
        outcome = run_locally(
            experiment,
            folder,
            actors,
            shards,
            stop,
            view,
            record_actors,
            learners,
            zygote,
            functools.partial(precheck, experiment, zygote),
        )
    except PrecheckError as error:
        # What would stop the learner at start is said in one line, and the run leaves nothing.
        if new_folder:
            shutil.rmtree(folder, ignore_errors=True)
        _refuse(console, error)
    except RunFailedError as error:
        logger.error("run failed: %s", error)
        # The part's own words may hold brackets; they are not markup.
        console.print(
            f"[bold red]apexrl run failed[/]: {escape(str(error))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    finally:
        if zygote is not None:
            zygote.close()
        if folder.exists():
            _draw_learning_curve(folder, experiment.environment.id)
    _summary(console, outcome, experiment.general.solved_return)
    if outcome.interrupted:
        raise typer.Exit(130)
