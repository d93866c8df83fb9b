"""A method's own settings, declared beside its code (``Method.options``). Each becomes a
``TrainConfig`` field (None: the declared default), a ``debiaslab train`` flag, a row of the CLI
reference and of the API page's options table, and is checked by ``TrainConfig.validate``: a new
method adds its settings here and nowhere else."""

from __future__ import annotations

import math
from dataclasses import dataclass

# check -> (what the value must be, the test)
CHECKS = {
    "positive": ("a positive {kind}", lambda v: v > 0),
    "non-negative": ("a finite number >= 0", lambda v: v >= 0),
    "fraction": ("in [0, 1)", lambda v: 0 <= v < 1),
    "probability": ("in (0, 1]", lambda v: 0 < v <= 1),
}


@dataclass(frozen=True)
class Option:
    """One setting of a method: ``--name`` (and the ``aliases`` the reference code used)."""

    name: str
    type: type  # int, float, bool or str
    default: object
    help: str
    source: str  # where the default comes from
    check: str | None = None  # a key of CHECKS; "model": a name of models.MODELS
    aliases: tuple[str, ...] = ()
    choices: tuple[
        str, ...
    ] = ()  # the values a str option takes (the first is usually the default)
    # False for an option added after runs were recorded whose default computes what they did:
    # at its default it stays out of the config hash, so those runs keep their folders
    hashed_at_default: bool = True
    # for an option added after runs were recorded that computed something else: the value those
    # runs trained with, read into their saved config where it lacks the option (from_saved)
    saved_before: object = None

    # True for an option that was a field of every run's config when runs were recorded (DisEnt's
    # lambdas): its field keeps its default in every config, so every run's hash keeps it
    in_every_config: bool = False

    @property
    def annotation(self) -> str:
        return self.type.__name__ if self.in_every_config else f"{self.type.__name__} | None"

    @property
    def field_default(self):
        """The TrainConfig field's default: None (the method fills it in), or the declared
        default where the option is in every config."""
        return self.default if self.in_every_config else None

    def given(self, value) -> bool:
        """Whether ``value`` of this option's field was set, not left at the field's default."""
        return value != self.field_default

    def describe(self) -> str:
        """The flag's help: what it does, its choices, its default and where that comes from."""
        choices = f"; one of {', '.join(self.choices)}" if self.choices else ""
        return f"{self.help}{choices} (default: {self.default}; {self.source})"

    def problem(self, value) -> str | None:
        """Why ``value`` cannot be this option's, or None."""
        return value_problem(self.name, self.type, value, self.check, self.choices)


def value_problem(name: str, kind: type, value, check: str | None, choices=()) -> str | None:
    """Why ``value`` cannot be the setting ``name`` (of type ``kind``), or None: the check of a
    method's option and of a general one (``config.setting``) alike."""
    if value is not None and choices and value not in choices:
        return f"--{name} {value!r} is not one of its choices; choose one of {', '.join(choices)}"
    if value is None or check is None:
        return None
    if check == "model":
        from debiaslab.models import MODELS

        if str(value).lower() not in MODELS:
            return f"--{name} {value!r} is not a model; choose one of {', '.join(MODELS)}"
        return None
    if check == "name":
        if not value or value in (".", "..") or "/" in value or "\\" in value:
            return (
                f"--{name} {value!r} must be a plain name (it names a folder under --log_dir), "
                "without '/' and not '.' or '..'"
            )
        return None
    wanted, ok = CHECKS[check]
    number = "integer" if kind is int else "number"
    if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
        return f"--{name} must be {wanted.format(kind=number)}, got {value}"
    return None
