"""``python cli.py …`` in a checkout: the ``clipedit`` command line (:mod:`clipedit.cli`), nothing more."""
from clipedit.cli import COMMANDS, cli, main  # noqa: F401  (re-exported for callers of the script's module)

if __name__ == "__main__":
    main()
