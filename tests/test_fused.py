"""Fused runs: K runs trained as one step per iteration end exactly where the same runs end alone.

The runs of a group differ in seed, ratio (data of another size) and float settings; each keeps
its own weights, optimizer, per-sample state, selections, checkpoints and log. With the MLP the
fused step repeats the lone step bit for bit (models/layers.py); with a ResNet, vmap's grouped
convolutions sum in another order, so there the runs agree within a tolerance that another seed
falls far outside.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from debiaslab.config import METHOD_FIELDS, TrainConfig
from debiaslab.fused import FusedStep
from debiaslab.group import FusedLoop, GroupFailed, fusion_groups, fusion_key, train_group
from debiaslab.train import TrainingLoop, train
from tests.conftest import assert_same_tensors, read_log, tiny_split

STEPS = 200


@pytest.fixture(scope="module")
def two_ratios(tmp_path_factory):
    """Tiny CMNIST-shaped data: 1pct and 2pct of one size (120 training images, other
    conflicting samples and pixels), and 5pct of another (150)."""
    from debiaslab.data.reference import write_split

    root = tmp_path_factory.mktemp("fused-data")
    base = root / "cmnist"
    for pct, n, every, seed in (("1pct", 40, 10, 0), ("2pct", 40, 4, 5), ("5pct", 50, 3, 7)):
        write_split(tiny_split(n, 3, every, seed), base / pct, "train")
        write_split(tiny_split(6, 3, 3, seed + 1), base / pct / "valid", "flat", start_id=1000)
    write_split(tiny_split(10, 3, 2, 2), base / "test", "class", start_id=2000)
    return root


def configs(data, logs, method, own_lr=0.005, **kw) -> list[TrainConfig]:
    """Three runs of ``method``: seeds 0, 1, 2 on ratios 1pct, 2pct, 1pct, the third with its
    own learning rate ``own_lr`` and a float setting (what a group may differ in); each run's
    products by its own kernels (``fused_exact``) unless ``kw`` says otherwise."""
    kw = {"fused_exact": True, **kw}
    base = dict(
        dataset="cmnist",
        method=method,
        data_dir=str(data),
        log_dir=str(logs),
        num_steps=STEPS,
        valid_freq=50,
        log_freq=25,
        batch_size=16,
        lr=0.01,
        progress=False,
        device="cpu",
        **kw,
    )
    # a float setting of the method's own where it has one (DisEnt's and LC's lambda), else q
    own_float = (
        {"lambda_dis_align": 2.0} if method in METHOD_FIELDS["lambda_dis_align"] else {"q": 0.5}
    )
    runs = [(0, "1pct", {}), (1, "2pct", {}), (2, "1pct", {"lr": own_lr, **own_float})]
    return [
        TrainConfig(**{**base, **own, "seed": s, "percent": p, "exp": f"{method}-{s}"})
        for s, p, own in runs
    ]


def run_state(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    last = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    picks = {
        p.name: torch.load(p, weights_only=True)["models"]
        for p in run_dir.glob("checkpoint_*.pt")
        if p.name != "checkpoint_last.pt"
    }
    log = [{k: v for k, v in r.items()} for r in read_log(run_dir)]
    return results, last, picks, log


def assert_same_run(fused_dir, lone_dir):
    """Everything a run leaves is the same: selections, full checkpoint, picked models, log."""
    (r1, last1, picks1, log1), (r2, last2, picks2, log2) = run_state(fused_dir), run_state(lone_dir)
    assert r1["selections"] == r2["selections"]
    assert r1["default_selection"] == r2["default_selection"]
    assert r1["skipped_steps"] == r2["skipped_steps"]
    assert r1["data"] == r2["data"]
    assert {**r1["config"], "log_dir": ""} == {**r2["config"], "log_dir": ""}
    for part in ("method_state", "sampler", "average", "rng", "tracker"):
        assert_same_tensors(last1.get(part), last2.get(part), part)
    assert_same_tensors(picks1, picks2, "picked models")
    assert log1 == log2


def all_steps(results) -> int:
    """Every step the run took, over all its stages."""
    return sum(s["steps"] for s in results.get("stages", [{"steps": results["steps"]}]))


def assert_fused_throughout(results):
    """Each run took every one of its steps inside a fused step, and says with which runs."""
    assert [r["fused_steps"] for r in results] == [all_steps(r) for r in results]
    assert all(r["fused_with"] for r in results)


def assert_alone(results):
    """Each run stepped alone: no fused step, and no fusion claimed."""
    assert [r["fused_steps"] for r in results] == [0] * len(results)
    assert all("fused_with" not in r for r in results)


def split_lines(err: str) -> list[str]:
    """The lines that say a group was split into the parts that can share a step."""
    return [line for line in err.splitlines() if "cannot all share one step" in line]


def train_both(data, tmp_path, method, **kw):
    fused_cfgs = configs(data, tmp_path / "fused", method, **kw)
    lone_cfgs = configs(data, tmp_path / "lone", method, **kw)
    fused = train_group(fused_cfgs)
    lone = [train(c) for c in lone_cfgs]
    return fused_cfgs, lone_cfgs, fused, lone


@pytest.mark.parametrize(
    "method, kw",
    [
        ("vanilla", {}),
        ("lff", {}),
        # across the feature swap's start and two LR decays
        ("disent", dict(curr_step=60, use_lr_decay=True, lr_decay_step=50, lr_gamma=0.5)),
        ("jtt", dict(jtt_steps=40, jtt_upweight=5)),  # staged: ERM, then the upsampled main
        ("lff_be", dict(be_num_models=2, be_steps=30, be_agreement=1)),
        ("denetdm", dict(denetdm_stage1_steps=50)),
    ],
)
def test_fused_mlp_runs_end_bit_for_bit_where_lone_runs_end(two_ratios, tmp_path, method, kw):
    fused_cfgs, lone_cfgs, fused, lone = train_both(two_ratios, tmp_path, method, **kw)
    # counted by the fused step itself: a group that silently stepped each run alone fails here
    assert_fused_throughout(fused)
    assert_alone(lone)
    for f_cfg, l_cfg, f_res in zip(fused_cfgs, lone_cfgs, fused):
        assert_same_run(
            tmp_path / "fused" / "cmnist" / f_cfg.exp, tmp_path / "lone" / "cmnist" / l_cfg.exp
        )
        others = sorted(c.run_dir() for c in fused_cfgs if c is not f_cfg)
        assert sorted(f_res["fused_with"]) == others
        config = json.loads((tmp_path / "fused" / "cmnist" / f_cfg.exp / "config.json").read_text())
        assert sorted(config["fused_with"]) == others
        # the same identity as alone: test, report, collect and load_run see the same run
        assert f_cfg.resolved().config_hash() == l_cfg.resolved().config_hash()


@pytest.fixture
def stacked_adam_steps(monkeypatch):
    """How many times a group's one Adam kernel (``fused.StackedAdam``) stepped its runs."""
    from debiaslab.fused import StackedAdam

    calls = {"n": 0}
    step = StackedAdam.step

    def counted(self, skip):
        calls["n"] += 1
        return step(self, skip)

    monkeypatch.setattr(StackedAdam, "step", counted)
    return calls


