"""DeNetDM (Vadakkeeveetil Sreelatha et al., NeurIPS 2024, "Debiasing by network depth
modulation"), label-free; algorithms.md, "DeNetDM".

Stage ``poe`` (``denetdm_stage1_steps``): a DEEP and a SHALLOW branch (``denetdm_deep`` /
``denetdm_shallow``: CMNIST a 5- vs a 3-linear-layer MLP; C-CIFAR10 ResNet-20 vs a 3-layer CNN;
BFFHQ ResNet-18 vs a 4-layer CNN) that share one linear classifier (the shallow model's ``fc``),
trained as a product of experts: CE of the classifier on the SUM of their features,
``CE(W (z_deep + z_shallow) + b, y)``, i.e. of the sum of the two experts' logits ``W z + b`` (less
one ``b``): softmax of a sum of logits is the normalised product of the two softmaxes. Given
distinct depths, the deep branch takes the bias, the shallow one the core attribute. Adam at
``denetdm_stage1_lr`` / ``denetdm_stage1_weight_decay``, no LR schedule. Evaluations in this stage
score the shallow expert alone, ``W z_shallow + b`` (the debiased one).

Stage ``main``, as the authors run it (``denetdm_stage2 "authors"``): a fresh target network of
the deep branch's shape (``model`` is built as ``denetdm_deep``); the deep branch is frozen; the
target's features are summed with the deep branch's into the SAME shared classifier, which keeps
training. The classifier's stage-1 state is copied into the target's head as stage 1 ends, and
from there on that head IS the shared classifier (Adam over the target and it, at ``lr``). The
teacher is the stage-1 classifier on the shallow features (the shallow model, frozen):

    L = CE(W'(z_t + z_deep) + b', y) + w * T^2 * mean_i sum_c -softmax(f_s(x_i) / T)_c
                                                   * log_softmax((W' z_t + b')(x_i) / T)_c

with ``f_s = W z_shallow + b`` (W, b: the stage-1 classifier). At test time the classifier on
z_t alone predicts: the target model as it is. ``"own_head"`` (debiaslab's first DeNetDM, and
runs recorded before the option existed): the target is ``--model`` with its own fresh head and
both experts stay frozen, ``L = CE(f_t(x) + W z_deep + b, y) + w T^2 (distillation to f_t)``.

Why one shared classifier in stage 1: with one head per branch instead, measured on CMNIST (10,000
stage-1 steps, seed 0), the shallow expert alone reached 0.26-0.30 unbiased test accuracy at 0.5pct
and 0.64-0.69 at 5pct, against 0.44-0.46 and 0.79-0.85 with the shared one.

Stage 1's kept state: its last by default (label-free). The authors keep the stage-1 state whose
shallow branch alone has the best bias-conflicting accuracy on their validation split, which is
the test split: ``denetdm_stage1_pick "oracle_test"`` does that (each stage-1 evaluation's test
metrics reach ``stage_evaluated``), an oracle that reads test labels, marked so in config.json,
results.json and collect's tables. Their CNNs use no padding; ours pad, so they run on inputs of
any size.

Any model: a user's model (``fit(model=factory)``) is the deep branch and the target, and the
shallow branch (cnn3, cnn4, mlp_shallow) gets a last layer as wide as the deep branch's features,
as the shared classifier needs; the authors' pairs have equal sizes already, so nothing changes
for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from debiaslab.errors import UserError
from debiaslab.methods.base import Method, Stage
from debiaslab.methods.losses import mean_ce
from debiaslab.methods.options import Option

BRANCHES = ("deep", "shallow")
STAGE2 = ("authors", "own_head")
STAGE1_PICKS = ("last", "oracle_test")

# The authors' released configuration (the paper's text was not at hand), per dataset: the batch,
# stage 1's epochs and Adam, stage 2's epochs and learning rate (weight decay 0), the distillation
# weight. ``preset`` turns epochs into steps.
AUTHORS_SETTINGS = {
    "cmnist": dict(
        batch_size=64, stage1_epochs=100, denetdm_stage1_lr=0.001,
        denetdm_stage1_weight_decay=0.001, epochs=100, lr=0.001, denetdm_distill_weight=1.0,
    ),
    "cifar10c": dict(
        batch_size=256, stage1_epochs=100, denetdm_stage1_lr=0.001,
        denetdm_stage1_weight_decay=0.001, epochs=200, lr=0.0001, denetdm_distill_weight=1.0,
    ),
    "bffhq": dict(
        batch_size=64, stage1_epochs=10, denetdm_stage1_lr=0.001,
        denetdm_stage1_weight_decay=0.0, epochs=100, lr=0.0001, denetdm_distill_weight=0.0,
    ),
}  # fmt: skip
# debiaslab's training splits, on which one epoch is ceil(n / batch) steps
TRAIN_SIZES = {"cmnist": 55_000, "cifar10c": 45_000, "bffhq": 19_200}
# DeNetDM's Colored MNIST numbers (and its re-run baselines) are on LfF's protocol as DeNetDM ran
# it: `debiaslab data build cmnist --protocol denetdm --out dataset_denetdm` (LfF's palette, all
# 60,000 training digits, the test split doubling as validation), with the authors' pixels
# (ToTensor's x / 255, not DisEnt's x / 255 / 255); its presets train there
PUBLISHED_ON = {"cmnist": {"data_dir": "dataset_denetdm", "palette": "lff", "input_scale": "unit"}}
# the training digits of that build, whose loader drops the last batch: n // batch steps an epoch
PUBLISHED_TRAIN_SIZES = {"cmnist": 60_000}


def default_branches(model: str, dataset: str) -> tuple[str, str]:
    """The deep and shallow architectures of the paper for a run's model and dataset; a user's
    own model is the deep branch (and the target) wherever it is given."""
    from debiaslab.models import BUILTIN_MODELS

    if model.lower() not in BUILTIN_MODELS:
        return model, "cnn3" if dataset == "cifar10c" else "cnn4"
    if model.startswith("mlp"):
        return "mlp_deep", "mlp_shallow"
    if model == "resnet20" or dataset == "cifar10c":
        return "resnet20", "cnn3"
    return model, "cnn4"


def product_of_experts_loss(
    logits_a: torch.Tensor, logits_b: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """CE of the product of the two experts' softmaxes, renormalised: CE of the summed logits."""
    return mean_ce(logits_a + logits_b, y)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2`` times the batch mean of the cross-entropy of the student's tempered softmax against
    the teacher's (Hinton et al. 2015; the T^2 keeps its gradient's scale independent of T)."""
    soft_targets = F.softmax(teacher.float() / temperature, dim=1)
    log_probs = F.log_softmax(student.float() / temperature, dim=1)
    return -(soft_targets * log_probs).sum(1).mean() * temperature**2


def _check_feature_sizes(cfg, deep: int, shallow: int) -> None:
    if deep != shallow:
        raise UserError(
            f"DeNetDM's branches share one classifier, so their features must have one size: "
            f"denetdm_deep {cfg.denetdm_deep} has {deep}, denetdm_shallow {cfg.denetdm_shallow} "
            f"has {shallow}; leave denetdm_shallow at its default (cnn3, cnn4 and mlp_shallow "
            "take the deep branch's size) or give a model of equal feature size"
        )


class DeNetDM(Method):
    """Stage ``poe`` trains the deep and shallow branches together; ``main`` distils the target."""

    name = "denetdm"
    model_names = ("model",)
    # oracle_test's best stage-1 evaluation so far, with the branches' state: its hooks' alone
    boundary_state = ("stage1_best",)
    options = (
        Option(
            "denetdm_stage1_steps", int, 10_000,
            "DeNetDM: steps of stage 1, the deep and shallow branches trained as a product of "
            "experts", "ours; the presets give the authors' epochs", "positive",
        ),
        Option(
            "denetdm_stage1_lr", float, 0.001,
            "DeNetDM: Adam learning rate of stage 1 (--lr is the target's, in stage 2)",
            "the authors' (CMNIST, C-CIFAR10)", "positive",
        ),
        Option(
            "denetdm_stage1_weight_decay", float, 0.001,
            "DeNetDM: Adam weight decay of stage 1 (--weight_decay is the target's)",
            "the authors' (CMNIST, C-CIFAR10)", "non-negative",
        ),
        Option(
            "denetdm_temperature", float, 2.0,
            "DeNetDM: temperature T of the distillation from the shallow branch in stage 2",
            "the authors'", "positive",
        ),
        Option(
            "denetdm_distill_weight", float, 1.0, "DeNetDM: weight of that distillation term",
            "the authors'", "non-negative",
        ),
        Option(
            "denetdm_stage2", str, "authors",
            "DeNetDM: stage 2: a target of the deep branch's shape into the shared classifier, "
            "which keeps training, or a target with its own head (debiaslab's first DeNetDM)",
            "the authors' code", choices=STAGE2, saved_before="own_head",
        ),
        Option(
            "denetdm_stage1_pick", str, "last",
            "DeNetDM: the stage-1 state stage 2 starts from: its last, or the authors' pick, the "
            "best bias-conflicting accuracy of the shallow branch on the TEST split (an oracle: "
            "reads test labels)", "label-free by default", choices=STAGE1_PICKS,
        ),
        Option(
            "denetdm_deep", str, None,
            "DeNetDM: the deep (biased) branch's architecture (None: your own --model where you "
            "give one, mlp_deep for an MLP, resnet20 on Corrupted CIFAR-10, else the run's "
            "--model)", "the authors' branches", "model",
        ),
        Option(
            "denetdm_shallow", str, None,
            "DeNetDM: the shallow (debiased) branch's architecture (None: mlp_shallow for an "
            "MLP, cnn3 on 32x32 images, else cnn4; these take the deep branch's feature size)",
            "the authors' branches", "model",
        ),
    )  # fmt: skip

    @classmethod
    def preset(cls, dataset, percent):
        """The authors' settings (AUTHORS_SETTINGS), their epochs as steps on the data the preset
        trains on."""
        if dataset not in AUTHORS_SETTINGS:
            return {}
        settings = dict(AUTHORS_SETTINGS[dataset])
        stage1_epochs, epochs = settings.pop("stage1_epochs"), settings.pop("epochs")
        batch = settings["batch_size"]
        if dataset in PUBLISHED_TRAIN_SIZES:
            steps_per_epoch = PUBLISHED_TRAIN_SIZES[dataset] // batch
        else:
            steps_per_epoch = -(-TRAIN_SIZES[dataset] // batch)
        return {
            **PUBLISHED_ON.get(dataset, {}),
            **settings,
            "num_steps": epochs * steps_per_epoch,
            "denetdm_stage1_steps": stage1_epochs * steps_per_epoch,
        }

    @classmethod
    def resolve_options(cls, cfg) -> dict:
        deep, shallow = default_branches(cfg.model, cfg.dataset)
        return {
            "denetdm_deep": cfg.denetdm_deep or deep,
            "denetdm_shallow": cfg.denetdm_shallow or shallow,
        }

    @classmethod
    def training_reads(cls, cfg) -> tuple[str, ...]:
        """oracle_test picks stage 1 by the bias-conflicting accuracy of the test split."""
        oracle = cfg.denetdm_stage1_pick == "oracle_test"
        return super().training_reads(cfg) + ("test_labels", "test_bias_labels") * oracle

    @classmethod
    def validate(cls, cfg) -> None:
        """Built-in branches of two fixed feature sizes are refused here; a user's model is
        checked when it is built (``build_models``, which the preflight calls)."""
        from debiaslab.models import BUILTIN_MODELS, FREE_WIDTH, MODELS

        branches = (cfg.denetdm_deep, cfg.denetdm_shallow)
        if cfg.denetdm_shallow in FREE_WIDTH or not set(branches) <= BUILTIN_MODELS:
            return
        deep, shallow = (MODELS[name](num_classes=2).fc.in_features for name in branches)
        _check_feature_sizes(cfg, deep, shallow)

    @classmethod
    def build_models(cls, cfg, num_classes: int, in_shape) -> dict:
        """The shallow branch's feature vector is as wide as the deep one's where its
        architecture allows (the authors' pairs have equal sizes: nothing changes for them)."""
        from debiaslab.models import FREE_WIDTH, build_model

        models = {}
        for name in cls.model_heads(cfg):
            arch = cls.model_architecture(cfg, name)
            width = None
            if name == "shallow" and arch.lower() in FREE_WIDTH:
                width = models["deep"].fc.in_features
            models[name] = build_model(arch, num_classes, 1, in_shape, feature_dim=width)
        _check_feature_sizes(cfg, models["deep"].fc.in_features, models["shallow"].fc.in_features)
        return models

    @classmethod
    def model_heads(cls, cfg) -> dict[str, int]:
        return {"model": 1, "deep": 1, "shallow": 1}

    @classmethod
    def model_architecture(cls, cfg, name: str) -> str:
        target = cfg.denetdm_deep if cfg.denetdm_stage2 == "authors" else cfg.model
        return {"deep": cfg.denetdm_deep, "shallow": cfg.denetdm_shallow}.get(name, target)

    def __init__(self, cfg, models, train_targets, num_classes, generator, train_biases=None):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        self.authors = cfg.denetdm_stage2 == "authors"
        self.stage1_best: dict | None = None  # oracle_test: the best stage-1 evaluation so far

    @classmethod
    def stages(cls, cfg) -> tuple[Stage, ...]:
        return (
            Stage("poe", cfg.denetdm_stage1_steps, BRANCHES),
            Stage("main", cfg.num_steps, ("model",)),
        )

    def optimizer_settings(self, name: str) -> tuple[float, float]:
        if name in BRANCHES:
            return self.cfg.denetdm_stage1_lr, self.cfg.denetdm_stage1_weight_decay
        return super().optimizer_settings(name)

    def _main(self) -> bool:
        return self.stage.name == "main"

    def train(self) -> None:
        """Only the stage's models in training mode: a frozen branch's BatchNorm statistics stay."""
        for name, model in self.models.items():
            model.train(name in self.stage.models)

    def experts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deep and the shallow branch's feature vectors."""
        return self.models["deep"].extract(x), self.models["shallow"].extract(x)

    def stage_evaluated(self, stage, record) -> None:
        """oracle_test: keep both branches whenever the shallow one's bias-conflicting test
        accuracy beats the stage's best so far (the first of equal ones)."""
        if self.cfg.denetdm_stage1_pick != "oracle_test":
            return
        score = record["test"]["conflicting"]
        if score is None:  # test data without bias labels: its accuracy
            score = record["test"]["accuracy"]
        if self.stage1_best is None or score > self.stage1_best["score"]:
            self.stage1_best = {
                "step": record["step"],
                "score": score,
                "state": {
                    n: {k: v.detach().clone() for k, v in self.models[n].state_dict().items()}
                    for n in BRANCHES
                },
            }

    def end_stage(self, stage, data) -> None:
        """Stage 1 ends: put back the oracle's pick if asked; authors: the shared classifier goes
        on as the target's head."""
        if self.stage1_best is not None:
            for n in BRANCHES:
                self.models[n].load_state_dict(self.stage1_best["state"][n])
            self.stage1_best = {k: v for k, v in self.stage1_best.items() if k != "state"}
        if self.authors:
            self.models["model"].fc.load_state_dict(self.models["shallow"].fc.state_dict())

    def loss(self, x, y, idx, draws):
        head = self.models["shallow"].fc
        if not self._main():
            z_deep, z_shallow = self.experts(x)
            loss = mean_ce(head(z_deep + z_shallow), y)
            return loss, {"loss": loss}
        with torch.no_grad():
            z_deep, z_shallow = self.experts(x)
            teacher = head(z_shallow)
        if self.authors:
            target = self.models["model"]
            z_target = target.extract(x)
            logits = target.fc(z_target)
            poe = mean_ce(target.fc(z_target + z_deep), y)
        else:
            logits = self.models["model"](x)
            with torch.no_grad():
                biased = head(z_deep)
            poe = product_of_experts_loss(logits, biased, y)
        distill = distillation_loss(logits, teacher, self.cfg.denetdm_temperature)
        loss = poe + self.cfg.denetdm_distill_weight * distill
        return loss, {"loss": loss, "poe": poe, "distill": distill}

    def bias_logits(self, x):
        """The deep expert through the shared classifier: the branch stage 1 leaves with the bias."""
        return self.models["shallow"].fc(self.models["deep"].extract(x))

    def eval_predict(self, x):
        return self.predict(self.models, x) if self._main() else self.models["shallow"](x)

    def _schedule(self, step: int) -> None:
        """The run's LR schedule is the target's; the branches keep their learning rate."""
        if self._main() and self.schedulers and step >= self.cfg.curr_step:
            self.schedulers["model"].step()

    def lr(self) -> float:
        return float(self.optimizers[self.stage.models[0]].param_groups[0]["lr"])

    def extra_state(self) -> dict:
        return {"stage1_best": self.stage1_best}

    def load_extra_state(self, state: dict) -> None:
        self.stage1_best = state.get("stage1_best")
