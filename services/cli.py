"""The ``apexrl`` command line: one subcommand per role."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from services.actor.command import actor_command, evaluator_command
from services.common.certificates import DEFAULT_NAMES, generate_secrets
from services.common.health_probe import health_status
from services.common.local_process import apply_child_settings
from services.config_reference import PAGE, reference
from services.datasets.command import collect_command
from services.evaluation.command import model_test_command
from services.launcher.command import run_command
from services.learner.command import learner_command
from services.plotting.command import plot_command
from services.replay.command import replay_command
from services.replay.demo import run_demo

app = typer.Typer(
    help="apexrl: Ape-X style distributed prioritized experience replay and off-policy RL over gRPC.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("run")(run_command)
app.command("replay")(replay_command)
app.command("learner")(learner_command)
app.command("actor")(actor_command)
app.command("evaluator")(evaluator_command)
app.command("test")(model_test_command)
app.command("plot")(plot_command)
app.command("collect")(collect_command)


@app.command("demo")
def demo_command(
    shards: Annotated[int, typer.Option(min=1, max=64, help="Replay shard processes to start.")] = 2,
    seconds: Annotated[float, typer.Option(min=1.0, help="How long to run.")] = 15.0,
    capacity: Annotated[int, typer.Option(min=1000, help="Capacity of each shard.")] = 200_000,
    run_dir: Annotated[Path, typer.Option(help="Where the shards' logs go.")] = Path("runs/demo"),
) -> None:
    """Start local replay shards and stream transitions through them, showing live rates."""
    console = Console(stderr=True)
    result = run_demo(shards, seconds, capacity, run_dir, console)
    if console.is_terminal:
        console.print(
            f"[bold green]done[/]: {result['inserted_per_s']:,.0f} transitions/s inserted, "
            f"{result['sampled_per_s']:,.0f}/s sampled with priority updates over {shards} shards"
        )
    typer.echo(json.dumps(result))


@app.command("secrets")
def secrets_command(
    directory: Annotated[
        Path, typer.Argument(help="Folder to write ca.pem, service.pem, service-key.pem and token to.")
    ],
    name: Annotated[
        list[str] | None,
        typer.Option(help="A name clients dial a service by (repeat); default: local and compose names."),
    ] = None,
    shared: Annotated[
        bool, typer.Option(help="Key and token readable by other users too (compose's containers).")
    ] = False,
) -> None:
    """Generate a throwaway CA, a service certificate it signs, and a shared token (mutual TLS + token)."""
    settings = generate_secrets(directory, name or DEFAULT_NAMES, shared).settings
    variables = " ".join(f"{key}={value}" for key, value in settings.environment().items())
    typer.echo(
        f"wrote {directory}; point the services at them: {variables} (or the --token-file, --tls-* flags)"
    )


@app.command("config-reference")
def config_reference_command(
    write: Annotated[bool, typer.Option(help="Write docs/configuration.md instead of printing it.")] = False,
) -> None:
    """Print the configuration reference (every key, type, default, allowed values, meaning)."""
    if write:
        PAGE.write_text(reference(), encoding="utf-8")
        typer.echo(f"wrote {PAGE}")
    else:
        typer.echo(reference(), nl=False)


@app.command("health")
def health_command(
    target: Annotated[str, typer.Argument(help="host:port of any apexrl service.")],
    service: Annotated[str, typer.Option(help="Service name to check; empty for the whole server.")] = "",
    timeout_s: Annotated[float, typer.Option(help="Deadline of the check.")] = 2.0,
) -> None:
    """Exit 0 if the service answers SERVING to the gRPC health check (for container HEALTHCHECKs)."""
    status = health_status(target, service, timeout_s)
    typer.echo(status)
    if status != "SERVING":
        raise typer.Exit(1)


def main(args: list[str] | None = None) -> None:
    """The command line on ``args`` (default: ``sys.argv``), as ``python -m services`` runs it."""
    apply_child_settings()
    app(args=args, prog_name="apexrl")
