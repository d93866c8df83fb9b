import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each pytest-xdist worker (one per core) trains on one thread, and so do the debiaslab
    # processes its tests start: workers beside each other would otherwise split each core.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """``$DEBIASLAB_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("DEBIASLAB_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture
def mnist_npz() -> Path:
    d = shared_data_dir()
    if d is None or not (d / "mnist.npz").exists():
        pytest.skip(
            "real MNIST not available: set DEBIASLAB_SHARED_DATA or place mnist.npz in ../shared/data"
        )
    return d / "mnist.npz"


def cli_env(**extra) -> dict:
    """The environment of a debiaslab subprocess: this checkout's sources first on the path."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}


def run_cli(*args, cwd=None, env=None, timeout=600, module=True):
    """Run ``python -m debiaslab ARGS`` (or a repo-root script when module=False) in a subprocess."""
    cmd = (
        [sys.executable, "-m", "debiaslab", *map(str, args)]
        if module
        else [sys.executable, *map(str, args)]
    )
    return subprocess.run(
        cmd,
        cwd=cwd or REPO,
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_test_cli(run, data_dir, *extra):
    """``debiaslab test`` of a run trained on the tiny CMNIST 1pct data, on the CPU."""
    return run_cli(
        "test", "--pretrained_path", run, "--dataset", "cmnist", "--percent", "1pct",
        "--data_dir", data_dir, "--device", "cpu", *extra,
    )  # fmt: skip


def assert_test_reproduces_last(run, data_dir, results: dict) -> None:
    """``debiaslab test`` of the run's last checkpoint gives the test metrics it recorded."""
    t = run_test_cli(run, data_dir, "--select", "last", "--json")
    assert t.returncode == 0, t.stderr
    assert json.loads(t.stdout)["metrics"]["test"] == results["selections"]["last"]["test"]


def quick_train_args(data, logs, *extra) -> list:
    """Flags of a short CPU training run on ``tiny_reference``: 40 steps, evaluations at 20 and 40."""
    return [
        "--data_dir",
        data,
        "--log_dir",
        logs,
        "--num_steps",
        "40",
        "--valid_freq",
        "20",
        "--batch_size",
        "16",
        "--no_progress",
        "--device",
        "cpu",
        *extra,
    ]


def read_log(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (of one ``kind``: train, eval, skip)."""
    records = [
        json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    ]
    return [r for r in records if kind is None or r["kind"] == kind]


def tiny_split(n_per_class: int, num_classes: int, conflict_every: int, seed: int, size: int = 8):
    """A learnable toy split: class = a bright square's position, bias = a colour channel tint."""
    from debiaslab.data.splits import Split

    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_classes).repeat_interleave(n_per_class)
    biases = targets.clone()
    if conflict_every:
        pick = torch.arange(len(targets)) % conflict_every == 0
        biases[pick] = (targets[pick] + 1) % num_classes
    images = torch.randint(0, 40, (len(targets), 3, size, size), generator=g, dtype=torch.uint8)
    for i, (t, b) in enumerate(zip(targets.tolist(), biases.tolist())):
        images[i, :, t * 2 : t * 2 + 2, 1:3] = 250
        images[i, b % 3] = images[i, b % 3].clamp(min=120)
    return Split(images, targets, biases)


@pytest.fixture
def tiny_reference(tmp_path) -> Path:
    """A tiny CMNIST-shaped dataset in the reference layout: <root>/cmnist/{1pct/...,test/}."""
    from debiaslab.data.reference import write_split

    root = tmp_path / "data"
    base = root / "cmnist"
    write_split(tiny_split(40, 3, 10, 0), base / "1pct", "train")
    write_split(tiny_split(6, 3, 3, 1), base / "1pct" / "valid", "flat", start_id=1000)
    write_split(tiny_split(10, 3, 2, 2), base / "test", "class", start_id=2000)
    return root


def tiny_bundle(size: int = 8):
    """A two-class in-memory dataset (80 train, 16 valid, 16 test images) for in-process runs."""
    from debiaslab.data.splits import DatasetBundle

    splits = (
        tiny_split(40, 2, 5, 0, size),
        tiny_split(8, 2, 4, 1, size),
        tiny_split(8, 2, 2, 2, size),
    )
    return DatasetBundle("tiny", *splits, 2)


