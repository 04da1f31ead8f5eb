"""``python -m bench``: run the benchmarks (guarded: forkserver and spawn
workers re-import the main module)."""

import sys

from bench import main

if __name__ == "__main__":
    sys.exit(main())
