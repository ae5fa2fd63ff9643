"""Offline checks of the real-model experiment configs (no download).

    python scripts/check_experiments.py [NAME ...]
"""

import sys

from saesteer.experiments import check_experiments

if __name__ == "__main__":
    status, lines = check_experiments(sys.argv[1:])
    print("\n".join(lines))
    sys.exit(status)
