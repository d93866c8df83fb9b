"""BiasEnsemble (Lee et al., AAAI 2023, "Revisiting the importance of amplifying bias for
debiasing"), a plug-in for LfF (``lff_be``) and DisEnt (``disent_be``); algorithms.md, "BiasEnsemble".

Stages ``aux0`` .. ``aux{K-1}`` (``be_steps`` each): auxiliary model ``aux{i}``, a plain classifier
from its own fresh initialisation, trained alone with mean GCE over the whole batch. As the authors
run it (``be_candidates "authors"``), it is evaluated after 1 and after 501 updates only and keeps
the one with the strictly higher valid accuracy (the first of equal ones): the state after all
``be_steps`` is never a candidate. ``"cadence"`` (debiaslab's first BiasEnsemble, and runs recorded
before the option existed): every ``valid_freq`` steps and the stage's end. At the stage's end that
model is put back and scores every training sample with ``p_i(x) = softmax(aux_i(x))[y]``. After
the last one, a sample is confidently bias-aligned when ``#{i : p_i(x) > tau} >= agreement``
(strictly greater than tau). No bias label is read; the loop logs the samples left out (the
method's guess of "bias-conflicting") against the true ones.

Stage ``main``: LfF or DisEnt as they are (the same code), except the biased branch's term: plain
CE averaged over the rows of the batch whose (bias features') sample is confidently aligned,
``sum(m * ce_b) / max(sum(m), 1)`` (0 for a batch without one). For DisEnt's swap term the row's
sample is the one the swapped-in bias features come from, with its label ``y[p]``. W, the EMAs
behind it and the debiased / intrinsic branch still use every sample of the batch (the paper's
Figure 3: the left-out samples are still fed to f_B for the reweighting value).

Choices where the paper's text was not at hand, following the reference code's behaviour: the aux
models are Adam at the run's ``lr`` / ``weight_decay`` with no LR schedule; the biased term is the
mean over the selected rows (the reference's mean over an empty selection is NaN, which stops it;
here 0). Not followed: the reference scores the training set through its training-time
augmentation; here through the evaluation transform (no difference on CMNIST).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.errors import UserError
from debiaslab.methods.base import Stage
from debiaslab.methods.disent import DisEnt
from debiaslab.methods.lff import LfF
from debiaslab.methods.losses import gce_from_ce
from debiaslab.methods.options import Option

CANDIDATES = ("authors", "cadence")
AUTHORS_CANDIDATES = (1, 501)  # updates into an aux stage: its step indices 0 and 500


def aux_names(k: int) -> tuple[str, ...]:
    return tuple(f"aux{i}" for i in range(k))


def true_class_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``softmax(logits)[y]`` per sample, in float32."""
    return F.softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)


def agreement_mask(probs: torch.Tensor, tau: float, agreement: int) -> torch.Tensor:
    """``probs`` [K, N] (each model's probability of each sample's class) -> [N] bool: at least
    ``agreement`` of the K models give the sample more than ``tau``."""
    return (probs > tau).sum(0) >= agreement


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(mask * values) / max(sum(mask), 1)`` for a bool ``mask`` (fixed shapes, no indexing;
    rows outside the mask contribute exactly 0, even if not finite)."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(total.dtype)


