"""Small file helpers shared by caches, checkpoints and results: every write is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))
