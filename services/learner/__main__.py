"""``python -m services.learner``: the same learner as ``apexrl learner``."""

import typer

from services.learner.command import learner_command

if __name__ == "__main__":
    typer.run(learner_command)