def tiny_config(tmp_path, **kw):
    """A short CPU run of ``tiny_bundle`` written to ``<tmp_path>/tiny/e``."""
    from debiaslab.config import TrainConfig

    base = dict(
        dataset="tiny",
        method="vanilla",
        model="mlp",
        num_steps=20,
        valid_freq=10,
        save_freq=5,
        batch_size=16,
        lr=1e-2,
        log_dir=str(tmp_path),
        exp="e",
        progress=False,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def write_image(path: Path, colour, size=16) -> Path:
    """A plain-colour RGB image (``size`` an int or (width, height)); the format follows the suffix
    (PNG keeps the colour exactly, so a test can tell images apart by it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size) if isinstance(size, int) else size, colour).save(path)
    return path


def write_reference(root, dataset, percents, size=32, flat_eval_one_level_up=False):
    """A tiny dataset in the reference layout (C-CIFAR10 shape, or BFFHQ's valid/test one level up)."""
    from debiaslab.data.reference import write_split

    for i, pct in enumerate(percents):
        write_split(tiny_split(6, 2, 3, i, size=size), root / dataset / pct, "train")
        if not flat_eval_one_level_up:
            write_split(
                tiny_split(2, 2, 2, 10 + i, size=size),
                root / dataset / pct / "valid",
                "class",
                start_id=100,
            )
    if flat_eval_one_level_up:
        write_split(
            tiny_split(2, 2, 2, 10, size=size), root / dataset / "valid", "flat", start_id=100
        )
    write_split(
        tiny_split(3, 2, 2, 20, size=size),
        root / dataset / "test",
        "flat" if flat_eval_one_level_up else "class",
        start_id=200,
    )
    return root


def write_bar_layout(root: Path) -> None:
    """BAR's layout under ``root/bar``: train/ and test/ of ``<action>_<n>.jpg`` in odd, differing sizes."""
    actions = ["climbing", "diving", "fishing", "pole_vaulting", "racing", "throwing"]
    for split, n in (("train", 3), ("test", 1)):
        for a, action in enumerate(actions):
            for i in range(n):
                write_image(
                    root / "bar" / split / f"{action}_{10 * a + i}.jpg",
                    (40 * a, 100, 7 * i),
                    size=(17 + 2 * i + a, 29 - i),
                )


def write_image_folder(root: Path, counts: dict, ext="jpg") -> None:
    """``root/<split>/{ants,bees}/<i>.<ext>``: two classes of plain colours, ``counts[split]`` images each."""
    for split, n in counts.items():
        for c, colour in (("ants", (200, 0, 0)), ("bees", (0, 200, 0))):
            for i in range(n):
                write_image(root / split / c / f"{i}.{ext}", colour)


# -- methods on tiny tensors ---------------------------------------------------------------------
N_SAMPLES, N_CLASSES, BATCH = 24, 3, 8


def make_method(method: str, model: str = "mlp", **kw):
    """``(method, targets)``: a method of 3x4x4 inputs over 24 samples of 3 classes, lr 0.01 unless given."""
    from debiaslab.config import TrainConfig

    return method_from_config(
        TrainConfig(method=method, model=model, **{"lr": 0.01, **kw}).resolved()
    )


def method_from_config(cfg):
    """``(method, targets)`` as ``make_method``, for a config built elsewhere (e.g. from CLI flags)."""
    from debiaslab.methods import METHODS

    torch.manual_seed(0)
    cls = METHODS[cfg.method]
    models = cls.build_models(cfg, N_CLASSES, (3, 4, 4))
    targets = torch.arange(N_SAMPLES) % N_CLASSES
    biases = {"train_biases": method_biases(targets)} if cls.uses_bias_labels else {}
    return cls(cfg, models, targets, N_CLASSES, torch.Generator().manual_seed(5), **biases), targets


def method_biases(targets: torch.Tensor) -> torch.Tensor:
    """Bias labels of ``make_method``'s samples: the target, except every fourth sample (conflicting)."""
    conflicting = torch.arange(len(targets)) % 4 == 0
    return torch.where(conflicting, (targets + 1) % N_CLASSES, targets)


def method_batches(targets, steps: int, seed: int = 1):
    """``steps`` random batches ``(x, y, idx)`` of ``BATCH`` of the 24 samples."""
    g = torch.Generator().manual_seed(seed)
    x_all = torch.rand(N_SAMPLES, 3, 4, 4, generator=g)
    for _ in range(steps):
        idx = torch.randperm(N_SAMPLES, generator=g)[:BATCH]
        yield x_all[idx], targets[idx], idx


def method_state_of(method) -> dict:
    """Every number a step may move, as flat copies: weights and buffers, Adam's moments and counts,
    and every tensor of the method's own state (``extra_state``: EMAs, priors, group weights)."""
    out = {
        f"{n}.{k}": v.clone() for n, m in method.models.items() for k, v in m.state_dict().items()
    }
    for n, o in method.optimizers.items():
        for i, st in enumerate(o.state.values()):
            out.update({f"{n}.opt{i}.{k}": v.clone() for k, v in st.items()})

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value.clone()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)

    walk("extra", method.extra_state())
    return out


def assert_same_tensors(a, b, where: str = "") -> None:
    """``a`` and ``b`` (tensors, or dicts / lists of them) are exactly equal, key for key."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def saved_mlps(run_dir: Path, method: str, num_classes: int, in_shape: tuple) -> dict:
    """The MLPs of a run's ``checkpoint_last.pt``, rebuilt here (each of the architecture its
    method gives it under the saved config), in eval mode."""
    from debiaslab.config import TrainConfig
    from debiaslab.methods import METHODS
    from debiaslab.models import build_model

    saved = torch.load(Path(run_dir) / "checkpoint_last.pt", weights_only=True)
    states = saved["method_state"]["models"]
    cfg = TrainConfig.from_saved(saved["config"]).resolved()
    cls = METHODS[method]
    models = {}
    for name in cls.model_names:
        arch = cls.model_architecture(cfg, name)
        models[name] = build_model(arch, num_classes, cls.head_inputs, in_shape)
        models[name].load_state_dict(states[name])
    return {n: m.eval() for n, m in models.items()}


@torch.no_grad()
def predict_classes(method: str, models: dict, x: torch.Tensor) -> torch.Tensor:
    """The classes a method's ``predict`` gives ``x`` (already scaled as the run scaled it)."""
    from debiaslab.methods import METHODS

    return METHODS[method].predict(models, x).argmax(1)


