"""Offline checks of the real-model experiment configs (no download).

    python scripts/check_experiments.py [NAME ...] [key=value ...] [--job JOB]

The same as ``python -m saesteer.experiments``: each check's result (ok / note / not
checked / error); exit status 1 on an error.
"""

import sys

from saesteer.experiments import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
