"""Presets, grid expansion, config hashing and ``collect`` (no training: fast)."""

import csv
import io
import json
import re
from pathlib import Path

import pytest

from debiaslab import UserError
from debiaslab.collect import collect
from debiaslab.config import TrainConfig
from debiaslab.presets import PAPER, PRESETS, get_preset
from debiaslab.rundir import RunDir
from debiaslab.sweep import expand, load_spec_file, parse_set, plan, run_name
from tests.conftest import REPO, run_cli

SPEC = REPO.parent / "shared" / "spec"


# ---------------------------------------------------------------------------------------- presets
def _spec_table(text: str, first_col: str) -> list[list[str]]:
    """The rows of the first table in ``text`` whose header starts with ``first_col``."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    start = next(i for i, ln in enumerate(lines) if ln.split("|")[1].strip() == first_col)
    return [
        [c.strip() for c in ln.strip("|").split("|")]
        for ln in lines[start + 2 :]
        if not ln.startswith("|---")
    ]


def _num(text: str):
    mean, _, std = text.partition("±")
    return float(mean), (float(std) if std else None)


def test_preset_paper_numbers_equal_the_papers_table():
    path = SPEC / "paper-results.md"
    if not path.exists():
        pytest.skip("../shared/spec/paper-results.md not beside the checkout")
    columns = (
        [("cmnist", p) for p in ("0.5pct", "1pct", "2pct", "5pct")]
        + [("cifar10c", p) for p in ("0.5pct", "1pct", "2pct", "5pct")]
        + [("bffhq", "0.5pct")]
    )
    rows = {
        r[0]: r[1:]
        for r in _spec_table(path.read_text(), "method")
        if r[0] in ("Vanilla", "LfF", "DisEnt")
    }
    assert len(rows) == 3
    checked = 0
    for name, method in (("Vanilla", "vanilla"), ("LfF", "lff"), ("DisEnt", "disent")):
        for (dataset, pct), text in zip(columns, rows[name]):
            p = get_preset(f"{dataset}-{pct}-{method}")
            assert (p.paper_mean, p.paper_std) == _num(text), p.name
            checked += 1
    assert checked == 27
    later = {"GroupDRO": "groupdro", "JTT": "jtt", "LC": "lc", "DeNetDM": "denetdm"}
    text = path.read_text()
    table = _spec_table(text[text.index("## Later methods") :], "method")
    for row in (r for r in table if r[0] in later):
        numbers = [x.strip() for cell in row[2:5] for x in cell.split("/")]
        for (dataset, pct), number in zip(columns, numbers):
            preset = PRESETS.get(f"{dataset}-{pct}-{later[row[0]]}")
            assert (number in ("–", "-")) == (preset is None), (row[0], dataset, pct)
            if preset is not None:
                assert (preset.paper_mean, preset.paper_std) == (float(number), None) and row[
                    -1
                ] in preset.source
                checked += 1
    for preset in (
        p for p in PRESETS.values() if p.method in ("lff_be", "disent_be")
    ):  # numbers not at hand
        assert (
            preset.paper_mean is None
            and "BiasEnsemble" in preset.source
            and preset.dataset in ("cmnist", "bffhq")
        )
        base = get_preset(preset.name.replace(preset.method, preset.method[:-3])).config
        assert preset.config == {
            **base,
            "method": preset.method,
            "be_num_models": 5,
            "be_steps": 1000,
            "be_tau": 0.99,
            "be_agreement": 3,
            "be_candidates": "authors",
        }
        checked += 1
    for preset in (p for p in PRESETS.values() if p.name.startswith("lff_code")):
        base = get_preset(preset.name.split("-", 1)[1])  # the cell's paper preset
        assert (preset.paper_mean, preset.paper_std) == (base.paper_mean, base.paper_std)
        assert "LfF's own code" in preset.source
        change = {k: v for k, v in preset.config.items() if base.config.get(k) != v}
        assert change == (
            {"lr": 0.001, "num_steps": 23_500, "model": "mlp_lff"}
            if preset.name.startswith("lff_code-")
            else {"lr": 0.001}
        )
        checked += 1
    assert checked == len(PRESETS)


def test_preset_hyper_parameters_equal_the_papers_settings():
    path = SPEC / "algorithms.md"
    if not path.exists():
        pytest.skip("../shared/spec/algorithms.md not beside the checkout")
    table = {r[0]: r[1:] for r in _spec_table(path.read_text(), "setting")}
    settings = {
        "cmnist": {p: table["CMNIST 0.5/1/2/5 pct"] for p in ("0.5pct", "1pct", "2pct", "5pct")},
        "cifar10c": {
            "0.5pct": table["C-CIFAR10 0.5 pct"],
            "1pct": table["C-CIFAR10 1, 2 pct"],
            "2pct": table["C-CIFAR10 1, 2 pct"],
            "5pct": table["C-CIFAR10 5 pct"],
        },
        "bffhq": {"0.5pct": table["BFFHQ 0.5 pct"]},
    }
    vanilla_lr = dict(
        zip(
            ("cmnist", "cifar10c", "bffhq"),
            map(float, table["Vanilla CMNIST / C-CIFAR10 / BFFHQ"][0].split("/")),
        )
    )
    vanilla_batch = dict(
        zip(
            ("cmnist", "cifar10c", "bffhq"),
            map(int, table["Vanilla CMNIST / C-CIFAR10 / BFFHQ"][1].split("/")),
        )
    )
    for dataset, by_pct in settings.items():
        for pct, (lr, batch, curr, swap, dis, swap_align, decay) in by_pct.items():
            c = get_preset(f"{dataset}-{pct}-disent").config
            step, gamma = (float(x) for x in decay.split("/"))
            assert (
                c["lr"],
                c["batch_size"],
                c["curr_step"],
                c["lambda_swap"],
                c["lambda_dis_align"],
                c["lambda_swap_align"],
                c["lr_decay_step"],
                c["lr_gamma"],
                c["use_lr_decay"],
            ) == (
                float(lr),
                int(batch),
                int(curr),
                float(swap),
                float(dis),
                float(swap_align),
                step,
                gamma,
                True,
            )
            for method in ("vanilla", "lff"):
                c = get_preset(f"{dataset}-{pct}-{method}").config
                assert (c["lr"], c["batch_size"], c.get("use_lr_decay", False)) == (
                    vanilla_lr[dataset],
                    vanilla_batch[dataset],
                    False,
                )
            for method in ("vanilla", "lff", "disent"):
                c = get_preset(f"{dataset}-{pct}-{method}").config
                assert (c["num_steps"], c["weight_decay"], c["q"], c["ema_alpha"]) == (
                    50_000,
                    0.0,
                    0.7,
                    0.7,
                )


def test_every_preset_is_a_valid_config():
    for p in PRESETS.values():
        TrainConfig(**p.config).validate()
        assert p.name.endswith(f"{p.dataset}-{p.percent}-{p.method}")
    assert {(d, m) for d, m in PAPER} == {(p.dataset, p.method) for p in PRESETS.values()}


def test_train_preset_and_flags_override_it(tiny_reference, tmp_path):
    r = run_cli(
        "train",
        "--preset",
        "cmnist-1pct-disent",
        "--data_dir",
        tiny_reference,
        "--log_dir",
        tmp_path,
        "--num_steps",
        "6",
        "--batch_size",
        "16",
        "--valid_freq",
        "3",
        "--lambda_swap",
        "0.5",
        "--no_progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "cmnist" / "cmnist-1pct-disent" / "config.json").read_text())[
        "config"
    ]
    assert (
        cfg["method"],
        cfg["percent"],
        cfg["lr"],
        cfg["curr_step"],
        cfg["lambda_dis_align"],
        cfg["lambda_swap_align"],
        cfg["use_lr_decay"],
        cfg["lr_gamma"],
    ) == ("disent", "1pct", 0.01, 10_000, 10.0, 10.0, True, 0.5)
    assert (cfg["num_steps"], cfg["batch_size"], cfg["lambda_swap"]) == (
        6,
        16,
        0.5,
    )  # explicit flags win
    r = run_cli(
        "train",
        "--preset",
        "cmnist-1pct-disent",
        "--train_vanilla",
        "--exp",
        "v",
        "--data_dir",
        tiny_reference,
        "--log_dir",
        tmp_path,
        "--num_steps",
        "3",
        "--batch_size",
        "16",
        "--no_progress",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    vanilla = json.loads((tmp_path / "cmnist" / "v" / "config.json").read_text())["config"]
    # the preset's DisEnt lambdas are no setting of Vanilla: left at their defaults
    assert (vanilla["method"], vanilla["lambda_dis_align"], vanilla["lr"]) == ("vanilla", 1.0, 0.01)


def test_unknown_preset_is_one_line(tmp_path):
    r = run_cli("train", "--preset", "cmnist-3pct-disent", "--log_dir", tmp_path)
    assert (
        r.returncode == 2
        and len(r.stderr.strip().splitlines()) == 1
        and "unknown preset" in r.stderr
    )
    r = run_cli("presets", "cifar10c-*")
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("  cifar10c-")]
    assert (
        r.returncode == 0 and len(rows) == 4 * 7
    )  # 4 ratios x vanilla, lff, disent, jtt, lc, groupdro, denetdm
    assert [ln.split()[0] for ln in rows if "[trains on bias labels]" in ln] == [
        f"cifar10c-{pct}-groupdro" for pct in ("0.5pct", "1pct", "2pct", "5pct")
    ]


# ------------------------------------------------------------------------------------------- grid
def test_grid_expansion_with_presets_axes_and_fixed_values():
    cfgs = expand(
        {
            "datasets": ["cmnist"],
            "methods": ["vanilla", "disent"],
            "ratios": [0.5, "1pct"],
            "seeds": [0, 1],
            "set": {"num_steps": 100, "lr": [0.01, 0.001]},
        }
    )
    assert len(cfgs) == 2 * 2 * 2 * 2
    assert {(c.method, c.percent, c.seed, c.lr) for c in cfgs} == {
        (m, p, s, lr)
        for m in ("vanilla", "disent")
        for p in ("0.5pct", "1pct")
        for s in (0, 1)
        for lr in (0.01, 0.001)
    }
    assert all(c.num_steps == 100 and not c.progress for c in cfgs)
    disent = [c for c in cfgs if c.method == "disent"]
    assert all(
        (c.curr_step, c.lambda_dis_align, c.use_lr_decay, c.lr_gamma) == (10_000, 10.0, True, 0.5)
        for c in disent
    )
    assert [c.seed for c in cfgs] == sorted(c.seed for c in cfgs)  # every cell's seed 0 first


def test_grid_union_dedups_and_default_ratios():
    cfgs = expand(
        {
            "methods": ["lff"],
            "grid": [{"ratios": [0.5, 5], "seeds": [0, 1, 2]}, {"ratios": [1, 2, 5], "seeds": [0]}],
        }
    )
    assert sorted((c.percent, c.seed) for c in cfgs) == sorted(
        [(p, s) for p in ("0.5pct", "5pct") for s in (0, 1, 2)] + [("1pct", 0), ("2pct", 0)]
    )
    assert {c.percent for c in expand({"datasets": ["cifar10c"], "methods": ["vanilla"]})} == {
        "0.5pct",
        "1pct",
        "2pct",
        "5pct",
    }
    assert (
        len(expand({"presets": ["cmnist-*"]})) == 4 * 9
    )  # vanilla, lff, disent, jtt, lc, groupdro, denetdm, BE x 2
    assert {c.method for c in expand({"presets": ["*-5pct-disent"]})} == {"disent"}
    # a named preset runs its own settings, not its cell's paper preset
    recipe = expand({"presets": ["lff_code-cmnist-0.5pct-lff"]})
    assert [(c.lr, c.num_steps, c.model) for c in recipe] == [(0.001, 23_500, "mlp_lff")]
    assert len(expand({"presets": ["lff_code*-cmnist-0.5pct-lff", "cmnist-0.5pct-lff"]})) == 3


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"set": {"nope": 1}}, "cannot set 'nope'"),
        ({"set": {"seed": 1}}, "use --seeds"),
        ({"set": {"num_steps": "ten"}}, "not a valid int"),
        ({"set": {"lr": -1.0}}, "--lr must be"),
        ({"methods": ["erm"]}, "unknown method"),
        ({"ratios": ["x"]}, "not a number"),
        ({"presets": ["nothing-*"]}, "no preset matches"),
    ],
)
def test_grid_errors_name_the_problem(spec, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        expand(spec)


def test_parse_set():
    assert parse_set(["lr=0.01,0.001", "num_steps=10"]) == {
        "lr": ["0.01", "0.001"],
        "num_steps": "10",
    }
    with pytest.raises(UserError):
        parse_set(["lr"])
    assert expand(
        {
            "methods": ["vanilla"],
            "ratios": [1],
            "set": parse_set(["use_lr_decay=true", "lr=0.5,0.1"]),
        }
    )[0].use_lr_decay


# ---------------------------------------------------------------------------------------- hashing
def test_same_config_same_hash_and_directory(tmp_path):
    a = TrainConfig(method="disent", percent="1pct", lr=0.01, lambda_swap=1)
    b = TrainConfig(
        method="disent",
        percent="1pct",
        lambda_swap=1.0,
        exp="other",
        log_dir="elsewhere",
        progress=False,
        device="cuda",
        tensorboard=True,
        keep_checkpoints=3,
    )
    assert (
        a.config_hash() == b.config_hash()
    )  # runtime and location fields, int vs float, an explicit default
    assert plan([a], tmp_path)[0].run_dir == plan([b], tmp_path)[0].run_dir
    assert (
        expand({"methods": ["disent"], "ratios": [1]})[0].config_hash()
        == expand({"presets": ["cmnist-1pct-disent"]})[0].config_hash()
    )


@pytest.mark.parametrize(
    "change",
    [
        dict(lr=0.001),
        dict(seed=1),
        dict(num_steps=10),
        dict(lambda_swap=0.5),
        dict(percent="2pct"),
        dict(method="lff"),
        dict(data_dir="other"),
        dict(q=0.5),
        dict(model="resnet18"),
        dict(batch_size=128),
        dict(use_lr_decay=True),
        dict(valid_freq=100),
        dict(palette="lff"),
    ],
)
def test_any_change_gives_another_hash(change, tmp_path):
    base = TrainConfig(method="disent", percent="1pct")
    other = TrainConfig(**{**dict(method="disent", percent="1pct"), **change})
    assert base.config_hash() != other.config_hash()
    assert plan([base], tmp_path)[0].run_dir != plan([other], tmp_path)[0].run_dir
    assert run_name(other).endswith(other.config_hash())


# ---------------------------------------------------------------------------------------- collect
def fake_run(
    root: Path,
    *,
    method="disent",
    percent="0.5pct",
    seed=0,
    values=None,
    state="finished",
    step=0,
    valid=None,
    train_sha=None,
    valid_sha=None,
    **cfg,
):
    c = TrainConfig(**{**get_preset(f"cmnist-{percent}-{method}").config, **cfg, "seed": seed})
    d = root / "cmnist" / run_name(c)
    d.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps(
            {
                "config": c.resolved().to_dict(),
                "data": {
                    "sha256": {
                        "train": train_sha or f"train{percent}" + "0" * 40,
                        "valid": valid_sha or "v" * 64,
                        "test": "t" * 64,
                    },
                    "counts": {s: {"n": 1, "conflicting": 1} for s in ("train", "valid", "test")},
                },
            }
        )
    )
    if step:
        (d / "metrics.jsonl").write_text(json.dumps({"kind": "eval", "step": step}) + "\n")
    if state == "failed":
        (d / "FAILED").write_text("x")
    if state == "finished":
        (d / "results.json").write_text(
            json.dumps(
                {
                    "primary_metric": "unbiased accuracy",
                    "selections": {
                        r: {
                            "test_primary": v,
                            **({"valid": valid[r]} if r in (valid or {}) else {}),
                        }
                        for r, v in values.items()
                    },
                }
            )
        )
    return c


RULES = ("last", "best_valid", "best_valid_unbiased", "oracle_best_test")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "sweep"
    for seed, base in enumerate((0.70, 0.80, 0.90)):
        fake_run(root, seed=seed, values={r: base + 0.01 * i for i, r in enumerate(RULES)})
    fake_run(
        root,
        method="vanilla",
        seed=0,
        values={
            "last": 0.40,
            "best_valid": 0.41,
            "best_valid_unbiased": None,
            "oracle_best_test": 0.45,
        },
    )
    fake_run(root, method="vanilla", seed=1, state="unfinished", step=1234)
    fake_run(root, method="lff", seed=0, state="failed", step=500)
    planned = TrainConfig(
        **{**get_preset("cmnist-0.5pct-lff").config, "seed": 4, "progress": False}
    )
    from debiaslab.sweep import write_plan

    write_plan(root, plan([planned], root))
    fake_run(
        root, method="disent", percent="5pct", seed=0, values={r: 0.5 for r in RULES}, lr=0.001
    )  # a variant
    return root


def _row(text, method, ratio="0.5pct"):
    return next(ln for ln in text.splitlines() if ln.startswith(f"| cmnist | {ratio} | {method}"))


def test_collect_markdown_mean_std_paper_and_status(runs):
    text = collect(str(runs))
    tables = re.split(r"^### Selection: ", text, flags=re.M)[1:]
    assert [t.split(" ")[0] for t in tables] == list(RULES)
    last, best_valid, bvu, oracle = tables
    assert "| 80.00 ± 10.00 | 3 (0, 1, 2) | 65.22 | +14.78 | 3 finished |" in _row(last, "disent")
    # every rule reads its own pick; the oracle's figure read test (and test bias) labels
    assert "| 83.00 ± 10.00 ◊† |" in _row(oracle, "disent")
    assert "| 81.00 ± 10.00 |" in _row(best_valid, "disent")
    assert (
        "| 40.00 | 1 (0) | 35.19 ± 3.49 | +4.81 | 1 finished; 1 unfinished (seed 1 at step 1,234/50,000) |"
        in _row(last, "vanilla")
    )
    assert "| — | 0 | 35.19 ± 3.49 | — |" in _row(
        bvu, "vanilla"
    )  # the rule picked nothing for that run
    lff = _row(last, "lff")
    assert (
        "| — | 0 | 52.50 | — | 1 failed (seed 0 at step 500/50,000); 1 not started (seed 4) |"
        in lff
    )
    assert "not run" in _row(last, "disent", "2pct") and "84.79" in _row(
        last, "disent", "2pct"
    )  # missing paper cell shown
    assert "| disent (lr=0.001) | 50.00 |" in _row(last, "disent (lr", "5pct")
    assert "ORACLE" in text and "paper's own data release" in text
    assert "cmnist 0.5pct: test sha256 tttttttttttttttt, train sha256 train0.5pct00000" in text
    assert collect(str(runs)) == text  # deterministic


def test_collect_csv_and_latex(runs):
    rows = list(csv.DictReader(io.StringIO(collect(str(runs), "csv"))))
    assert {r["rule"] for r in rows} == set(RULES)
    d = next(
        r
        for r in rows
        if r["rule"] == "oracle_best_test" and r["method"] == "disent" and r["ratio"] == "0.5pct"
    )
    assert (float(d["mean"]), float(d["std"]), int(d["n"]), d["seeds"], float(d["paper_mean"])) == (
        83.0,
        10.0,
        3,
        "0 1 2",
        65.22,
    )
    assert float(d["ours_minus_paper"]) == pytest.approx(83.0 - 65.22)
    missing = next(
        r for r in rows if r["rule"] == "last" and r["method"] == "disent" and r["ratio"] == "1pct"
    )
    assert (missing["mean"], missing["n"], missing["runs"]) == ("", "0", "not run")
    tex = collect(str(runs), "latex", ["last", "oracle_best_test"])
    assert tex.count(r"\begin{tabular}") == 2 and r"80.00 $\pm$ 10.00" in tex and "ORACLE" in tex


def test_collect_cli_errors_and_output_file(runs, tmp_path):
    r = run_cli("collect", tmp_path / "nowhere")
    assert (
        r.returncode == 2
        and "is not a folder" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )
    (tmp_path / "empty").mkdir()
    r = run_cli("collect", tmp_path / "empty")
    assert r.returncode == 2 and "no runs under" in r.stderr
    r = run_cli("collect", runs, "--format", "csv", "--output", tmp_path / "t.csv")
    assert r.returncode == 0 and (tmp_path / "t.csv").read_text() == collect(str(runs), "csv")


def test_collect_never_averages_runs_of_two_builds(tmp_path):
    """Runs of one config from two builds (e.g. two sweep folders): two cells, each named by its
    data, in every table, and two sections of the gaps table (no aggregate mixes them)."""
    values = {"last": 0.5, "oracle_best_test": 0.6}
    fake_run(tmp_path / "a", method="vanilla", seed=0, values=values)
    fake_run(
        tmp_path / "b",
        method="vanilla",
        seed=1,
        values={"last": 0.7, "oracle_best_test": 0.9},
        train_sha="x" * 64,
    )
    text = collect(str(tmp_path))
    assert "| vanilla (data train0.5, valid vvvvvvvv) | 50.00 | 1 (0) |" in text, text
    assert "| vanilla (data xxxxxxxx, valid vvvvvvvv) | 70.00 | 1 (1) |" in text
    gaps = collect(str(tmp_path), gaps=True)
    assert gaps.count("### Data: test split sha256") == 2
    assert "other training splits (2)" in gaps and "| last | no labels | 1 | -10.00 |" in gaps
    assert "| last | no labels | 1 | -20.00 |" in gaps and "| 2 |" not in gaps
    fake_run(tmp_path / "b", method="vanilla", seed=2, values=values)
    assert "(data " not in collect(str(tmp_path / "a"))  # one build: no data label


def test_collect_choose_keeps_the_setting_of_best_validation_score_never_test(tmp_path):
    """A grid of JTT settings: --choose ranks them by the validation score the rule maximised
    (mean over seeds), whatever their test scores."""
    root = tmp_path / "grid"
    scores = {  # (jtt_steps, seed) -> (validation unbiased at the pick, test at the pick)
        (1000, 0): (0.60, 0.40),
        (1000, 1): (0.50, 0.42),  # mean validation 0.55
        (2000, 0): (0.52, 0.90),  # best test, lower validation
    }
    for (steps, seed), (valid, test) in scores.items():
        fake_run(
            root,
            method="jtt",
            seed=seed,
            jtt_steps=steps,
            values={"last": 0.3, "best_valid_unbiased": test},
            valid={"best_valid_unbiased": {"unbiased": valid, "accuracy": 0.99}},
        )
    text = collect(str(root), choose="best_valid_unbiased")
    chosen = [line for line in text.splitlines() if "**chosen**" in line]
    assert len(chosen) == 1 and "jtt_steps=1000" in chosen[0], text
    assert "| 2 (0, 1) | 55.00 † | 41.00 † | **chosen** | 2 finished |" in chosen[0]
    assert re.search(r"jtt_steps=2000 \| 1 \(0\) \| 52.00 † \| 90.00 † \|  \|", text), text
    fake_run(root, method="jtt", seed=0, jtt_steps=250, state="unfinished", step=700)
    text = collect(str(root), choose="best_valid_unbiased")
    assert "| 0 () | — | — |  | 1 unfinished (seed 0 at step 700/" in text, text
    assert "**chosen** (provisional)" in text  # a setting of the grid has no score yet
    r = run_cli("collect", root, "--choose", "oracle_best_test")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run_cli("collect", root, "--choose", "last")
    assert r.returncode == 2
    r = run_cli("collect", root, "--choose", "best_valid_unbiased", "--format", "csv")
    assert r.returncode == 2 and "--choose prints its own" in r.stderr
    with pytest.raises(UserError, match="recorded a best_valid pick"):
        collect(str(root), choose="best_valid")  # no run recorded a validation score there


@pytest.mark.parametrize(
    "config,runs",
    [
        ("cmnist_table.toml", "cmnist_runs"),
        ("cmnist_later.toml", "cmnist_later_runs"),
        ("cmnist_denetdm.toml", "cmnist_denetdm_runs"),
        ("cmnist_jtt_grid.toml", "cmnist_jtt_grid_runs"),
    ],
)
def test_committed_rows_are_what_todays_presets_train(config, runs):
    """Every run a table's config plans today is committed and finished: a preset or default that
    drifted from the committed rows renames its runs (the config hash) and leaves them missing."""
    cfgs = expand(load_spec_file(str(REPO / "configs" / config)))
    planned = plan(cfgs, REPO / "docs" / "results" / runs)
    missing = [run.name for run in planned if RunDir(run.run_dir).status() != "finished"]
    assert planned and missing == []


def test_palette_is_part_of_a_colored_mnist_config_only():
    disent = TrainConfig(method="disent", percent="1pct")
    assert disent.resolved().palette == "disent" and disent.identity()["palette"] == "disent"
    assert (
        TrainConfig(method="disent", percent="1pct", palette="lff").config_hash()
        != disent.config_hash()
    )
    cifar = TrainConfig(dataset="cifar10c", method="disent", percent="1pct")
    assert "palette" not in cifar.identity()  # so hashes of runs on other datasets did not change
    with pytest.raises(UserError, match="Colored MNIST only"):
        TrainConfig(dataset="cifar10c", method="disent", palette="lff").validate()
    with pytest.raises(UserError, match="disent, lff, any"):
        TrainConfig(method="disent", palette="blue").validate()


def test_runs_saved_before_the_palette_existed_mean_lff():
    legacy = TrainConfig(method="disent", percent="1pct").to_dict()
    legacy.pop("palette")
    assert TrainConfig.from_saved(legacy).palette == "lff"
    assert TrainConfig.from_saved({**legacy, "palette": "disent"}).palette == "disent"
    assert TrainConfig.from_saved({**legacy, "dataset": "cifar10c"}).palette is None
    committed = REPO / "docs" / "results" / "cmnist_lff_runs"
    assert "palette=lff" in collect(str(committed))


def test_devices_and_child_environment():
    from debiaslab.sweep_local import _child_env, parse_devices

    assert parse_devices("cpu") == ["cpu"]
    env, device = _child_env("cuda:3", 4)
    assert (env["CUDA_VISIBLE_DEVICES"], device, env["DEBIASLAB_THREADS"]) == ("3", "cuda", "4")
    env, device = _child_env("cpu", 1)
    assert device == "cpu" and "CUDA_VISIBLE_DEVICES" not in {
        k for k in env if env[k] != __import__("os").environ.get(k)
    }
    import torch

    if torch.cuda.device_count() == 0:
        with pytest.raises(UserError, match="no CUDA GPU"):
            parse_devices("cuda")
        with pytest.raises(UserError, match="does not exist"):
            parse_devices("0,1")
    with pytest.raises(UserError, match="expected auto, cpu, cuda"):
        parse_devices("tpu")


def test_reproduce_table1_script_dry_run(tiny_reference, tmp_path):
    import os
    import subprocess

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "DRY_RUN": "1",
        "DATASETS": "cmnist bffhq",
        "SEEDS": "0 1",
        "DATA_DIR": str(tiny_reference),
        "OUT": str(tmp_path / "t1"),
        "PATH": f"{Path(__import__('sys').executable).parent}:{os.environ['PATH']}",
    }
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "reproduce_table1.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        "skipping BFFHQ" in r.stdout
        and "sweep: 24 runs in" in r.stdout
        and r.stdout.count("missing ") == 24
    )
    assert "CPU cores" in r.stdout


def test_runs_per_device_packs_k_runs_on_each_device(monkeypatch, tmp_path):
    from debiaslab import sweep as sweep_mod
    from debiaslab import sweep_local

    seen = {}
    monkeypatch.setattr(sweep_mod, "parse_devices", lambda spec: ["cuda:0", "cuda:1"])
    monkeypatch.setattr(sweep_local, "cpu_count", lambda: 16)
    monkeypatch.setattr(
        sweep_mod,
        "run_local",
        lambda runs, out, jobs, devs, progress, fuse_max=1: (
            seen.update(slots=sweep_local.device_slots(devs, jobs))
            or {"finished": len(runs), "failed": 0}
        ),
    )
    spec = {"methods": ["vanilla"], "ratios": [1], "seeds": [0, 1, 2, 3, 4, 5, 6]}
    assert sweep_mod.sweep(spec, tmp_path / "out", runs_per_device=3, progress=False) == 0
    slots, threads = seen["slots"]
    assert sorted(slots) == ["cuda:0"] * 3 + ["cuda:1"] * 3 and threads == 2  # 16 cores over 6 runs
    for kw, flag in ((dict(jobs=2), "--jobs"), (dict(gpus_per_run=0.5), "--gpus_per_run")):
        with pytest.raises(UserError, match=f"--runs_per_device and {flag} both"):
            sweep_mod.sweep(spec, tmp_path / "out", runs_per_device=3, **kw)
    with pytest.raises(UserError, match="--runs_per_device must be a positive integer"):
        sweep_mod.sweep(spec, tmp_path / "out", runs_per_device=0)


def test_the_ray_backend_is_found_by_its_name_without_an_import_first(monkeypatch, tmp_path):
    """``sweep.BACKENDS`` names the Ray backend and imports it when a sweep asks for it (nothing to
    import beforehand); without Ray, the sweep stops with one line saying how to install it."""
    import sys

    from debiaslab.sweep import _backend, sweep

    with pytest.raises(UserError, match="unknown sweep backend 'slurm'; known: local, ray"):
        _backend("slurm")
    assert _backend("ray").__module__ == "debiaslab.sweep_ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    spec = {"methods": ["vanilla"], "ratios": [1], "seeds": [0]}
    with pytest.raises(UserError, match=r"--backend ray needs Ray: pip install 'debiaslab\[ray\]'"):
        sweep(spec, tmp_path / "out", backend="ray", progress=False)


def test_collect_marks_runs_whose_training_reads_test_labels(tmp_path):
    root = tmp_path / "sweep"
    values = {r: 0.7 for r in RULES}
    fake_run(root, method="denetdm", values=values)
    fake_run(root, method="denetdm", values=values, denetdm_stage1_pick="oracle_test")
    text = collect(str(root))
    last = re.split(r"^### Selection: ", text, flags=re.M)[1]
    assert "| denetdm (denetdm_stage1_pick=oracle_test) | 70.00 ◊† |" in last
    assert "| denetdm | 70.00 | 1 (0) |" in last  # the label-free default carries no mark
    assert "its training read TEST labels, TEST BIAS labels: cmnist 0.5pct denetdm (" in text
    csv_rows = list(csv.DictReader(io.StringIO(collect(str(root), fmt="csv"))))
    last_rows = [r for r in csv_rows if (r["rule"], r["ratio"]) == ("last", "0.5pct")]
    assert sorted(r["reads_test_labels"] for r in last_rows) == ["0", "1"]
    assert sorted(r["marks"] for r in last_rows) == ["", "◊†"]
    assert "$^\\diamond$$^\\dagger$" in collect(str(root), fmt="latex")


def test_lff_recipe_mlp_has_lff_codes_three_hidden_layers_of_100():
    import torch

    from debiaslab.models import build_model

    model = build_model("mlp_lff", 10, 1, (3, 28, 28))
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [100, 100, 100, 10] and model.feature_dim == 100


def test_collect_adds_one_empty_cell_per_paper_cell_whatever_its_named_recipes(tmp_path):
    root = tmp_path / "sweep"
    fake_run(root, method="lff", values={r: 0.6 for r in RULES}, lr=0.001)
    last = re.split(r"^### Selection: ", collect(str(root)), flags=re.M)[1]
    for ratio in ("1pct", "2pct", "5pct"):
        assert (
            len([ln for ln in last.splitlines() if ln.startswith(f"| cmnist | {ratio} | lff")]) == 1
        )
