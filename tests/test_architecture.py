"""The house's shape, drawn from the imports (every ``import`` in a module, function-level ones
included): no two modules import each other, the data code reaches neither the loop nor the API,
the methods and models reach neither (nor what compiles, captures or fuses their step), the loop's
parts sit under the loop, the run folder's format and its readers reach no loop, and only the
entry points import the command line."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# what the data code may import besides itself: the error, the atomic writes, the version (not
# the package's top, whose attributes open the API)
DATA_MAY_IMPORT = {"debiaslab.errors", "debiaslab.io", "debiaslab.version"}
# what trains and what drives training: the loop (train, group) and its entry points (the API, the
# command line, a sweep and its local runner)
ENTRY = {
    "debiaslab.train",
    "debiaslab.api",
    "debiaslab.cli",
    "debiaslab.group",
    "debiaslab.sweep",
    "debiaslab.sweep_local",
}
# the loop's parts, which train.py and group.py import: the loop over the steps, opening a run's
# folder, the evaluation of a step, the results schema, SIGTERM as a resumable stop
LOOP_PARTS = {
    "debiaslab.loop",
    "debiaslab.runs",
    "debiaslab.step_evaluation",
    "debiaslab.results",
    "debiaslab.sigterm",
}
TOP = ENTRY | LOOP_PARTS


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def reaches(graph, start: str, targets: set[str]) -> set[str]:
    """The ``targets`` that ``start`` imports, directly or through other modules."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return {t for t in seen if any(t == x or t.startswith(x + ".") for x in targets)}


def test_no_two_modules_import_each_other():
    graph = import_graph()
    mutual = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]})
    assert mutual == []


def test_the_data_code_imports_only_itself_and_the_bottom():
    graph = import_graph()
    for name, imported in graph.items():
        if name.startswith("debiaslab.data"):
            outside = {m for m in imported if not m.startswith("debiaslab.data")}
            assert outside <= DATA_MAY_IMPORT, (name, outside)
            assert not reaches(graph, name, TOP), name


# what wraps a method's step from the loop: compiling, capturing, fusing (a method is one run's
# step and imports none of it)
ACCELERATION = {"debiaslab.accelerate", "debiaslab.graphs", "debiaslab.fused"}


def test_methods_and_models_reach_neither_the_loop_nor_the_api_nor_the_cli():
    graph = import_graph()
    outside = TOP | ACCELERATION
    for name in graph:
        if name.startswith(("debiaslab.methods", "debiaslab.models", "debiaslab.errors")):
            assert not reaches(graph, name, outside), (name, reaches(graph, name, outside))


def test_the_loops_parts_sit_under_the_loop():
    graph = import_graph()
    for name in LOOP_PARTS:
        assert not reaches(graph, name, ENTRY), (name, reaches(graph, name, ENTRY))


# a run folder's format (rundir.RunDir) and what reads run folders back: collect and report read
# runs, and rundir is read by all, without importing what trains
RUN_READERS = ("debiaslab.rundir", "debiaslab.collect", "debiaslab.report")


def test_the_run_folder_format_and_its_readers_reach_no_loop():
    graph = import_graph()
    assert graph["debiaslab.rundir"] <= {"debiaslab.errors", "debiaslab.io"}
    for name in graph:
        if name.startswith(RUN_READERS):
            assert not reaches(graph, name, TOP), (name, reaches(graph, name, TOP))


def test_only_the_entry_points_import_the_command_line():
    graph = import_graph()
    users = {n for n, imported in graph.items() if "debiaslab.cli" in imported}
    assert users <= {"debiaslab.__main__", "debiaslab.clidoc"}, users  # clidoc: its docs page


# reading, then computing, then rendering: a layer imports none of the layers after it, and no
# part imports its package's top (which imports every part)
PARTS = {
    "debiaslab.collect": [["runs"], ["aggregates"], ["tables", "rule_tables"]],
    "debiaslab.report": [["runs"], ["evaluation"], ["figures", "page"]],
}


def test_collect_and_report_read_then_compute_then_render():
    graph = import_graph()
    for package, layers in PARTS.items():
        parts = {f"{package}.{m}" for layer in layers for m in layer}
        assert parts == {n for n in graph if n.startswith(package + ".")}, package  # all named
        for i, layer in enumerate(layers):
            later = {f"{package}.{m}" for after in layers[i + 1 :] for m in after}
            for name in (f"{package}.{m}" for m in layer):
                assert package not in graph[name], name
                assert not reaches(graph, name, later), (name, reaches(graph, name, later))
