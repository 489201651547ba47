"""``python -m services.actor``: the same actor as ``apexrl actor``."""

import typer

from services.actor.command import actor_command

if __name__ == "__main__":
    typer.run(actor_command)
