"""Every figure of the results pages and docs/speed.md is printed by the command its block names,
run on committed runs or committed raw output; no figure stands in prose outside a block."""

import importlib.util
from pathlib import Path

import pytest

from debiaslab.docblocks import BLOCK, loose_figures, replace_block

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("doc_figures", REPO / "scripts" / "doc_figures.py")
doc_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(doc_figures)
PAGES = doc_figures.pages()
refresh, stale = doc_figures.refresh, doc_figures.stale


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_is_what_its_command_prints(page):
    text = page.read_text()
    assert stale(text, REPO) == []


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_no_figure_stands_outside_a_block(page):
    assert loose_figures(page.read_text()) == []


def test_loose_figures_finds_measured_figures_and_leaves_settings_alone():
    text = (
        "It scored 71.57 ± 4.03 (1.24x, 17%) at 0.5pct with torch 2.14.1 and `lr=0.001`.\n"
        "<!-- figures: echo 1.5 -->\n1.5\n<!-- /figures -->\n```\n0.25\n```\n"
    )
    assert loose_figures(text) == ["71.57", "4.03", "1.24x", "17%"]


def test_blocks_are_rewritten_and_a_drift_is_found(tmp_path):
    page = "a\n<!-- figures: echo 2.5 -->\n2.4\n<!-- /figures -->\nb\n"
    assert stale(page, tmp_path) == ["echo 2.5"]
    fixed = refresh(page, tmp_path)
    shown = "*Printed by* `echo 2.5`:\n\n2.5\n"  # the command, visible on the rendered page
    assert fixed == f"a\n<!-- figures: echo 2.5 -->\n{shown}<!-- /figures -->\nb\n"
    assert stale(fixed, tmp_path) == [] and len(BLOCK.findall(fixed)) == 1
    doc = tmp_path / "p.md"
    doc.write_text(fixed)
    assert "`echo 2.5`:\n\nX\n<!--" in replace_block(doc, "X\n", lambda c: c == "echo 2.5")


def test_collect_into_writes_the_block_of_its_own_command_only(tmp_path):
    from tests.conftest import run_cli

    mine = "debiaslab collect docs/results/cmnist_lff_recipe_runs --rules last"
    other = "debiaslab collect docs/results/cmnist_lff_recipe_runs"
    page = tmp_path / "p.md"
    page.write_text(
        f"<!-- figures: {other} -->\nold\n<!-- /figures -->\n"
        f"<!-- figures: {mine} -->\nold\n<!-- /figures -->\n"
    )
    r = run_cli(*mine.split()[1:], "--into", page)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert text.count("\nold\n") == 1 and stale(text, REPO) == [other]