@pytest.mark.parametrize(
    "method, kw",
    [
        ("lff", {}),
        ("disent", dict(curr_step=60, use_lr_decay=True, lr_decay_step=50, lr_gamma=0.5)),
        ("jtt", dict(jtt_steps=40, jtt_upweight=5)),  # a new optimizer for its second stage
    ],
)
def test_runs_of_one_learning_rate_step_adam_as_one_kernel_bit_for_bit_as_alone(
    two_ratios, tmp_path, stacked_adam_steps, method, kw
):
    """Equal Adam settings: one kernel over the stacked parameters and moments steps every run
    of the group, each run still ending where it ends alone (runs of their own learning rates
    step their own kernels: the tests above)."""
    fused_cfgs, lone_cfgs, fused, lone = train_both(two_ratios, tmp_path, method, own_lr=0.01, **kw)
    assert stacked_adam_steps["n"] == STEPS + kw.get("jtt_steps", 0)
    assert_fused_throughout(fused)
    for f_cfg, l_cfg in zip(fused_cfgs, lone_cfgs):
        assert_same_run(
            tmp_path / "fused" / "cmnist" / f_cfg.exp, tmp_path / "lone" / "cmnist" / l_cfg.exp
        )


def test_runs_of_data_of_other_sizes_train_in_parts_each_as_alone(two_ratios, tmp_path, capsys):
    """1pct (120 images) and 5pct (150): their per-sample tables differ in shape, so the group
    trains them as two parts, as one printed line says; each still ends where it ends alone,
    reads only its own data and records no fusion."""
    fused = [
        dataclasses.replace(c, percent=p)
        for c, p in zip(configs(two_ratios, tmp_path / "fused", "lff")[:2], ("1pct", "5pct"))
    ]
    lone = [dataclasses.replace(c, log_dir=str(tmp_path / "lone")) for c in fused]
    results = train_group(fused)
    (line,) = split_lines(capsys.readouterr().err)
    assert "differ in shape" in line and "2 groups: lff-0 | lff-1" in line
    assert_alone(results)
    assert [r["data"]["counts"]["train"]["n"] for r in results] == [120, 150]
    for f, c in zip(fused, lone):
        train(c)
        assert_same_run(tmp_path / "fused" / "cmnist" / f.exp, tmp_path / "lone" / "cmnist" / c.exp)


