"""CUDA only (skipped elsewhere): device augmentation, bf16 autocast and channels_last in training,
CUDA graphs, and fused groups."""

import pytest
import torch

from debiaslab.data.transforms import BatchTransform
from tests.conftest import read_log, tiny_bundle, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_batch_transform_on_cuda_is_seeded_and_channels_last():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")

    def run(seed):
        t = BatchTransform(
            mean=(0.5,) * 3,
            std=(0.2,) * 3,
            crop_padding=4,
            flip=True,
            channels_last=True,
            generator=torch.Generator(device="cuda").manual_seed(seed),
        )
        return t(x, train=True)

    a, b, c = run(0), run(0), run(1)
    assert a.device.type == "cuda" and a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("amp", [True, False])
@pytest.mark.parametrize("method", ["vanilla", "disent"])
def test_training_on_cuda_uses_bf16_and_channels_last(tmp_path, amp, method, monkeypatch):
    from debiaslab.models.resnet import ResNet18
    from debiaslab.train import train

    seen = {}
    original = ResNet18.extract

    def spy(self, x):
        z = original(self, x)
        if self.training:
            seen.update(
                input_channels_last=x.is_contiguous(memory_format=torch.channels_last),
                weight_channels_last=self.conv1.weight.is_contiguous(
                    memory_format=torch.channels_last
                ),
                feature_dtype=z.dtype,
            )
        return z

    monkeypatch.setattr(ResNet18, "extract", spy)
    cfg = tiny_config(
        tmp_path,
        method=method,
        model="resnet18",
        num_steps=6,
        valid_freq=3,
        lr=1e-3,
        curr_step=2,
        device="cuda",
        amp=amp,
    )
    res = train(cfg, tiny_bundle(32))
    assert seen["feature_dtype"] == (torch.bfloat16 if amp else torch.float32)
    assert seen["input_channels_last"] and seen["weight_channels_last"]
    assert res["selections"]["last"]["test"]["accuracy"] is not None
    log = read_log(tmp_path / "tiny" / "e", "train")
    train_losses = [v for r in log for k, v in r.items() if k not in ("kind", "step", "lr")]
    assert train_losses and all(torch.isfinite(torch.tensor(v)) for v in train_losses)


def test_resume_on_cuda_continues_from_the_checkpoint(tmp_path, monkeypatch):
    """An interrupted CUDA run resumes (CUDA generators, device-side sampler and EMA state restored)."""
    from debiaslab.methods.disent import DisEnt
    from debiaslab.train import train

    def cfg(log):
        return tiny_config(
            log,
            method="disent",
            model="resnet18",
            num_steps=30,
            lr=1e-3,
            curr_step=8,
            device="cuda",
            amp=False,
            channels_last=False,
        )

    straight = train(cfg(tmp_path / "a"), tiny_bundle(32))
    original = DisEnt.update

    def crash_at_17(self, x, y, idx, step):
        if step == 16:
            raise KeyboardInterrupt
        return original(self, x, y, idx, step)

    monkeypatch.setattr(DisEnt, "update", crash_at_17)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path / "b"), tiny_bundle(32))
    monkeypatch.setattr(DisEnt, "update", original)
    resumed = train(cfg(tmp_path / "b"), tiny_bundle(32))
    assert resumed["steps"] == 30
    a, b = straight["selections"]["last"]["test"], resumed["selections"]["last"]["test"]
    assert (
        abs(a["accuracy"] - b["accuracy"]) <= 0.25
    )  # same run up to CUDA's non-deterministic kernels
    state = torch.load(tmp_path / "b" / "tiny" / "e" / "checkpoint_last.pt", weights_only=True)
    assert state["step"] == 30 and state["sampler"]["epoch"] >= 1


def _weight_gap(dir_a, dir_b) -> float:
    """The largest difference between two runs' final weights and buffers, relative to each
    tensor's largest magnitude (at least 1)."""

    def tensors(run_dir):
        state = torch.load(run_dir / "checkpoint_last.pt", weights_only=True, map_location="cpu")
        return {
            f"{m}.{k}": v.float()
            for m, sd in state["method_state"]["models"].items()
            for k, v in sd.items()
        }

    a, b = tensors(dir_a), tensors(dir_b)
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1.0)) for k in a)