# -- the metrics, computed again by a plain loop (independently of debiaslab.metrics) ---------------
def metrics_by_loop(preds, targets, biases, num_classes: int) -> dict:
    """Every metric of ``compute_metrics`` from Python lists: per-(target, bias) cells gathered in
    a dict, unbiased accuracy as the plain mean of the cells' accuracies."""
    preds, targets = [int(p) for p in preds], [int(t) for t in targets]
    correct = [p == t for p, t in zip(preds, targets)]

    def acc(hits):
        return sum(hits) / len(hits) if hits else None

    out = {
        "n": len(targets),
        "accuracy": acc(correct),
        "per_class": [
            acc([ok for ok, t in zip(correct, targets) if t == c]) for c in range(num_classes)
        ],
        "aligned": None,
        "conflicting": None,
        "unbiased": None,
        "worst_group": None,
    }
    if biases is None:
        return out
    biases = [int(b) for b in biases]
    cells = {}
    for ok, t, b in zip(correct, targets, biases):
        cells.setdefault((t, b), []).append(ok)
    cell_acc = [acc(hits) for hits in cells.values()]
    out.update(
        aligned=acc([ok for ok, t, b in zip(correct, targets, biases) if t == b]),
        conflicting=acc([ok for ok, t, b in zip(correct, targets, biases) if t != b]),
        unbiased=sum(cell_acc) / len(cell_acc),
        worst_group=min(cell_acc),
    )
    return out


