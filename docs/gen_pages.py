"""mkdocs-gen-files script: the pages and assets made at build time.

- cli.md, the command-line reference, from the parsers (src/debiaslab/clidoc.py);
- the end of api.md, the table of every option of ``fit`` (TrainConfig's fields and their
  docstrings);
- MathJax (its SVG build, one self-contained file from the django-static-mathjax wheel of the
  docs extra), served by the site itself so the methods' equations render offline too.
"""

from importlib.resources import files

import mkdocs_gen_files

from debiaslab.clidoc import cli_reference, options_reference

with mkdocs_gen_files.open("cli.md", "w") as f:
    f.write(cli_reference())
with mkdocs_gen_files.open("api.md", "a") as f:
    f.write("\n" + options_reference())

mathjax = files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg.js"
with mkdocs_gen_files.open("assets/mathjax/tex-svg.js", "w") as f:
    f.write(mathjax.read_text(encoding="utf-8"))