def test_each_run_of_a_group_reads_its_own_ratio(two_ratios, tmp_path):
    """1pct and 2pct in one fused group: each run records and trains on its own data."""
    cfgs = configs(two_ratios, tmp_path, "lff")[:2]
    results = train_group(cfgs)
    shas = [r["data"]["sha256"]["train"] for r in results]
    assert shas[0] != shas[1] and [r["percent"] for r in results] == ["1pct", "2pct"]
    assert_fused_throughout(results)
    for cfg, sha in zip(cfgs, shas):
        alone = train(dataclasses.replace(cfg, log_dir=str(tmp_path / "alone")))
        assert alone["data"]["sha256"]["train"] == sha


@pytest.fixture
def nan_in_run_1_at_step_7(monkeypatch):
    """A NaN in the inputs of the run of seed 1 at its 7th step, fused or alone."""
    batches, batch = FusedLoop.batches, TrainingLoop.batch

    def seventh_of_seed_1(loop) -> bool:
        loop.steps_drawn = getattr(loop, "steps_drawn", 0) + 1
        return loop.cfg.seed == 1 and loop.steps_drawn == 7

    def fused_batches(self):
        xs, ys, idxs = batches(self)
        for k, loop in enumerate(self.active):
            if seventh_of_seed_1(loop):
                xs[k] = float("nan")
        return xs, ys, idxs

    def lone_batch(self):
        x, y, idx = batch(self)
        return (x * float("nan") if seventh_of_seed_1(self) else x), y, idx

    monkeypatch.setattr(FusedLoop, "batches", fused_batches)
    monkeypatch.setattr(TrainingLoop, "batch", lone_batch)


