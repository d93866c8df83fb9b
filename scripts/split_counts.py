"""How many samples, and how many bias-conflicting ones, each split of the committed runs' data
holds, as the runs recorded them (results.json ``data.counts``), one row per data build and ratio.

    python scripts/split_counts.py docs/results/cmnist_runs docs/results/cmnist_denetdm_runs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(folders: list[str]) -> list[str]:
    seen = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("results.json")):
            data = json.loads(path.read_text())["data"]
            sha = data["sha256"]
            key = (sha["test"][:8], sha["valid"] == sha["test"], data.get("percent") or "-")
            seen.setdefault(key, data["counts"])
    out = [
        "| test sha256 | validation = test | ratio | train: n (conflicting) "
        "| valid: n (conflicting) | test: n (conflicting) |",
        "|---|---|---|---|---|---|",
    ]
    for (test, twin, pct), counts in sorted(
        seen.items(),
        key=lambda kv: (kv[0][:2], float(kv[0][2].removesuffix("pct")) if kv[0][2] != "-" else 0),
    ):
        cells = [
            f"{counts[s]['n']:,} ({counts[s].get('conflicting', '?'):,})"
            for s in ("train", "valid", "test")
        ]
        out.append(f"| {test} | {'yes' if twin else 'no'} | {pct} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(sys.argv[1:])))
