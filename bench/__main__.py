"""``python -m bench NAME [options]``: every benchmark through one parser (bench/harness.py)."""
from bench.harness import main

if __name__ == "__main__":
    main()
