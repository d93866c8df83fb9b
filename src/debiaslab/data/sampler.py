"""The training batches: shuffled epochs of index batches into the in-memory training split."""

from __future__ import annotations

import torch

from debiaslab.errors import UserError


class EpochSampler:
    """Shuffled epochs of index batches (drop_last), drawn from its own seeded generator. With
    ``use_counts``, an epoch holds sample i ``counts[i]`` times (JTT's upsampling)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device):
        if n < batch_size:
            raise UserError(
                f"--batch_size {batch_size} is larger than the training split ({n} samples); lower it"
            )
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.repeated = None  # the epoch's sample indices when some samples count more than once
        self.perm = None
        self.pos = 0
        self.epoch = 0

    def use_counts(self, counts: torch.Tensor | None) -> None:
        """From the next batch on, epochs of ``counts[i]`` copies of sample i (None: one each)."""
        self.repeated = (
            None
            if counts is None
            else torch.repeat_interleave(torch.arange(len(counts)), counts.cpu().long())
        )
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        size = self.n if self.repeated is None else len(self.repeated)
        if self.perm is None or self.pos + self.batch_size > size:
            perm = torch.randperm(size, generator=self.generator)
            if self.repeated is not None:
                perm = self.repeated[perm]
            if torch.device(self.device).type == "cuda":
                perm = (
                    perm.pin_memory()
                )  # an asynchronous copy: the host need not wait for the device
            self.perm = perm.to(self.device, non_blocking=True)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {
            "perm": None if self.perm is None else self.perm.cpu(),
            "pos": self.pos,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.perm = None if s["perm"] is None else s["perm"].to(self.device)
        self.pos, self.epoch = s["pos"], s["epoch"]
        self.generator.set_state(s["generator"])
