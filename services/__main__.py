"""``python -m services ...``: the ``apexrl`` command line without the console script."""

from services.cli import main

if __name__ == "__main__":
    main()
