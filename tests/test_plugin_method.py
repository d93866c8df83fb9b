"""A method added as docs/development.md says, from a module outside debiaslab: one file, and one
registry line (an entry point, or ``register_method`` in the user's own code). Nothing else is
edited, and the CLI, ``train --help``, ``sweep --set`` and the API all take it."""

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import quick_train_args, run_cli


def worked_method() -> str:
    """The worked method of docs/development.md, "Adding a method", as a contributor copies it."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "development.md").read_text()
    block = text[text.index("<!-- worked-method -->") :].split("```python\n", 1)[1]
    return textwrap.dedent(block.split("```", 1)[0])


@pytest.fixture
def plugin_path(tmp_path) -> Path:
    """A folder holding the method's module and an installed distribution's entry point to it
    (what ``pip install`` of a package declaring ``[project.entry-points."debiaslab.methods"]``
    leaves on the path)."""
    root = tmp_path / "plugin"
    root.mkdir()
    (root / "focal_method.py").write_text(worked_method())
    info = root / "focal_method-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: focal-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[debiaslab.methods]\nfocal = focal_method:Focal\n")
    return root


def plugin_env(plugin_path: Path) -> dict:
    from tests.conftest import REPO

    return {"PYTHONPATH": f"{REPO / 'src'}:{plugin_path}"}


def test_a_method_from_an_entry_point_trains_through_the_cli(plugin_path, tiny_reference, tmp_path):
    env = plugin_env(plugin_path)
    help_text = run_cli("train", "--help", env=env).stdout
    assert "--focal_gamma" in help_text and "focal: the method's own settings" in help_text
    logs = tmp_path / "logs"
    args = quick_train_args(tiny_reference, logs, "--method", "focal", "--focal_gamma", "1.5")
    r = run_cli("train", *args, "--exp", "f", env=env)
    assert r.returncode == 0, r.stderr
    run = logs / "cmnist" / "f"
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["method"], config["focal_gamma"]) == ("focal", 1.5)
    assert json.loads((run / "results.json").read_text())["steps"] == 40
    bad = run_cli("train", *args, "--focal_gamma", "-1", "--exp", "bad", env=env)
    assert bad.returncode != 0 and "--focal_gamma must be a finite number >= 0" in bad.stderr
    assert not (logs / "cmnist" / "bad").exists()
    wrong = run_cli("train", *quick_train_args(tiny_reference, logs, "--train_vanilla"),
                    "--focal_gamma", "1", "--exp", "v", env=env)  # fmt: skip
    assert wrong.returncode != 0 and "--focal_gamma is a setting of focal" in wrong.stderr


def test_a_method_from_an_entry_point_sweeps_with_its_option(plugin_path, tiny_reference, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli(
        "sweep", "--methods", "focal", "--ratios", "1pct", "--set", "focal_gamma=0,2",
        "--set", "num_steps=20", "--set", "valid_freq=10", "--set", "batch_size=16",
        "--set", f"data_dir={tiny_reference}", "--out", out, "--jobs", "1", "--no_progress",
        env=plugin_env(plugin_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    gammas = sorted(
        json.loads(p.read_text())["config"]["focal_gamma"] for p in out.rglob("config.json")
    )
    assert gammas == [0.0, 2.0]


API_SCRIPT = """
import json, sys
import torch
import debiaslab as dl
sys.path.insert(0, {plugin!r})
from focal_method import Focal

dl.register_method(Focal)
g = torch.Generator().manual_seed(0)
def split(n):
    y = torch.arange(n) % 2
    x = torch.randint(0, 50, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[y == 1, 0] = 250
    return x, y
data = dl.tensor_data(split(64), split(16), split(16))
run = dl.fit("focal", data, model="mlp", num_steps=20, valid_freq=10, batch_size=16,
             focal_gamma=0.5, log_dir={logs!r}, device="cpu")
print(json.dumps([run.config.method, run.config.focal_gamma, run.results["steps"]]))
try:
    dl.fit("focal", data, model="mlp", focal_gamma=-2.0, log_dir={logs!r}, device="cpu")
except dl.UserError as e:
    print(e)
"""


def test_a_method_registered_in_python_trains_through_the_api(plugin_path, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    script = API_SCRIPT.format(plugin=str(plugin_path), logs=str(tmp_path / "logs"))
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    first, refusal = r.stdout.splitlines()[-2:]
    assert json.loads(first) == ["focal", 0.5, 20]
    assert refusal == "focal_gamma must be a finite number >= 0, got -2.0"


def test_register_method_refuses_what_it_cannot_register():
    from debiaslab import UserError, register_method
    from debiaslab.methods import Method, Option

    class NotAMethod:
        name = "x"

    class Clash(Method):
        name = "disent"

    class OptionClash(Method):
        name = "option_clash"
        options = (Option("jtt_steps", int, 3, "another T", "nowhere"),)

    for cls, words in (
        (NotAMethod, "is not a subclass of debiaslab.methods.Method"),
        (Clash, "'disent' names a method of debiaslab.methods.disent; give yours another name"),
        (OptionClash, "option 'jtt_steps' is declared by another method already"),
    ):
        with pytest.raises(UserError, match=words):
            register_method(cls)
