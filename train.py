"""The paper's entry point: ``python train.py --dataset cmnist ... --train_ours`` (same flags as its README).

A thin wrapper over ``debiaslab train``; works from a clone once the dependencies are installed
(``pip install -r requirements.txt``).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from debiaslab.cli import reference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(reference_main("train"))
