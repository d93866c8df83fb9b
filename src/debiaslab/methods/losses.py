"""The building blocks shared by LfF and DisEnt (algorithms.md, "Building blocks")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GCE_FORMS = ("reference", "textbook")


def gce_from_ce(ce: torch.Tensor, q: float = 0.7, form: str = "reference") -> torch.Tensor:
    """Per-sample generalized cross-entropy from per-sample cross-entropy ``ce = -log p_y``.

    ``reference`` (LfF's and DisEnt's code): ``ce * q * sg(p_y)^q``; its gradient is that of
    ``1 - p_y^q``, i.e. q times the textbook gradient. ``textbook`` (Zhang & Sabuncu 2018):
    ``(1 - p_y^q) / q``. ``p_y^q = exp(-q * ce)``.
    """
    if form == "reference":
        return ce * q * torch.exp(-q * ce.detach())
    if form == "textbook":
        return (1.0 - torch.exp(-q * ce)) / q
    raise ValueError(f"unknown GCE form {form!r}; choose one of {GCE_FORMS}")


def mean_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, as the mean of the per-sample losses: the value of
    ``F.cross_entropy(logits, targets)`` up to the order of its sum, in the one order a fused run
    (vmap) computes too, so fused runs repeat lone ones bit for bit."""
    return F.cross_entropy(logits, targets, reduction="none").mean()


def gce(
    logits: torch.Tensor, targets: torch.Tensor, q: float = 0.7, form: str = "reference"
) -> torch.Tensor:
    return gce_from_ce(F.cross_entropy(logits, targets, reduction="none"), q, form)


class PerSampleEMA:
    """Exponential moving average of each training sample's loss, with class-wise maxima.

    First visit: ``ema[i] = loss``; later: ``ema[i] = alpha * ema[i] + (1 - alpha) * loss``.
    ``channels`` independent EMAs (e.g. one per model) share the bookkeeping and are updated
    together; each is normalised by its own class maxima. Values live in a
    [channels, classes, max class size] table (unused cells hold 0, as do never-visited samples;
    losses are >= 0) so the class maxima are one fast reduction. With ``channels == 1`` losses and
    values are [B]; otherwise [B, channels].
    """

    def __init__(
        self, targets: torch.Tensor, num_classes: int, alpha: float = 0.7, channels: int = 1
    ):
        targets = torch.as_tensor(targets, dtype=torch.int64)
        device = targets.device
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.channels = channels
        counts = torch.bincount(targets, minlength=num_classes)
        width = max(int(counts.max()), 1)
        order = torch.argsort(targets, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(targets)
        rank[order] = torch.arange(len(targets), device=device) - starts[targets[order]]
        self.targets = targets
        self.slot = targets * width + rank
        self.table = torch.zeros(channels, num_classes, width, device=device)
        self.visited = torch.zeros(len(targets), dtype=torch.bool, device=device)

    def _flat(self) -> torch.Tensor:
        return self.table.view(self.channels, -1)

    def update(self, idx: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Fold the detached per-sample ``loss`` of samples ``idx`` in; returns their new EMA values."""
        flat = self._flat()
        slot = self.slot[idx]
        loss = loss.detach().reshape(len(idx), self.channels).t()
        # index_select and a put on the transpose rather than flat[:, slot]: the same values, and
        # vmap (fused runs) batches them, where it misplaces the index of an assignment after a slice
        old = flat.index_select(1, slot)
        new = torch.where(self.visited[idx], self.alpha * old + (1.0 - self.alpha) * loss, loss)
        flat.t().index_put_((slot,), new.t())
        self.visited.index_fill_(0, idx, True)  # a fill, not a host scalar's copy: capturable
        return self._shape(new.t())

    def _shape(self, values: torch.Tensor) -> torch.Tensor:
        return values.squeeze(1) if self.channels == 1 else values

    def _maxima(self) -> torch.Tensor:
        return self.table.amax(dim=2)  # [channels, num_classes]

    def class_max(self) -> torch.Tensor:
        """Max EMA over all training samples of each class: [num_classes] ([channels, num_classes])."""
        m = self._maxima()
        return m.squeeze(0) if self.channels == 1 else m

    def normalize(self, values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Divide each value by the class maximum (of its channel) of its sample's class."""
        return values / self._shape(self._maxima().clamp_min(1e-12)[:, targets].t())

    def values(self) -> torch.Tensor:
        """EMA of every training sample, in dataset order."""
        return self._shape(self._flat().index_select(1, self.slot).t())

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the EMA values and visited flags of samples ``idx``."""
        return self._flat().index_select(1, self.slot[idx]), self.visited[idx].clone()

    def keep_rows(
        self, idx: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor
    ) -> None:
        """Where ``keep`` (0-d bool) is false, put back ``rows`` (from :meth:`rows`); no host read."""
        flat, slot = self._flat(), self.slot[idx]
        flat.t().index_put_((slot,), torch.where(keep, flat.index_select(1, slot), rows[0]).t())
        self.visited.index_put_((idx,), torch.where(keep, self.visited[idx], rows[1]))

    def state_dict(self) -> dict:
        return {
            "values": self.values().clone(),
            "visited": self.visited.clone(),
            "alpha": self.alpha,
        }

    def load_state_dict(self, state: dict) -> None:
        self._flat()[:, self.slot] = (
            state["values"].to(self.table).reshape(len(self.slot), self.channels).t()
        )
        self.visited.copy_(state["visited"].to(self.visited.device))


def relative_difficulty(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """LfF's weight ``W = L_b / (L_b + L_d + 1e-8)`` from class-normalised EMAs (detached)."""
    return (loss_b / (loss_b + loss_d + 1e-8)).detach()