@pytest.mark.parametrize("mode, own_lr", [("skip", 0.005), ("stop", 0.005), ("skip", 0.01)])
def test_a_nan_in_one_run_leaves_the_others_as_they_are(
    two_ratios, tmp_path, nan_in_run_1_at_step_7, mode, own_lr
):
    """``own_lr`` 0.01: every run of one learning rate, so the group's one Adam kernel skips
    the step of the NaN and the two other runs step alone; from the next boundary on, the run
    that skipped counts one step fewer, so each run steps its own kernel."""
    fused_cfgs = configs(two_ratios, tmp_path / "fused", "lff", own_lr, on_nonfinite=mode)
    lone_cfgs = configs(two_ratios, tmp_path / "lone", "lff", own_lr, on_nonfinite=mode)
    if mode == "skip":
        results = train_group(fused_cfgs)
        assert [bool(r["skipped_steps"]) for r in results] == [False, True, False]
        assert_fused_throughout(results)  # a skipped step was still taken in the fused step
    else:
        with pytest.raises(GroupFailed, match="1 of 3 runs failed") as failed:
            train_group(fused_cfgs)
        assert list(failed.value.errors) == [fused_cfgs[1].run_dir()]
        finished = [failed.value.results[i] for i in (0, 2)]
        assert failed.value.results[1] is None
        assert_fused_throughout(finished)  # the two others go on fused, as a group of two
        # each names the stopped run too: they took its first 25 steps together
        others = [sorted(c.run_dir() for c in fused_cfgs if c.seed != s) for s in (0, 2)]
        assert [sorted(r["fused_with"]) for r in finished] == others
        assert (tmp_path / "fused" / "cmnist" / fused_cfgs[1].exp / "FAILED").exists()
    for f_cfg, l_cfg in zip(fused_cfgs, lone_cfgs):
        if mode == "stop" and f_cfg.seed == 1:
            continue
        train(l_cfg)
        assert_same_run(
            tmp_path / "fused" / "cmnist" / f_cfg.exp, tmp_path / "lone" / "cmnist" / l_cfg.exp
        )


@pytest.mark.parametrize(
    "kw",
    [
        dict(model="resnet20", num_steps=20, valid_freq=10, log_freq=10),
        # the default CPU products: one batched product for all runs, summed in its own order
        dict(model="mlp", fused_exact=None, valid_freq=50, log_freq=50),
    ],
    ids=["resnet-grouped-convolutions", "mlp-batched-products"],
)
def test_runs_agree_within_a_tolerance_another_seed_falls_outside(two_ratios, tmp_path, kw):
    """Where a fused step sums in another order than a lone one (ResNet20's grouped
    convolutions under vmap; the MLP's batched products), runs agree up to float rounding."""
    fused_cfgs = [
        dataclasses.replace(c, **kw) for c in configs(two_ratios, tmp_path / "f", "disent")
    ]
    lone_cfgs = [
        dataclasses.replace(c, **kw) for c in configs(two_ratios, tmp_path / "l", "disent")
    ]
    fused = train_group(fused_cfgs[:2])
    products = "batched" if kw.get("fused_exact", True) is None else "exact"
    assert [r["fused_products"] for r in fused] == [products] * 2
    for c in lone_cfgs[:2]:
        train(c)

    def weights(cfg):
        state = torch.load(f"{cfg.run_dir()}/checkpoint_last.pt", weights_only=True)
        models = state["method_state"]["models"]
        return torch.cat([v.flatten().float() for m in models.values() for v in m.values()])

    other = dataclasses.replace(lone_cfgs[0], seed=7, exp="other")
    train(other)

    def distance(a, b):  # relative: BatchNorm's running variances are large numbers
        return float((weights(a) - weights(b)).norm() / weights(b).norm())

    tolerance = 1e-3
    for f, lone in zip(fused_cfgs[:2], lone_cfgs[:2]):
        assert distance(f, lone) < tolerance
    assert distance(other, lone_cfgs[0]) > 100 * tolerance


def test_fusion_keys_group_what_may_differ_and_split_what_may_not():
    base = TrainConfig(dataset="cmnist", method="disent", num_steps=100)
    same = [
        dataclasses.replace(base, seed=1),
        dataclasses.replace(base, percent="5pct"),
        dataclasses.replace(base, lr=0.5, lambda_swap=3.0, q=0.5, ema_alpha=0.9),
    ]
    assert {fusion_key(c) for c in same} == {fusion_key(base)}
    for other in (
        dataclasses.replace(base, method="lff"),
        dataclasses.replace(base, num_steps=200),
        dataclasses.replace(base, curr_step=10),
        dataclasses.replace(base, batch_size=32),
        dataclasses.replace(base, model="resnet20"),
    ):
        assert fusion_key(other) != fusion_key(base)
    cfgs = [base, *same, dataclasses.replace(base, method="lff")]
    assert fusion_groups(cfgs, 3) == [[0, 1, 2], [3], [4]]