def assert_metrics_match(got: dict, expected: dict) -> None:
    """``got`` (debiaslab's) equals ``expected`` (``metrics_by_loop``) up to float rounding."""

    def same(a, b):
        if isinstance(b, list):
            return (
                isinstance(a, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
            )
        return a == b if b is None or isinstance(b, int) else a == pytest.approx(b, abs=1e-12)

    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert same(got[k], v), (k, got[k], v)


# -- LfF's and DisEnt's building blocks as their reference code writes them (loop re-implementations)
class RefEMA:
    """The reference's EMA: parameter[i] = alpha * p + (1 - alpha * updated[i]) * loss; max over class by a loop."""

    def __init__(self, labels, alpha):
        self.labels, self.alpha = labels, alpha
        self.p = torch.zeros(len(labels))
        self.updated = torch.zeros(len(labels))

    def update(self, loss, idx):
        self.p[idx] = self.alpha * self.p[idx] + (1 - self.alpha * self.updated[idx]) * loss
        self.updated[idx] = 1

    def max_loss(self, c):
        return self.p[self.labels == c].max()


def ref_weights(ema_b, ema_d, ce_b, ce_d, y, idx):
    ema_b.update(ce_b.detach(), idx)
    ema_d.update(ce_d.detach(), idx)
    lb, ld = ema_b.p[idx].clone(), ema_d.p[idx].clone()
    for c in range(N_CLASSES):
        sel = torch.where(y == c)[0]
        lb[sel] /= ema_b.max_loss(c)
        ld[sel] /= ema_d.max_loss(c)
    return lb / (lb + ld + 1e-8)


def ref_gce(logits, y, q=0.7):
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return F.cross_entropy(logits, y, reduction="none") * p.detach() ** q * q


def adam(models, lr=0.01):
    return [torch.optim.Adam(m.parameters(), lr=lr) for m in models]


def ref_step(opts, loss):
    """The reference's step: zero both grads, one backward, step both optimizers."""
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()


def assert_same_weights(method, refs):
    for name, ref in refs.items():
        for (k, a), b in zip(method.models[name].state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-4), (name, k, (a - b).abs().max().item())


def cli_config(*flags):
    """The config ``debiaslab train FLAGS`` (or ``python train.py FLAGS``) trains with."""
    from debiaslab.cli import build_parser, config_from_args

    return config_from_args(
        build_parser().parse_args(["train", "--device", "cpu", *flags])
    ).resolved()


# -- the step as one graph with no host read (tests/test_compile.py) --------------------------------
HOST_READS = {
    "item",
    "tolist",
    "_local_scalar_dense",
    "__bool__",
    "__int__",
    "__float__",
    "cpu",
    "numpy",
}


class HostRead(Exception):
    pass


def no_host_reads(gm, example_inputs):
    """A Dynamo backend that runs the graph as traced, after checking it never reads a tensor on
    the host (torch 2.14 traces ``.item()`` into the graph instead of breaking it)."""
    for node in gm.graph.nodes:
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node.op in ("call_method", "call_function") and name in HOST_READS:
            raise HostRead(f"{name} in the traced step: {node.format_node()}")
    return gm.forward


def traced(fn):
    """``fn`` through Dynamo, ``fullgraph=True``: a branch on a tensor value is a graph break, an
    error, and a host read inside the graph is refused by the backend."""
    return torch.compile(fn, fullgraph=True, backend=no_host_reads, dynamic=False)


def assert_lff_matches_its_loop(method, targets, biased_term, steps: int = 6) -> None:
    """LfF's step (or a variant's) against the reference's loop: copies of both models trained by
    ``biased_term(logits_b, y, idx) + mean(W * CE(f_d(x), y))`` with W from ``RefEMA``s."""
    mb, md = (copy.deepcopy(method.models[n]) for n in ("biased", "debiased"))
    opts = adam([mb, md])
    eb, ed = RefEMA(targets, 0.7), RefEMA(targets, 0.7)
    for step, (x, y, idx) in enumerate(method_batches(targets, steps)):
        method.update(x, y, idx, step)
        lb, ld = mb(x), md(x)
        ce_b, ce_d = (
            F.cross_entropy(lb, y, reduction="none"),
            F.cross_entropy(ld, y, reduction="none"),
        )
        w = ref_weights(eb, ed, ce_b, ce_d, y, idx)
        ref_step(opts, biased_term(lb, y, idx) + (ce_d * w).mean())
    assert_same_weights(method, {"biased": mb, "debiased": md})
    assert torch.allclose(method.ema.values()[:, 0], eb.p, atol=1e-6)
    assert torch.allclose(method.ema.values()[:, 1], ed.p, atol=1e-6)


def assert_disent_matches_its_loop(method, targets, biased_term, steps: int = 6) -> None:
    """DisEnt's step (or a variant's) against the reference's loop, lambdas swap 0.5, dis_align 10,
    swap_align 5: ``biased_term(logits_b, labels, idx)`` is the bias branch's term for rows whose
    bias features come from samples ``idx``."""
    curr_step = method.cfg.curr_step
    assert (method.cfg.lambda_swap, method.cfg.lambda_dis_align, method.cfg.lambda_swap_align) == (
        0.5,
        10.0,
        5.0,
    )
    ml, mb = (copy.deepcopy(method.models[n]) for n in ("intrinsic", "bias"))
    opts = adam([ml, mb])
    eb, ed = RefEMA(targets, 0.7), RefEMA(targets, 0.7)
    perm_gen = torch.Generator().manual_seed(
        5
    )  # the same stream the method draws its permutations from
    for step, (x, y, idx) in enumerate(method_batches(targets, steps)):
        method.update(x, y, idx, step)
        z_l, z_b = ml.extract(x), mb.extract(x)
        pred_c = ml.fc(torch.cat([z_l, z_b.detach()], 1))
        pred_a = mb.fc(torch.cat([z_l.detach(), z_b], 1))
        ce_c = F.cross_entropy(pred_c, y, reduction="none")
        w = ref_weights(eb, ed, F.cross_entropy(pred_a, y, reduction="none"), ce_c, y, idx)
        loss = (ce_c * w).mean() + 10.0 * biased_term(pred_a, y, idx)
        if step > curr_step:
            p = torch.randperm(len(y), generator=perm_gen)
            pc = ml.fc(torch.cat([z_l, z_b[p].detach()], 1))
            pa = mb.fc(torch.cat([z_l.detach(), z_b[p]], 1))
            swap_conflict = (F.cross_entropy(pc, y, reduction="none") * w).mean()
            loss = loss + 0.5 * (swap_conflict + 5.0 * biased_term(pa, y[p], idx[p]))
        ref_step(opts, loss)
    assert_same_weights(method, {"intrinsic": ml, "bias": mb})
