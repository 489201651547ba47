"""``python -m services.replay``: the same shard as ``apexrl replay``."""

import typer

from services.replay.command import replay_command

if __name__ == "__main__":
    typer.run(replay_command)
