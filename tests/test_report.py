"""Run reports: figures, header numbers, diagnostics on known answers, runs without bias labels, a real browser."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from debiaslab.diagnostics import detector_metrics, probe_accuracy, snapshot_steps
from debiaslab.report import METRIC_KEYS, make_report
from tests.conftest import run_cli, write_image_folder

FAST = (
    "--num_steps",
    "40",
    "--valid_freq",
    "10",
    "--batch_size",
    "16",
    "--no_progress",
    "--device",
    "cpu",
)
IMG = re.compile(
    r"<img src='data:image/png;base64,([A-Za-z0-9+/=]+)' alt='[^']*' data-file='([^']+)'>"
)


# ------------------------------------------------------------------------------------- diagnostics
def test_detector_metrics_perfect_random_and_inverted():
    g = torch.Generator().manual_seed(0)
    conflicting = torch.rand(20_000, generator=g) < 0.05
    perfect = detector_metrics(torch.where(conflicting, 0.9, 0.1), conflicting)
    assert (perfect["ap"], perfect["precision"], perfect["recall"]) == (1.0, 1.0, 1.0)
    base = float(conflicting.float().mean())
    random = detector_metrics(torch.rand(20_000, generator=g), conflicting)
    assert random["base_rate"] == pytest.approx(base) and random["ap"] == pytest.approx(
        base, abs=0.01
    )
    assert random["recall"] == pytest.approx(0.5, abs=0.05) and random[
        "precision"
    ] == pytest.approx(base, abs=0.01)
    inverted = detector_metrics(torch.where(conflicting, 0.1, 0.9), conflicting)
    assert inverted["ap"] <= base + 1e-6 and inverted["recall"] == 0.0  # no better than random
    assert (
        detector_metrics(torch.rand(10), torch.zeros(10, dtype=torch.bool))["ap"] is None
    )  # nothing to detect


def test_probe_accuracy_known_answers():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 10, 4000)
    bias = rng.integers(0, 10, 4000)
    z = np.eye(10)[target] * 3 + rng.normal(0, 0.3, (4000, 10))  # carries the target, not the bias
    assert probe_accuracy(z, target) > 0.99
    assert probe_accuracy(z, bias) == pytest.approx(0.1, abs=0.03)
    assert probe_accuracy(z, np.zeros(4000, dtype=int)) is None  # one class: nothing to probe


def test_snapshot_steps_spread_over_training():
    assert snapshot_steps(50_000, 500) == {1000, 5000, 12500, 25000, 50000}
    assert snapshot_steps(40, 10) == {10, 20, 40}


# ---------------------------------------------------------------------------------- tiny real runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from debiaslab.data.reference import write_split
    from tests.conftest import tiny_split

    root = tmp_path_factory.mktemp("report")
    base = root / "data" / "cmnist"
    write_split(tiny_split(40, 3, 10, 0), base / "1pct", "train")
    write_split(tiny_split(6, 3, 3, 1), base / "1pct" / "valid", "flat", start_id=1000)
    write_split(tiny_split(10, 3, 2, 2), base / "test", "class", start_id=2000)
    out = {}
    for method in ("disent", "vanilla"):
        r = run_cli(
            "train",
            "--method",
            method,
            "--data_dir",
            root / "data",
            "--log_dir",
            root / "log",
            "--exp",
            method,
            "--curr_step",
            "15",
            "--report",
            *FAST,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "report:" in r.stdout
        out[method] = root / "log" / "cmnist" / method
    return out


def images(html):
    return {name: data for data, name in IMG.findall(html)}


def test_report_embeds_every_figure_and_header_equals_results(runs):
    d = runs["disent"]
    html = (d / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (d / "report").glob("*.png"))
    assert pngs == ["curves.png", "features_pca.png", "heatmap.png", "w_detection.png"]
    embedded = images(html)
    assert sorted(embedded) == pngs
    for name, data in embedded.items():
        import base64

        assert base64.b64decode(data) == (d / "report" / name).read_bytes()
    assert "Unavailable" not in html
    results = json.loads((d / "results.json").read_text())
    for rule, sel in results["selections"].items():
        cells = [
            f"{100 * sel['test'][k]:.2f}" if sel["test"][k] is not None else "n/a"
            for k in METRIC_KEYS
        ]
        mark = {"oracle_best_test": " ◊†", "best_valid_unbiased": " †"}.get(
            rule.removeprefix("wa_"), ""
        )  # what the figure read: test labels (◊), bias labels (†)
        read = {
            "last": "no labels",
            "best_valid_unbiased": "validation class labels, validation BIAS labels",
            "oracle_best_test": "TEST labels, TEST BIAS labels",
        }.get(rule.removeprefix("wa_"), "validation class labels")
        row = (
            f"{rule}{mark}</td><td>{read}</td><td>{sel['step']}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td>{100 * sel['valid']['accuracy']:.2f}</td>"
        )
        assert row in html, rule
    cfg = json.loads((d / "config.json").read_text())
    for sha in cfg["data"]["sha256"].values():
        assert sha in html
    for text in (
        "<th>seed</th><td>0</td>",
        "<th>steps</th><td>40</td>",
        # the selection the run ships (DisEnt averaged from --curr_step 15), as no --select was given
        "figures&#x27; checkpoint (selection rule)</th><td>wa_best_valid_pseudo_unbiased_mean5<",
        "read from the images)</th><td>disent / unknown",
    ):  # the tiny data's colours are no known palette
        assert text in html
    assert "z_intrinsic" in html and "z_bias" in html and "probe accuracy" in html


def test_w_snapshots_and_detection_logged_during_training(runs):
    snaps = torch.load(runs["disent"] / "w_snapshots.pt", weights_only=True)
    assert sorted(snaps["steps"]) == [10, 20, 40] and snaps["conflicting"].sum() == 12
    evals = [
        json.loads(line)
        for line in (runs["disent"] / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    w = evals[-1]["train_w"]
    assert 0 <= w["ap"] <= 1 and w["base_rate"] == pytest.approx(12 / 120)


def test_vanilla_report_says_w_is_unavailable(runs):
    html = (runs["vanilla"] / "report" / "report.html").read_text()
    assert "Unavailable: vanilla has no per-sample weight W" in html
    assert sorted(images(html)) == ["curves.png", "features_pca.png", "heatmap.png"]


def test_several_runs_overlay_and_summary(runs, tmp_path):
    r = run_cli(
        "report",
        runs["disent"],
        runs["vanilla"],
        "--output",
        tmp_path / "both",
        "--tsne",
        "--max_points",
        "50",
    )
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "both" / "report.html").read_text()
    assert "compare.png" in images(html) and "run1_features_tsne.png" in images(html)
    assert (
        "<h2>Summary</h2>" in html
        and html.count("<tr><td>disent</td>") + html.count(">disent</td>") >= 1
    )


def test_report_without_bias_labels_says_what_is_unavailable(tmp_path):
    write_image_folder(tmp_path / "insects", {"train": 20, "test": 6}, "png")
    r = run_cli(
        "train",
        "--image_folder",
        tmp_path / "insects",
        "--train_lff",
        "--exp",
        "f",
        "--log_dir",
        tmp_path / "log",
        "--model",
        "mlp",
        "--report",
        *FAST,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    html = (tmp_path / "log" / "insects" / "f" / "report" / "report.html").read_text()
    assert "Unavailable: the training split has no bias labels to evaluate W against" in html
    assert (
        "Unavailable: the test split has no bias labels, so there is no (target, bias) grid" in html
    )
    assert (
        "n/a (no bias labels)" in html
        and "curves.png" in images(html)
        and "features_pca.png" in images(html)
    )


def test_report_errors_are_one_line(tmp_path):
    r = run_cli("report", tmp_path)
    assert (
        r.returncode == 2
        and "not a debiaslab run directory" in r.stderr
        and len(r.stderr.strip().splitlines()) == 1
    )


def test_report_of_run_without_checkpoints_says_why(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["disent"], copy, ignore=shutil.ignore_patterns("*.pt", "report"))
    path = make_report([copy])
    html = path.read_text()
    shipped = json.loads((copy / "results.json").read_text())["default_selection"]
    assert f"Unavailable: the &#x27;{shipped}&#x27; checkpoint could not be evaluated" in html
    assert "curves.png" in images(html)


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no Chromium found (.ci/run installs Debian's chromium package where apt-get can)"
        )
    html = runs["disent"] / "report" / "report.html"
    n = len(images(html.read_text()))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    r = subprocess.run(
        cmd + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert f'data-images-loaded="{n}"' in r.stdout and f'data-images="{n}"' in r.stdout, r.stderr[
        -2000:
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        cmd + ["--window-size=1280,2400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1280) and pixels.std() > 10  # not a blank page
