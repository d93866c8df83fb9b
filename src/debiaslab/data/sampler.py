"""The training batches: shuffled epochs of index batches into the in-memory training split."""

from __future__ import annotations

import torch

from debiaslab.errors import UserError


def check_batch_fits(n: int, batch_size: int) -> None:
    """A batch drawn without replacement cannot be larger than the training split."""
    if n < batch_size:
        raise UserError(
            f"--batch_size {batch_size} is larger than the training split ({n} samples); lower it"
        )


class EpochSampler:
    """Shuffled epochs of index batches (drop_last), drawn from its own seeded generator. With
    ``use_counts``, an epoch holds sample i ``counts[i]`` times (JTT's upsampling); with
    ``use_weights``, each batch is drawn with replacement, sample i with probability proportional
    to ``weights[i]`` (GroupDRO's group-balanced batches), an epoch being n draws."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, device):
        check_batch_fits(n, batch_size)
        self.n, self.batch_size, self.generator, self.device = n, batch_size, generator, device
        self.repeated = None  # the epoch's sample indices when some samples count more than once
        self.weights = None  # float64 on the CPU: draws with replacement
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

    def use_weights(self, weights: torch.Tensor | None) -> None:
        """From the next batch on, batches drawn with replacement, sample i with probability
        proportional to ``weights[i]`` (None: shuffled epochs)."""
        self.weights = None if weights is None else weights.detach().cpu().double()
        self.perm, self.pos = None, 0

    def next(self) -> torch.Tensor:
        if self.weights is not None:
            return self._weighted()
        size = self.n if self.repeated is None else len(self.repeated)
        if self.perm is None or self.pos + self.batch_size > size:
            perm = torch.randperm(size, generator=self.generator)
            if self.repeated is not None:
                perm = self.repeated[perm]
            self.perm = self._to_device(perm)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def _weighted(self) -> torch.Tensor:
        idx = torch.multinomial(self.weights, self.batch_size, True, generator=self.generator)
        self.pos += self.batch_size
        if self.pos >= self.n:
            self.pos -= self.n
            self.epoch += 1
        return self._to_device(idx)

    def _to_device(self, idx: torch.Tensor) -> torch.Tensor:
        if torch.device(self.device).type == "cuda":
            idx = idx.pin_memory()  # an asynchronous copy: the host need not wait for the device
        return idx.to(self.device, non_blocking=True)

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