def test_fit_many_trains_seeds_and_settings_fused_each_as_fit_would(tmp_path):
    import debiaslab as dl
    from tests.conftest import tiny_bundle

    data = tiny_bundle()
    common = dict(model="mlp", num_steps=20, valid_freq=10, batch_size=16, device="cpu")
    common["fused_exact"] = True  # a runtime setting: the same folder as without it
    runs = dl.fit_many(
        "lff", data, [{"seed": 0}, {"seed": 1, "lr": 0.003}], log_dir=tmp_path / "many", **common
    )
    alone0 = dl.fit("lff", data, log_dir=tmp_path / "many", seed=0, **common)
    assert runs[0].dir == alone0.dir  # fit's default folder: the reused run, named by its settings
    assert [len(r.results["fused_with"]) for r in runs] == [1, 1]
    assert_fused_throughout([r.results for r in runs])
    alone = dl.fit("lff", data, log_dir=tmp_path / "one", exp="x", seed=1, lr=0.003, **common)
    assert_alone([alone.results])
    assert runs[1].results["selections"] == alone.results["selections"]
    assert runs[1].config.config_hash() == alone.config.config_hash()


def test_runs_that_cannot_share_a_step_train_as_the_groups_that_can(two_ratios, tmp_path, capsys):
    """Runs of other batch sizes, methods and models handed to one group: it trains the runs
    that can share a step fused and each other run alone, says so in one line, and only the
    fused runs record a fusion."""
    lff = [
        dataclasses.replace(c, num_steps=20, valid_freq=10)
        for c in configs(two_ratios, tmp_path, "lff")
    ]
    cfgs = [
        lff[0],
        dataclasses.replace(lff[1], batch_size=8),
        lff[2],
        dataclasses.replace(lff[1], method="vanilla", exp="vanilla-1"),
        dataclasses.replace(lff[1], model="mlp_lff", exp="mlp_lff-1"),
    ]
    results = train_group(cfgs)
    (line,) = split_lines(capsys.readouterr().err)
    assert "differ in batch_size, method, model" in line
    assert "4 groups: lff-0 + lff-2 | lff-1 | vanilla-1 | mlp_lff-1" in line
    assert_fused_throughout([results[0], results[2]])
    assert results[0]["fused_with"] == [cfgs[2].run_dir()]
    assert_alone([results[1], *results[3:]])
    assert [r["config"]["batch_size"] for r in results] == [16, 8, 16, 16, 16]


def interrupted_group(cfgs, monkeypatch, at_step: int) -> None:
    """Train ``cfgs`` as a group stopped by an interrupt in its fused step ``at_step``."""
    update = FusedStep.update

    def stop(self, xs, ys, idxs, step):
        if step == at_step:
            raise KeyboardInterrupt
        return update(self, xs, ys, idxs, step)

    monkeypatch.setattr(FusedStep, "update", stop)
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs)
    monkeypatch.setattr(FusedStep, "update", update)


def test_fused_steps_add_up_over_resumes(two_ratios, tmp_path, monkeypatch):
    """The count lives in the checkpoint: a group stopped at step 25 (saved at 20) and resumed
    counts every step once; a run of it resumed alone keeps its 20 fused steps and partner."""
    cfgs = [
        dataclasses.replace(c, num_steps=40, valid_freq=20, save_freq=10)
        for c in configs(two_ratios, tmp_path, "lff")[:2]
    ]
    interrupted_group(cfgs, monkeypatch, at_step=25)
    assert_fused_throughout(train_group(cfgs))
    again = [dataclasses.replace(c, log_dir=str(tmp_path / "again")) for c in cfgs]
    interrupted_group(again, monkeypatch, at_step=25)
    alone = train(again[0])
    assert alone["fused_steps"] == 20 and alone["fused_with"] == [again[1].run_dir()]


