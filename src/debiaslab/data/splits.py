"""In-memory datasets: every split is a uint8 image tensor plus integer labels.

Images are decoded once (from PNG folders, a cache or a builder) into a single uint8 tensor
of shape [N, C, H, W]; training indexes it with batches of indices and never touches a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    """One split: ``images`` uint8 [N, C, H, W], ``targets`` int64 [N], ``biases`` int64 [N] or None."""

    images: torch.Tensor
    targets: torch.Tensor
    biases: torch.Tensor | None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = len(self.images)
        if len(self.targets) != n or (self.biases is not None and len(self.biases) != n):
            raise ValueError("images, targets and biases must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device) -> Split:
        return Split(
            self.images.to(device),
            self.targets.to(device),
            None if self.biases is None else self.biases.to(device),
        )

    def checksum(self) -> str:
        """sha256 of the content (images, targets, biases) in a canonical byte order."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().cpu().numpy().tobytes())
        h.update(self.targets.to(torch.int64).cpu().numpy().tobytes())
        if self.biases is not None:
            h.update(self.biases.to(torch.int64).cpu().numpy().tobytes())
        return h.hexdigest()


@dataclass
class DatasetBundle:
    """The three splits of a dataset plus what is needed to describe them honestly."""

    name: str
    train: Split
    valid: Split
    test: Split
    num_classes: int
    info: dict = field(default_factory=dict)

    def checksums(self) -> dict:
        out = {}
        for name in ("train", "valid", "test"):
            key = f"sha256_{name}"
            out[name] = self.info.get(key) or getattr(self, name).checksum()
        return out

    def with_checksums(self) -> DatasetBundle:
        """A copy that holds its splits' checksums, computed once (the caller's bundle keeps
        none: its tensors may still change)."""
        sums = {f"sha256_{name}": value for name, value in self.checksums().items()}
        return dataclasses.replace(self, info={**self.info, **sums})

    def counts(self) -> dict:
        out = {}
        for name in ("train", "valid", "test"):
            s: Split = getattr(self, name)
            entry = {"n": len(s)}
            if s.biases is not None:
                conflicting = int((s.targets != s.biases).sum())
                entry.update(aligned=len(s) - conflicting, conflicting=conflicting)
            out[name] = entry
        return out


def data_id(checksums: dict) -> str:
    """8 hex digits naming the data of ``checksums`` (split -> sha256): a run's data in a name."""
    blob = ",".join(f"{name}:{checksums[name]}" for name in sorted(checksums))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]
