"""The state a method's step carries is declared (``Method.step_state``, ``boundary_state``,
``step_floats``), and fused runs (fused.py) read the declaration.

The declarations are held to what a walk over each method's attributes finds and to what its step
actually reads; a method holding tensors or floats it does not declare trains its runs one by one,
never fused on the lead run's values; a step that replaces its state instead of updating it in
place is refused.
"""

import dataclasses

import pytest
import torch

from debiaslab.config import TrainConfig
from debiaslab.errors import UserError
from debiaslab.fused import (
    FusedStep,
    UndeclaredStateWarning,
    _setting_slots,
    state_signature,
    undeclared_state,
)
from debiaslab.group import train_group
from debiaslab.methods import METHODS
from debiaslab.methods.vanilla import Vanilla
from debiaslab.train import train
from tests import test_fused
from tests.conftest import make_method, method_batches
from tests.test_fused import assert_alone, assert_fused_throughout, assert_same_run

two_ratios = test_fused.two_ratios  # the fixture: tiny CMNIST-shaped data of two ratios

# every method, with the variants whose state differs (LC's earlier reading: another EMA and
# prior; DeNetDM's oracle: a kept stage-1 state)
CASES = [
    ("vanilla", {}),
    ("lff", {}),
    ("disent", {}),
    ("jtt", {}),
    ("lc", {}),
    ("lc", {"lc_variant": "earlier_reading"}),
    ("groupdro", {}),
    ("lff_be", {"be_num_models": 2, "be_agreement": 1}),
    ("disent_be", {"be_num_models": 2, "be_agreement": 1}),
    ("denetdm", {}),
    ("denetdm", {"denetdm_stage2": "own_head", "denetdm_stage1_pick": "oracle_test"}),
]
IDS = [name + "".join(f"-{v}" for v in kw.values() if isinstance(v, str)) for name, kw in CASES]

# the old walk's exclusions: what fusion handles itself, and the config (declared floats)
NOT_STATE = {"models", "optimizers", "schedulers", "generator", "buffers", "stage", "cfg"}


def walked_tensors(value, depth=0) -> list[torch.Tensor]:
    """Every tensor reachable from ``value`` through objects, lists and dicts (the walk fusion
    did before the declarations), models and optimizers left out."""
    if depth > 4 or isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.Generator)):
        return []
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, dict)):
        items = value.values() if isinstance(value, dict) else value
    elif hasattr(value, "__dict__") and not callable(value):
        items = [v for k, v in vars(value).items() if depth or k not in NOT_STATE | {"_step"}]
    else:
        return []
    return [t for v in items for t in walked_tensors(v, depth + 1)]


def declared_tensors(method, *declarations) -> list[torch.Tensor]:
    names = [n for d in declarations for n in type(method).declared(d)]
    return [t for n in names for t in walked_tensors(getattr(method, n), 1)]


def after_hooks(method):
    """The method once its boundary hooks have kept what they keep (an aux stage's or stage 1's
    best evaluation), which the declarations must cover too."""
    first = method.stages(method.cfg)[0]
    record = {"step": 1, "valid": {"accuracy": 0.5}, "test": {"conflicting": 0.5}}
    method.stage_evaluated(first, record)
    return method


def build(name, kw):
    method, targets = make_method(name, **kw)
    return after_hooks(method), targets


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_each_method_declares_every_tensor_it_holds(name, kw):
    """The declared tensors are the walked ones, one for one: none left out, none made up."""
    method, _ = build(name, kw)
    assert undeclared_state(method) == []
    ids = sorted(map(id, declared_tensors(method, "step_state", "boundary_state")))
    assert ids == sorted(map(id, walked_tensors(method)))
    declared = [*type(method).declared("step_state"), *type(method).declared("boundary_state")]
    assert len(declared) == len(set(declared))  # no attribute in both


def steps_of(method, targets, stage) -> torch.Tensor:
    """Two steps of ``stage`` (the second after any feature swap or ramp has begun): their terms'
    values, one after the other."""
    method.stage = stage
    late = method.cfg.curr_step + 1
    batches = method_batches(targets, 2)
    return torch.cat(
        [method.update(x, y, idx, step).values for (x, y, idx), step in zip(batches, (0, late))]
    )


def scrambled(tensor: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(3)
    if tensor.dtype == torch.bool:
        tensor.logical_not_()
    else:
        tensor.copy_(torch.rand(tensor.shape, generator=g).to(tensor.dtype))


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_a_step_neither_reads_nor_writes_the_boundary_state(name, kw):
    """Scrambling what a method declares as boundary state moves none of its steps' terms, in
    any stage, and a step leaves it as it was: it may stay with its run while steps are fused."""
    for stage in METHODS[name].stages(make_method(name, **kw)[0].cfg):
        (plain, targets), (changed, _) = build(name, kw), build(name, kw)
        for tensor in declared_tensors(changed, "boundary_state"):
            scrambled(tensor)
        before = [t.clone() for t in declared_tensors(plain, "boundary_state")]
        assert torch.equal(steps_of(plain, targets, stage), steps_of(changed, targets, stage))
        assert all(map(torch.equal, before, declared_tensors(plain, "boundary_state")))


def undeclared_floats(method) -> list[str]:
    """The config's float settings the method does not declare its step reads."""
    read = {name for _, name, _ in _setting_slots(method)}
    floats = [f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)]
    return [n for n in floats if n not in read and isinstance(getattr(method.cfg, n), float)]


