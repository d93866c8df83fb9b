"""The documentation: the generated CLI reference covers every flag of every command, and the
pages that README and the site link to exist (mkdocs build --strict, run by CI, checks the rest)."""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from debiaslab.cli import build_parser
from debiaslab.clidoc import cli_reference, commands

ROOT = Path(__file__).resolve().parents[1]


def test_every_flag_of_every_command_is_in_the_cli_reference():
    reference = cli_reference()
    missing = []
    for line, parser in commands(build_parser()):
        assert f"## `{line}`" in reference
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            missing += [(line, flag) for flag in action.option_strings if flag not in reference]
    assert not missing
    assert "debiaslab data build cifar10c" in reference and "--cuda_graph" in reference


def test_readme_and_nav_link_only_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", readme)
    assert links and all((ROOT / link).exists() for link in links if not link.startswith("http"))
    nav = re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    generated = {"cli.md"}
    assert len(nav) > 10 and all((ROOT / "docs" / p).exists() for p in nav if p not in generated)


def test_every_fit_option_is_documented_on_the_api_page():
    """Each TrainConfig field has its docstring, and the API page's generated table lists it."""
    import dataclasses

    from debiaslab.clidoc import field_docs, options_reference
    from debiaslab.config import METHOD_OPTIONS, TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted([*field_docs(TrainConfig), *METHOD_OPTIONS]) == sorted(names)
    table = options_reference()
    assert all(f"| `{name}` |" in table for name in names)


def python_snippets() -> list[tuple[str, int, str]]:
    """Every ```python block of README.md and docs/: (page, line, code)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        text = page.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S):
            line = text.count("\n", 0, match.start()) + 1
            found.append((str(page.relative_to(ROOT)), line, match.group(1)))
    return found


SNIPPETS = python_snippets()


@pytest.mark.parametrize("page, line, code", SNIPPETS, ids=[f"{p}:{n}" for p, n, _ in SNIPPETS])
def test_every_python_snippet_of_the_docs_runs_as_written(tmp_path, page, line, code):
    """Each snippet defines what it uses (its own small data), so a reader can paste it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{page}:{line}\n{done.stderr[-2000:]}"
