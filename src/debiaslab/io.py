"""Small file helpers shared by caches, checkpoints and results: every write is atomic."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch


class _ExitHold:
    """A signal handler's exit held while a file is written. torch.save writing through a Python
    file object aborts the whole process (SIGABRT, nothing marked or resumable) when an exception
    is raised inside it, so SIGTERM's exit waits for the write to end."""

    depth = 0
    pending: int | None = None


def defer_exit(code: int) -> bool:
    """For a signal handler: hold ``SystemExit(code)`` until the file being written is in place
    (True), or say that none is being written, so the handler exits now (False)."""
    if _ExitHold.depth:
        _ExitHold.pending = code
        return True
    return False


@contextlib.contextmanager
def _exit_held():
    _ExitHold.depth += 1
    try:
        yield
    finally:
        _ExitHold.depth -= 1
        if _ExitHold.depth == 0 and _ExitHold.pending is not None:
            code, _ExitHold.pending = _ExitHold.pending, None
            raise SystemExit(code)


def _atomic_write(path: Path, write) -> None:
    with _exit_held():
        _write_then_rename(Path(path), write)


def _write_then_rename(path: Path, write) -> None:
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
    obj = compact(obj)
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def compact(obj):
    """``obj`` with every tensor that is a view into a larger storage copied on its own:
    ``torch.save`` writes a view's whole storage, and a fused run's weights are rows of its
    group's stacked tensors (a file K times too large, loading the group's other runs too)."""
    if isinstance(obj, torch.Tensor):
        if obj.layout == torch.strided and obj.untyped_storage().nbytes() > obj.nbytes:
            return obj.clone()
        return obj
    if isinstance(obj, dict):
        kind = collections.OrderedDict if isinstance(obj, collections.OrderedDict) else dict
        out = kind((k, compact(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's module versions
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple):
        return type(obj)(compact(v) for v in obj)
    return obj


def atomic_write_text(path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))
