"""``python -m services ...`` and the ``apexrl`` console script: the command line."""

from __future__ import annotations

import sys

_HELP = frozenset({"-h", "--help"})


def main() -> None:
    """The command line on ``sys.argv``. ``apexrl run`` starts its zygote before the command line
    is even imported: the zygote's import of torch is the longest wait of a run's start, and
    the command line's own imports (about a second here) then happen alongside it."""
    arguments = sys.argv[1:]
    if arguments[:1] == ["run"] and not _HELP & set(arguments):
        from services.launcher.zygote import start_early  # noqa: PLC0415 (light: no torch, no gRPC)

        start_early()
    from services.cli import main as command_line  # noqa: PLC0415

    command_line()


if __name__ == "__main__":
    main()