def _loss_gap(log_a, log_b) -> float:
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    worst = 0.0
    for a, b in zip(log_a, log_b):
        assert a.keys() == b.keys() and a["lr"] == b["lr"]
        for k in a.keys() - {"kind", "step", "lr"}:
            worst = max(worst, abs(a[k] - b[k]) / max(1.0, abs(a[k])))
    return worst


@pytest.mark.parametrize("amp", [True, False])
def test_captured_step_matches_the_eager_step_over_200_steps(tmp_path, amp):
    """CUDA graphs against the eager step from the same seed, 200 steps of DisEnt on ResNet18
    spanning curr_step (a second graph) and two LR decays: the logged losses and the final weights.

    bf16 (the default on CUDA): measured identical to the last bit on an H200. fp32: cuDNN picks
    kernels whose sums are not ordered, so two EAGER fp32 runs from one seed already drift apart
    over 200 steps; the graph may be no further from the eager run than a second eager run is."""
    from debiaslab.train import train

    def run(name, graphed):
        cfg = tiny_config(
            tmp_path / name,
            method="disent",
            model="resnet18",
            num_steps=200,
            valid_freq=50,
            log_freq=10,
            save_freq=200,
            lr=1e-3,
            curr_step=60,
            use_lr_decay=True,
            lr_decay_step=50,
            lr_gamma=0.5,
            device="cuda",
            amp=amp,
            cuda_graph=graphed,
            compile=False,
        )
        res = train(cfg, tiny_bundle(32))
        return (
            res,
            read_log(tmp_path / name / "tiny" / "e", "train"),
            tmp_path / name / "tiny" / "e",
        )

    (eager, eager_log, eager_dir), (graphed, graphed_log, graphed_dir) = (
        run("eager", False),
        run("graph", True),
    )
    assert graphed["cuda_graph"] and not eager["cuda_graph"]
    losses, weights = _loss_gap(eager_log, graphed_log), _weight_gap(eager_dir, graphed_dir)
    print(
        f"amp={amp}: graph vs eager, worst relative loss gap {losses:.2e}, weight gap {weights:.2e}"
    )
    if amp:
        assert losses <= 1e-3 and weights <= 1e-3
    else:
        _, again_log, again_dir = run("eager_again", False)
        noise = max(_loss_gap(eager_log, again_log), _weight_gap(eager_dir, again_dir))
        print(f"amp={amp}: eager vs eager, worst gap {noise:.2e}")
        assert max(losses, weights) <= 2 * noise + 1e-3


def test_resume_on_cuda_with_and_without_graphs(tmp_path, monkeypatch):
    """A run killed past curr_step resumes (graphs recorded afresh) and ends where an unbroken run
    does, in bf16 (where a CUDA run repeats itself exactly), with and without graphs."""
    from debiaslab.methods.disent import DisEnt
    from debiaslab.train import train

    def cfg(log, graphed):
        return tiny_config(
            log,
            method="disent",
            model="resnet18",
            num_steps=40,
            save_freq=10,
            lr=1e-3,
            curr_step=8,
            device="cuda",
            amp=True,
            cuda_graph=graphed,
        )

    original = DisEnt.update

    def crash_at_25(self, x, y, idx, step):
        if step == 24:
            raise KeyboardInterrupt
        return original(self, x, y, idx, step)

    for graphed in (True, False):
        train(cfg(tmp_path / f"a{graphed}", graphed), tiny_bundle(32))
        monkeypatch.setattr(DisEnt, "update", crash_at_25)
        with pytest.raises(KeyboardInterrupt):
            train(cfg(tmp_path / f"b{graphed}", graphed), tiny_bundle(32))
        monkeypatch.setattr(DisEnt, "update", original)
        resumed = train(cfg(tmp_path / f"b{graphed}", graphed), tiny_bundle(32))
        assert resumed["steps"] == 40 and resumed["cuda_graph"] == graphed
        gap = _weight_gap(
            tmp_path / f"a{graphed}" / "tiny" / "e", tmp_path / f"b{graphed}" / "tiny" / "e"
        )
        print(f"resume, cuda_graph={graphed}: weight gap {gap:.2e}")
        assert gap <= 1e-3