@pytest.mark.parametrize("name, kw", CASES, ids=IDS)
def test_a_step_reads_no_float_setting_it_does_not_declare(name, kw):
    """Every float setting outside the method's declaration (its float options and
    ``step_floats``), changed, leaves every step's terms as they were, in every stage: fused
    runs that differ in it may step on the lead run's value."""
    for stage in METHODS[name].stages(make_method(name, **kw)[0].cfg):
        method, targets = build(name, kw)
        expected = steps_of(method, targets, stage)
        for field in undeclared_floats(method):
            method, targets = build(name, kw)
            setattr(method.cfg, field, getattr(method.cfg, field) + 0.25)
            assert torch.equal(steps_of(method, targets, stage), expected), field


def test_declarations_name_config_floats_and_add_up_over_the_bases():
    floats = {f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)}
    for cls in METHODS.values():
        assert set(cls.declared("step_floats")) <= floats, cls
        assert cls.declared("step_state")[0] == "halted"  # the base's, never lost by a subclass
    assert METHODS["disent_be"].declared("step_state") == ("halted", "ema", "aligned")


class Counted(Vanilla):
    """A plugin method with per-sample state: how often each sample was drawn, which weighs its
    loss (so a run reading another run's counts ends elsewhere)."""

    def __init__(self, cfg, models, train_targets, num_classes, generator, train_biases=None):
        super().__init__(cfg, models, train_targets, num_classes, generator)
        self.counts = torch.zeros(len(train_targets), device=train_targets.device)

    def loss(self, x, y, idx, draws):
        self.counts.index_add_(0, idx, torch.ones(len(idx)))
        ce = torch.nn.functional.cross_entropy(self.models["model"](x), y, reduction="none")
        loss = (ce / self.counts[idx]).mean()
        return loss, {"loss": loss}

    def extra_state(self) -> dict:
        return {"counts": self.counts.clone()}

    def load_extra_state(self, state: dict) -> None:
        self.counts.copy_(state["counts"])


class DeclaredCounted(Counted):
    step_state = ("counts",)


class Replacing(DeclaredCounted):
    """Declares its counts but replaces them in its step instead of updating them in place."""

    def loss(self, x, y, idx, draws):
        self.counts = self.counts + 1
        return super().loss(x, y, idx, draws)


def as_vanilla(monkeypatch, cls):
    """Runs of ``--method vanilla`` build ``cls`` (a plugin method, as the loop would build it)."""
    monkeypatch.setitem(METHODS, "vanilla", cls)


def test_an_undeclared_tensor_keeps_runs_apart_with_a_warning_and_fusing_them_is_refused(
    monkeypatch,
):
    as_vanilla(monkeypatch, Counted)
    runs = [make_method("vanilla")[0] for _ in range(2)]
    assert undeclared_state(runs[0]) == ["counts"]
    undeclared = r"Counted holds tensors or floats it does not declare \('counts'\)"
    with pytest.warns(UndeclaredStateWarning, match=undeclared) as warned:
        signatures = [state_signature(m) for m in runs]
    assert signatures[0] != signatures[1]  # group.fusible_parts: a part of its own each
    assert "Counted.step_state" in str(warned[0].message) and "one by one" in str(warned[0].message)
    with pytest.raises(UserError, match=undeclared) as refused:
        FusedStep(runs)
    assert "\n" not in str(refused.value)


def test_an_undeclared_float_attribute_is_caught_too():
    method, _ = make_method("vanilla")
    method.gamma = 2.0  # e.g. a setting copied in __init__ and read by the step
    assert undeclared_state(method) == ["gamma"]


def test_a_step_that_replaces_its_declared_state_is_refused_when_fused(monkeypatch):
    as_vanilla(monkeypatch, Replacing)
    runs = [make_method("vanilla")[0] for _ in range(2)]
    _, targets = make_method("vanilla")
    fused = FusedStep(runs)
    x, y, idx = next(method_batches(targets, 1))
    with pytest.raises(UserError, match="Replacing's step replaced 'counts'.*in place"):
        fused.update(*(torch.stack([t, t]) for t in (x, y, idx)), 0)


def plugin_configs(data, logs) -> list[TrainConfig]:
    """Two runs of ``--method vanilla`` (the plugin): seeds 0 and 1 on other ratios."""
    base = dict(dataset="cmnist", method="vanilla", data_dir=str(data), log_dir=str(logs),
                num_steps=40, valid_freq=20, log_freq=10, batch_size=16, lr=0.01,
                progress=False, device="cpu", fused_exact=True)  # fmt: skip
    return [
        TrainConfig(**base, seed=s, percent=p, exp=f"plugin-{s}")
        for s, p in ((0, "1pct"), (1, "2pct"))
    ]


@pytest.mark.parametrize("cls", [Counted, DeclaredCounted])
def test_a_plugins_runs_fuse_where_it_declares_its_state_and_end_as_alone_either_way(
    two_ratios, tmp_path, monkeypatch, cls
):
    """Declared, the plugin's runs share every step; undeclared, each trains alone after the
    warning. Either way each run ends exactly where it ends trained alone."""
    as_vanilla(monkeypatch, cls)
    fused_cfgs = plugin_configs(two_ratios, tmp_path / "fused")
    if cls is Counted:
        with pytest.warns(UndeclaredStateWarning):
            fused = train_group(fused_cfgs)
        assert_alone(fused)
    else:
        assert_fused_throughout(train_group(fused_cfgs))
    for cfg in plugin_configs(two_ratios, tmp_path / "lone"):
        train(cfg)
    for cfg in fused_cfgs:
        assert_same_run(
            tmp_path / "fused" / "cmnist" / cfg.exp, tmp_path / "lone" / "cmnist" / cfg.exp
        )
