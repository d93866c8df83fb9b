"""mkdocs-gen-files script: writes cli.md from the parsers at build time."""

import mkdocs_gen_files

from debiaslab.clidoc import cli_reference

with mkdocs_gen_files.open("cli.md", "w") as f:
    f.write(cli_reference())
