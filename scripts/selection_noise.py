"""How noisy a validation accuracy is at a given size: the binomial standard error of an accuracy
``p`` measured on ``m`` samples, ``sqrt(p (1 - p) / m)``, for the validation sizes a user's own
data may have (docs/selection-own-data.md prints this table)."""

import math

SIZES = (10, 25, 50, 100, 400, 1600)
ACCURACIES = (0.5, 0.7, 0.9)


def main() -> None:
    print(
        "| samples in the smallest group | " + " | ".join(f"at {p:.0%}" for p in ACCURACIES) + " |"
    )
    print("|---|" + "---|" * len(ACCURACIES))
    for m in SIZES:
        errors = (100 * math.sqrt(p * (1 - p) / m) for p in ACCURACIES)
        print(f"| {m} | " + " | ".join(f"±{e:.1f} points" for e in errors) + " |")


if __name__ == "__main__":
    main()