class BiasEnsemble:
    """The stages, the committee and the masked biased branch; mixed in before LfF or DisEnt."""

    recipes: dict = {}  # the other recipes of LfF (Method.recipes) are LfF's alone
    step_state = ("aligned",)  # the main stage's biased branch trains on these samples
    # the committee's scores and the aux stage's best evaluation: its hooks' alone
    boundary_state = ("scores", "best")
    step_floats = ("q",)  # an aux model's GCE

    options = (
        Option(
            "be_num_models", int, 5,
            "auxiliary biased (GCE) models trained one after another before the main stage",
            "the reference's --num_bias_models", "positive", ("num_bias_models",),
        ),
        Option(
            "be_steps", int, 1000,
            "training steps of each auxiliary model; its best-validation-accuracy state is kept",
            "the reference's --biased_model_train_iter", "positive", ("biased_model_train_iter",),
        ),
        Option(
            "be_tau", float, 0.99,
            "an auxiliary model finds a sample bias-aligned when its probability of the sample's "
            "class is above this", "the reference's --biased_model_softmax_threshold", "fraction",
            ("biased_model_softmax_threshold",),
        ),
        Option(
            "be_agreement", int, 3,
            "how many auxiliary models must find a sample aligned for the biased branch to train "
            "on it", "the reference's --agreement", "positive", ("agreement",),
        ),
        Option(
            "be_candidates", str, "authors",
            "which evaluations of an auxiliary model may be kept: after 1 and 501 updates, or "
            "every valid_freq steps and the stage's end (debiaslab's first BiasEnsemble)",
            "the authors' code", choices=CANDIDATES, saved_before="cadence",
        ),
    )  # fmt: skip

    @classmethod
    def stage_evaluation_steps(cls, cfg, stage):
        """Authors: an aux model is evaluated after 1 and 501 updates only (its step indices 0
        and 500); the state after all ``be_steps`` is never a candidate."""
        if stage.name == "main" or cfg.be_candidates != "authors":
            return None
        return tuple(s for s in AUTHORS_CANDIDATES if s <= stage.steps)

    @classmethod
    def training_reads(cls, cfg) -> tuple[str, ...]:
        """Each aux model is kept at its best validation accuracy."""
        return super().training_reads(cfg) + ("valid_labels",)

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg.be_agreement > cfg.be_num_models:
            raise UserError(
                f"--be_agreement {cfg.be_agreement} is more than --be_num_models "
                f"{cfg.be_num_models}: no sample could be selected; lower it or train more models"
            )

    def __init__(self, cfg, models, train_targets, num_classes, generator):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        n, k, device = len(train_targets), cfg.be_num_models, train_targets.device
        self.scores = torch.zeros(k, n, device=device)  # row i: p_i(x) of aux i, once it is scored
        self.scored = [False] * k
        self.best_steps: list[int | None] = [None] * k  # the step whose aux i was kept
        self.aligned = torch.zeros(
            n, dtype=torch.bool, device=device
        )  # updated in place (compiled graphs read it)
        self.aligned_ready = False
        self.best: dict | None = (
            None  # this aux stage's best evaluation: step, valid accuracy, the model's state
        )

    # -- the models and stages -----------------------------------------------------------------
    @classmethod
    def model_heads(cls, cfg) -> dict[str, int]:
        """The method's own models, then K plain classifiers (one head input, also for DisEnt)."""
        return {**super().model_heads(cfg), **{name: 1 for name in aux_names(cfg.be_num_models)}}

    @classmethod
    def stages(cls, cfg) -> tuple[Stage, ...]:
        aux = tuple(Stage(name, cfg.be_steps, (name,)) for name in aux_names(cfg.be_num_models))
        return aux + (Stage("main", cfg.num_steps, cls.model_names),)

    def _main(self) -> bool:
        return self.stage.name == "main"

    def stage_evaluated(self, stage, record) -> None:
        """Keep a copy of the aux model whenever its valid accuracy beats the stage's best so far."""
        accuracy = record["valid"]["accuracy"]
        if self.best is None or accuracy > self.best["valid"]:
            state = self.models[stage.models[0]].state_dict()
            self.best = {
                "step": record["step"],
                "valid": accuracy,
                "state": {k: v.detach().clone() for k, v in state.items()},
            }

    def end_stage(self, stage, data) -> None:
        """Put the aux model's best-validation state back, score the training set with it; after
        the last one, the agreement mask."""
        name = stage.models[0]
        i = int(name[len("aux") :])
        model = self.models[name]
        if self.best is not None:
            model.load_state_dict(self.best["state"])
            self.best_steps[i] = self.best["step"]
        self.best = None
        self.scores[i] = true_class_probability(data.logits(model), data.targets).to(
            self.scores.device
        )
        self.scored[i] = True
        if all(self.scored):
            self.aligned.copy_(agreement_mask(self.scores, self.cfg.be_tau, self.cfg.be_agreement))
            self.aligned_ready = True

    def flagged_conflicting(self):
        """The samples left out of the biased branch's training (not confidently aligned)."""
        return ~self.aligned if self.aligned_ready else None

    def eval_predict(self, x):
        return (
            self.predict(self.models, x) if self._main() else self.models[self.stage.models[0]](x)
        )

    def sample_weights(self):
        return super().sample_weights() if self._main() else None

    def bias_logits(self, x):
        return super().bias_logits(x) if self._main() else None

    # -- the step -------------------------------------------------------------------------------
    def draw(self, batch_size, step):
        return super().draw(batch_size, step) if self._main() else {}

    def loss(self, x, y, idx, draws):
        if self._main():
            return super().loss(x, y, idx, draws)
        ce = F.cross_entropy(self.models[self.stage.models[0]](x), y, reduction="none")
        loss = gce_from_ce(ce, self.cfg.q, self.cfg.gce_form).mean()
        return loss, {"loss": loss}

    def biased_branch_loss(self, ce_b, idx):
        """Plain CE, averaged over the rows whose sample is confidently aligned (0 if none is)."""
        return masked_mean(ce_b, self.aligned[idx])

    def _schedule(self, step: int) -> None:
        """The LR schedule of the main stage's models only, counted from ``curr_step`` of the main
        stage; the aux models keep the initial learning rate (as the reference's do)."""
        if self._main() and self.schedulers and step >= self.cfg.curr_step:
            for name in self.stage.models:
                self.schedulers[name].step()

    def lr(self) -> float:
        return float(self.optimizers[self.stage.models[0]].param_groups[0]["lr"])

    # -- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {
            **super().extra_state(),
            "bias_ensemble": {
                "scores": self.scores.clone(),
                "scored": list(self.scored),
                "best_steps": list(self.best_steps),
                "aligned": self.aligned.clone(),
                "aligned_ready": self.aligned_ready,
                "best": self.best,
            },
        }

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        be = state["bias_ensemble"]
        self.scores.copy_(be["scores"])
        self.scored, self.best_steps = list(be["scored"]), list(be["best_steps"])
        self.aligned.copy_(be["aligned"])
        self.aligned_ready = be["aligned_ready"]
        self.best = be["best"]


class LfFBE(BiasEnsemble, LfF):
    """LfF whose biased model trains with CE on the committee's confidently aligned samples only."""

    name = "lff_be"
    color = "tab:cyan"
    preset_base = LfF  # the authors' scripts pass LfF's flags unchanged


class DisEntBE(BiasEnsemble, DisEnt):
    """DisEnt whose bias branch trains with CE on the committee's confidently aligned samples only."""

    name = "disent_be"
    color = "tab:purple"
    options = BiasEnsemble.options + DisEnt.options
    preset_base = DisEnt  # the authors' scripts pass DisEnt's CMNIST flags unchanged
