"""The paper's evaluation entry point: ``python test.py --pretrained_path=<dir> --dataset=cmnist --percent=1pct``.

A thin wrapper over ``debiaslab test``; evaluates debiaslab checkpoints and the reference code's.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from debiaslab.cli import reference_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(reference_main("test"))
