"""``python -m clipedit``: the same command line as ``clipedit``."""
from clipedit.cli import main

if __name__ == "__main__":
    main()
