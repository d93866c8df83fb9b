"""The documentation: the generated CLI reference covers every flag of every command, and the
pages that README and the site link to exist (mkdocs build --strict, run by CI, checks the rest)."""

import argparse
import re
from pathlib import Path

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