def group_command(data, logs):
    return [
        *("-m", "debiaslab", "train", "--method", "disent", "--dataset", "cmnist"),
        *("--percent", "1pct", "--data_dir", str(data), "--log_dir", str(logs), "--exp", "g"),
        *("--seeds", "0", "1", "2", "--num_steps", "400", "--valid_freq", "50"),
        *("--log_freq", "7", "--save_freq", "20", "--batch_size", "16", "--lr", "0.01"),
        *("--curr_step", "100", "--use_lr_decay", "--lr_decay_step", "100", "--lr_gamma", "0.5"),
        *("--no_progress", "--device", "cpu"),
    ]


def test_a_sigkilled_fused_group_resumes_bit_for_bit(two_ratios, tmp_path):
    """``train --seeds 0 1 2`` SIGKILLed three times and rerun ends, run by run, where the
    uninterrupted group ends (and, the group being exact, where each run alone ends)."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import cli_env

    def run(logs, kill_after=None):
        proc = subprocess.Popen(
            [sys.executable, *group_command(two_ratios, logs)],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if kill_after is not None:
            dirs = [logs / "cmnist" / f"g_seed{s}" for s in range(3)]
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if all((d / "checkpoint_last.pt").exists() for d in dirs):
                    time.sleep(kill_after)
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
        proc.wait(timeout=600)
        return proc

    ref = run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr.read()
    rng = random.Random(7)
    killed = 0
    for _ in range(3):
        proc = run(tmp_path / "killed", kill_after=rng.uniform(0.0, 0.5))
        killed += proc.returncode == -signal.SIGKILL
        if proc.returncode == 0:
            break
    assert killed >= 1
    final = run(tmp_path / "killed")
    assert final.returncode == 0, final.stderr.read()
    for s in range(3):
        name = f"g_seed{s}"
        assert_same_run(tmp_path / "ref" / "cmnist" / name, tmp_path / "killed" / "cmnist" / name)


def test_sweep_units_fuse_compatible_runs_and_give_every_job_a_group():
    from debiaslab.sweep_local import Run, fused_units

    def run(method, seed, pct="1pct"):
        return Run(f"{method}{seed}{pct}", TrainConfig(method=method, seed=seed, percent=pct))

    runs = [run(m, s, p) for m in ("lff", "disent") for p in ("1pct", "2pct") for s in range(3)]
    names = [[r.name for r in unit] for unit in fused_units(runs, fuse_max=12, jobs=1)]
    assert names == [[r.name for r in runs[:6]], [r.name for r in runs[6:]]]
    sizes = [len(u) for u in fused_units(runs, fuse_max=12, jobs=2)]
    assert sizes == [3, 3, 3, 3]  # each method's six runs in two groups: both jobs busy
    assert [len(u) for u in fused_units(runs, fuse_max=4, jobs=1)] == [3, 3, 3, 3]
    assert [len(u) for u in fused_units(runs, fuse_max=1, jobs=1)] == [1] * 12  # --fuse off
    # the sweep's order (every cell's first seed first) stays: each unit where its first run was
    by_seed = sorted(runs, key=lambda r: r.cfg.seed)
    firsts = [by_seed.index(u[0]) for u in fused_units(by_seed, fuse_max=2, jobs=2)]
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("fuse", ["auto", "off"])
def test_sweep_trains_compatible_runs_as_one_fused_group(two_ratios, tmp_path, fuse):
    from tests.conftest import run_cli

    out = tmp_path / "out"
    r = run_cli(
        *("sweep", "--methods", "lff", "--ratios", "1", "2", "--seeds", "0", "1"),
        *("--set", f"data_dir={two_ratios}", "num_steps=30", "batch_size=16", "valid_freq=15"),
        *("--out", out, "--jobs", "1", "--devices", "cpu", "--no_progress", "--fuse", fuse),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 runs finished and 0 failed" in r.stdout
    results = [json.loads(p.read_text()) for p in sorted(out.glob("cmnist/*/results.json"))]
    logs = sorted((out / ".sweep-logs").iterdir())
    if fuse == "auto":
        assert all(len(res["fused_with"]) == 3 for res in results) and len(logs) == 1
        assert "fused: lff-1pct-seed0" in logs[0].read_text()
        assert_fused_throughout(results)
    else:
        assert_alone(results)
        assert len(logs) == 4


def test_a_fused_step_replays_as_one_graph_per_shape(two_ratios, tmp_path, monkeypatch):
    """The fused step under ``graphs.CapturedStep`` (a stand-in for the CUDA graph on the CPU):
    one graph per stage and draws, each run ending where the eager group ends."""
    import debiaslab.graphs
    import debiaslab.train
    from tests.test_graphs import StandInGraph

    kw = dict(curr_step=30, num_steps=60, valid_freq=20)
    eager = [dataclasses.replace(c, **kw) for c in configs(two_ratios, tmp_path / "e", "disent")]
    train_group(eager)
    StandInGraph.recorded = []
    monkeypatch.setattr(debiaslab.graphs, "CudaGraph", StandInGraph)
    monkeypatch.setattr(debiaslab.train, "capture_step", lambda cfg, device, method: True)
    graphed = [dataclasses.replace(c, log_dir=str(tmp_path / "g")) for c in eager]
    results = train_group(graphed)
    assert all(r["cuda_graph"] for r in results)
    assert_fused_throughout(results)  # a replayed step is counted too
    assert len(StandInGraph.recorded) == 2  # before and after the swap's permutation appears
    for e, g in zip(eager, graphed):
        assert_same_run(tmp_path / "e" / "cmnist" / e.exp, tmp_path / "g" / "cmnist" / g.exp)


def test_a_boundary_keeps_the_stacked_tensors_a_captured_graph_holds(two_ratios, tmp_path):
    """sync_out / sync_in at a boundary write the stacked state in place: a CUDA graph recorded
    before it reads and writes those very tensors after it."""
    from debiaslab.train import open_run

    loops = []
    for cfg in configs(two_ratios, tmp_path, "lff")[:2]:
        opened = open_run(cfg)
        loop = TrainingLoop(opened.cfg, opened.bundle, opened.device, opened.run_dir)
        loop.restore(None, accelerate=False)
        loop.open_bar(None)
        loops.append(loop)
    group = FusedLoop(loops)
    for step in range(3):
        group.step(step, 0)
    state, params = list(group.fused.state), list(group.fused.params)
    group.fused.sync_out()
    loops[1].method.ema.visited.fill_(False)  # a boundary hook changing a run's own state
    group.fused.sync_in()
    assert all(a is b for a, b in zip(state, group.fused.state))
    assert all(a is b for a, b in zip(params, group.fused.params))
    visited = [t for t in group.fused.state if t.dtype == torch.bool and t.shape[-1] == 120]
    assert visited and not visited[0][1].any() and visited[0][0].any()
    for loop in loops:
        loop.logger.close()


def test_a_run_released_from_a_captured_group_is_no_longer_marked_graphed(two_ratios, tmp_path):
    """A run leaving a group (its partner stopped) steps alone: results.json must not claim the
    group's graphs, and the loop captures its own step again where configured."""
    from debiaslab.accelerate import capture_graphs
    from debiaslab.train import open_run
    from tests.test_graphs import StandInGraph

    loops = []
    for cfg in configs(two_ratios, tmp_path, "lff")[:2]:
        opened = open_run(cfg)
        loop = TrainingLoop(opened.cfg, opened.bundle, opened.device, opened.run_dir)
        loop.restore(None, accelerate=False)
        loops.append(loop)
    group = FusedLoop(loops)
    capture_graphs(group.fused, graph=StandInGraph)
    assert all(loop.method.graphed for loop in loops)
    group.fused.release()
    assert not any(loop.method.graphed for loop in loops)
    for loop in loops:
        loop.logger.close()


