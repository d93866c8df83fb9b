"""DeNetDM's stage 1 on DeNetDM's build of Colored MNIST, read from the committed runs' logs: how
the shallow expert, scored alone at each stage-1 evaluation, moves, and which state the authors'
pick (`--denetdm_stage1_pick oracle_test`: the best bias-conflicting TEST accuracy) keeps.

    python scripts/cmnist_denetdm_stage1.py

Reads config.json and metrics.jsonl of every DeNetDM run under docs/results/cmnist_denetdm_runs.
Prints a markdown table (docs/results/cmnist_denetdm.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

from debiaslab.selection import marks

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "results" / "cmnist_denetdm_runs"
RATIOS = ("0.5pct", "1pct", "2pct", "5pct")
STAGE1 = "poe"
# every figure below is a test-split accuracy over (class, colour) groups: test and bias labels
MARK = marks(["test_labels", "test_bias_labels"])


def stage1(run: Path) -> list[dict]:
    """The run's stage-1 evaluations (the shallow expert alone), in order."""
    records = (json.loads(line) for line in (run / "metrics.jsonl").open())
    return [r for r in records if r.get("kind") == "eval" and r.get("stage") == STAGE1]


def pct(x: float) -> str:
    return f"{100 * x:.2f} {MARK}"


def main() -> None:
    runs = []
    for cfg_path in sorted(RUNS.rglob("config.json")):
        cfg = json.loads(cfg_path.read_text())
        cfg = cfg.get("config", cfg)
        if cfg["method"] == "denetdm":
            runs.append((cfg, stage1(cfg_path.parent)))
    runs.sort(key=lambda r: (RATIOS.index(r[0]["percent"]), r[0]["denetdm_stage1_pick"]))
    print(
        "DeNetDM's stage 1 (docs/results/cmnist_denetdm_runs, from each run's metrics.jsonl): the "
        "shallow expert scored alone at each stage-1 evaluation, test split (%). `oracle_test` "
        "keeps the evaluation of best bias-conflicting test accuracy (the first of equal ones); "
        "the default keeps the last."
    )
    print()
    head = ["ratio", "seed", "stage-1 pick", "evaluations", "unbiased: median", "highest (step)"]
    head += ["lowest after it (step)", "last (step)"]
    head += ["oracle_test's state: step, conflicting, unbiased"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cfg, evals in runs:
        unbiased = [e["test"]["unbiased"] for e in evals]
        top = max(range(len(evals)), key=lambda i: (unbiased[i], -i))
        pick = max(range(len(evals)), key=lambda i: (evals[i]["test"]["conflicting"], -i))
        row = [cfg["percent"], str(cfg["seed"]), cfg["denetdm_stage1_pick"], str(len(evals))]
        low = min(range(top, len(evals)), key=lambda i: (unbiased[i], i))
        row += [pct(median(unbiased)), f"{pct(unbiased[top])} ({evals[top]['step']})"]
        row += [f"{pct(unbiased[low])} ({evals[low]['step']})"]
        row += [f"{pct(unbiased[-1])} ({evals[-1]['step']})"]
        p = evals[pick]
        row += [
            f"{p['step']} {MARK}, {pct(p['test']['conflicting'])}, {pct(p['test']['unbiased'])}"
        ]
        print("| " + " | ".join(row) + " |")
    print()
    for ratio in RATIOS:
        same = [evals for cfg, evals in runs if cfg["percent"] == ratio]
        if len(same) > 1:
            verdict = "identical" if all(e == same[0] for e in same) else "NOT identical"
            print(f"- {ratio}: the stage-1 evaluations of its {len(same)} runs are {verdict}.")
    print(
        f"- {MARK}: each figure read test labels and test bias labels (a test-split accuracy over "
        "class and colour groups, or the step such accuracies picked)."
    )


if __name__ == "__main__":
    main()
