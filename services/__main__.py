"""``python -m services ...`` and the ``apexrl`` console script: the command line.

``apexrl run`` starts its zygote (``services/launcher/zygote.py``) first thing, so that it
imports torch while the launcher imports the rest of itself.
"""

import sys


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        from services.launcher.zygote import prestart  # noqa: PLC0415 (before the command line's imports)

        prestart()
    from services.cli import main as command_line  # noqa: PLC0415

    command_line()


if __name__ == "__main__":
    main()