def test_sweep_refuses_a_fuse_max_below_one(tmp_path):
    from tests.conftest import run_cli

    r = run_cli("sweep", "--methods", "lff", "--out", tmp_path, "--fuse_max", "0", "--dry_run")
    assert r.returncode == 2 and "--fuse_max must be positive" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_seeds_train_as_one_fused_group_per_process_each_as_in_one_process(two_ratios, tmp_path):
    """``--seeds 0 1 2 3 --jobs 2``: two processes, each a fused group of two seeds on its share
    of the cores, every run ending where the same pair trained in this one process ends."""
    from debiaslab.sweep import cpu_count
    from tests.conftest import run_cli

    def seeds(logs, *args, threads=1):
        command = group_command(two_ratios, logs)
        at = command.index("--seeds")
        command[at + 1 : at + 4] = args
        command[command.index("400")] = "60"
        done = run_cli(*command[2:], env={"OMP_NUM_THREADS": str(threads)})
        assert done.returncode == 0, done.stderr
        return done

    done = seeds(tmp_path / "two", "0", "1", "2", "3", "--jobs", "2")
    assert done.stdout.count("run directory:") == 4
    runs = {s: tmp_path / "two" / "cmnist" / f"g_seed{s}" for s in range(4)}
    results = {s: json.loads((d / "results.json").read_text()) for s, d in runs.items()}
    assert_fused_throughout(list(results.values()))
    assert [results[s]["fused_with"] for s in range(4)] == [
        [str(runs[1])],
        [str(runs[0])],
        [str(runs[3])],
        [str(runs[2])],
    ]
    # each child trained on cpu_count() // 2 threads: the pair in this process on as many
    seeds(tmp_path / "one", "0", "1", "--jobs", "1", threads=max(1, cpu_count() // 2))
    for s in (0, 1):
        assert_same_run(runs[s], tmp_path / "one" / "cmnist" / f"g_seed{s}")


def test_the_default_layout_is_one_process_per_thread_on_the_cpu_where_runs_can_move(
    monkeypatch, tmp_path
):
    import debiaslab as dl
    from debiaslab.group import default_processes
    from tests.conftest import tiny_bundle

    cfgs = [TrainConfig(method="lff", dataset="cmnist", seed=s, device="cpu") for s in range(5)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert default_processes(cfgs) == 2
    assert default_processes(cfgs[:1]) == 1
    assert default_processes(cfgs, bundle=tiny_bundle()) == 1  # in-memory data lives here
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_processes(cfgs) == 5

    def mine(num_classes, head_inputs, in_shape):
        return dl.Backbone(torch.nn.Flatten(), 2352, num_classes, head_inputs)

    dl.register_model("mine_for_layout", mine)
    mine = [dataclasses.replace(c, model="mine_for_layout") for c in cfgs]
    assert default_processes(mine) == 1  # a factory registered here: a child could not build it


def test_the_processes_of_seeds_stop_when_it_is_killed(two_ratios, tmp_path):
    """SIGKILL of ``--seeds ... --jobs 2`` leaves no child training on: each gets SIGTERM, saves
    a checkpoint a rerun resumes from, and stops."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import cli_env

    command = group_command(two_ratios, tmp_path)
    command[command.index("--seeds") + 1 : command.index("--seeds") + 4] = ["0", "1"]
    command[command.index("400")] = "1000000"
    command += ["--jobs", "2"]

    def children() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"debiaslab.runner" in cmdline and str(tmp_path).encode() in cmdline:
                found.append(int(proc.name))
        return found

    parent = subprocess.Popen([sys.executable, *command], env=cli_env(OMP_NUM_THREADS="1"))
    dirs = [tmp_path / "cmnist" / f"g_seed{s}" for s in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all((d / "checkpoint_last.pt").exists() for d in dirs):
        time.sleep(0.05)
    assert len(children()) == 2, "the two processes of --jobs 2 did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while children() and time.time() < deadline:
        time.sleep(0.1)
    assert children() == []
    for run_dir in dirs:  # stopped by the signal, resumable (RunDir.mark_failed's words)
        assert "resume from the last checkpoint" in (run_dir / "FAILED").read_text()