def _relative_distance(dir_a, dir_b) -> float:
    """|a - b| / |b| over all of two runs' final weights and buffers, as one vector."""

    def weights(run_dir):
        state = torch.load(run_dir / "checkpoint_last.pt", weights_only=True, map_location="cpu")
        models = state["method_state"]["models"].values()
        return torch.cat([v.flatten().float() for sd in models for v in sd.values()])

    a, b = weights(dir_a), weights(dir_b)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["vanilla", "disent"])
def test_a_fused_group_on_cuda_ends_near_its_runs_alone(tmp_path, method):
    """Two runs (other seeds and learning rates) fused on the GPU in CUDA's own settings:
    ResNet18, so vmap turns each convolution into a grouped one, with channels_last, bf16 autocast
    and the fused step captured as CUDA graphs (DisEnt: a second graph from curr_step). Against
    each run trained alone with the same settings: the grouped convolutions sum in another order,
    so the runs agree within a small distance that another seed falls far outside; and the
    group records that every step was fused and captured."""
    import dataclasses

    from debiaslab.group import train_group
    from debiaslab.train import train

    steps = 20

    def cfgs(log):
        base = tiny_config(
            log,
            method=method,
            model="resnet18",
            num_steps=steps,
            valid_freq=10,
            save_freq=steps,
            lr=1e-3,
            curr_step=8,
            device="cuda",
            amp=True,
            channels_last=True,
            cuda_graph=True,
            compile=False,
        )
        own = ((0, 1e-3), (1, 5e-4))
        return [dataclasses.replace(base, seed=s, lr=lr, exp=f"s{s}") for s, lr in own]

    fused = train_group(cfgs(tmp_path / "fused"), bundle=tiny_bundle(32))
    lone = [train(c, tiny_bundle(32)) for c in cfgs(tmp_path / "lone")]
    for res in fused:
        assert res["fused_steps"] == steps and len(res["fused_with"]) == 1
        assert res["cuda_graph"] and res["bf16"]
    for res in lone:
        assert res["fused_steps"] == 0 and "fused_with" not in res
        assert res["cuda_graph"] and res["bf16"]
    run = [tmp_path / side / "tiny" for side in ("fused", "lone")]
    gaps = [_relative_distance(run[0] / f"s{s}", run[1] / f"s{s}") for s in (0, 1)]
    other_seed = _relative_distance(run[1] / "s0", run[1] / "s1")
    print(f"{method}: fused vs alone {max(gaps):.2e}, another seed {other_seed:.2e}")
    assert max(gaps) < min(0.05, other_seed / 20)


def test_packed_runs_give_the_results_of_the_same_runs_alone(tmp_path):
    """Two runs sharing the GPU (sweep --runs_per_device 2) against each run on its own."""
    import json
    import subprocess
    import sys

    from tests.conftest import cli_env, write_reference

    data = write_reference(tmp_path / "data", "cifar10c", ["1pct"])

    def sweep(out, *packing):
        cmd = [
            sys.executable,
            "-m",
            "debiaslab",
            "sweep",
            "--datasets",
            "cifar10c",
            "--methods",
            "vanilla",
            "disent",
            "--ratios",
            "1",
            "--seeds",
            "0",
            "--set",
            f"data_dir={data}",
            "num_steps=120",
            "batch_size=8",
            "valid_freq=40",
            "model=resnet18",
            "--out",
            str(out),
            "--devices",
            "cuda",
            "--no_progress",
            *packing,
        ]
        subprocess.run(cmd, check=True, env=cli_env(), timeout=600)
        return {
            p.parent.name.split("-")[0]: json.loads(p.read_text())["selections"]
            for p in sorted(out.glob("cifar10c/*/results.json"))
        }

    packed, alone = (
        sweep(tmp_path / "packed", "--runs_per_device", "2"),
        sweep(tmp_path / "alone", "--jobs", "1"),
    )
    assert packed.keys() == alone.keys() == {"vanilla", "disent"}
    for method in packed:
        for rule in ("last", "oracle_best_test"):
            a, b = packed[method][rule]["test"]["accuracy"], alone[method][rule]["test"]["accuracy"]
            assert abs(a - b) <= 0.05, (method, rule, a, b)
