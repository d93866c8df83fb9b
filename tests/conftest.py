import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$DEBIASLAB_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("DEBIASLAB_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def mnist_npz() -> Path:
    d = shared_data_dir()
    if d is None or not (d / "mnist.npz").exists():
        pytest.skip("real MNIST not available: set DEBIASLAB_SHARED_DATA or place mnist.npz in ../shared/data")
    return d / "mnist.npz"


def run_cli(*args, cwd=None, env=None, timeout=600, module=True):
    """Run ``python -m debiaslab ARGS`` (or a repo-root script when module=False) in a subprocess."""
    cmd = [sys.executable, "-m", "debiaslab", *map(str, args)] if module else [sys.executable, *map(str, args)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def tiny_split(n_per_class: int, num_classes: int, conflict_every: int, seed: int, size: int = 8):
    """A learnable toy split: class = a bright square's position, bias = a colour channel tint."""
    from debiaslab.data.splits import Split

    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_classes).repeat_interleave(n_per_class)
    biases = targets.clone()
    if conflict_every:
        pick = torch.arange(len(targets)) % conflict_every == 0
        biases[pick] = (targets[pick] + 1) % num_classes
    images = torch.randint(0, 40, (len(targets), 3, size, size), generator=g, dtype=torch.uint8)
    for i, (t, b) in enumerate(zip(targets.tolist(), biases.tolist())):
        images[i, :, t * 2:t * 2 + 2, 1:3] = 250
        images[i, b % 3] = images[i, b % 3].clamp(min=120)
    return Split(images, targets, biases)


@pytest.fixture
def tiny_reference(tmp_path) -> Path:
    """A tiny CMNIST-shaped dataset in the reference layout: <root>/cmnist/{1pct/...,test/}."""
    from debiaslab.data.reference import write_split

    root = tmp_path / "data"
    base = root / "cmnist"
    write_split(tiny_split(40, 3, 10, 0), base / "1pct", "train")
    write_split(tiny_split(6, 3, 3, 1), base / "1pct" / "valid", "flat", start_id=1000)
    write_split(tiny_split(10, 3, 2, 2), base / "test", "class", start_id=2000)
    return root
