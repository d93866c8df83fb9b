"""The method registry. A method of debiaslab is one module in this package plus one line of
``BUILTIN``; a method of your own is one module anywhere, registered by ``register_method`` (in
your own code) or by an entry point of the group ``debiaslab.methods`` (then the command line,
sweeps and their child processes find it too): docs/development.md, "Adding a method"."""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib.metadata import entry_points

from debiaslab.errors import UserError
from debiaslab.methods.base import Method, StagePlan
from debiaslab.methods.options import Option

# name -> "module:class" of debiaslab's own methods, in the order tables list them
BUILTIN = {
    "vanilla": "debiaslab.methods.vanilla:Vanilla",
    "lff": "debiaslab.methods.lff:LfF",
    "disent": "debiaslab.methods.disent:DisEnt",
    "jtt": "debiaslab.methods.jtt:JTT",
    "lc": "debiaslab.methods.lc:LC",
    "groupdro": "debiaslab.methods.groupdro:GroupDRO",
    "lff_be": "debiaslab.methods.bias_ensemble:LfFBE",
    "disent_be": "debiaslab.methods.bias_ensemble:DisEntBE",
    "denetdm": "debiaslab.methods.denetdm:DeNetDM",
}
ENTRY_POINT_GROUP = "debiaslab.methods"

METHODS: dict[str, type[Method]] = {}
# methods registered by ``register_method`` in this process: a fresh interpreter (a sweep's or
# fit_many's child process) cannot build them
REGISTERED_HERE: set[str] = set()
# entry points whose module was being imported when the registry loaded (it imported debiaslab)
_IMPORTING: set[str] = set()
# called with each newly registered method (config.py adds its options as TrainConfig fields)
_LISTENERS: list = []


def _load(target: str) -> type[Method]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _problem(cls) -> str | None:
    """Why ``cls`` cannot be registered, or None."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        return f"{cls!r} is not a subclass of debiaslab.methods.Method"
    if not cls.name or not cls.name.isidentifier():
        return (
            f"{cls.__name__}.name {cls.name!r} must be a plain lowercase name such as 'my_method'"
        )
    if cls.name in METHODS and cls.name not in REGISTERED_HERE:
        return f"{cls.name!r} names a method of {METHODS[cls.name].__module__}; give yours another name"
    others = [m for name, m in METHODS.items() if name != cls.name]
    declared = {o.name: o for m in others for o in m.options}
    for option in cls.options:
        if not isinstance(option, Option):
            return f"{cls.__name__}.options holds {option!r}, not a debiaslab.methods.Option"
        if declared.get(option.name, option) != option:
            return f"{cls.__name__}'s option {option.name!r} is declared by another method already"
    return None


def register_method(cls: type[Method], *, here: bool = True) -> type[Method]:
    """Adds ``cls`` to ``METHODS``: its options become TrainConfig fields, ``train`` flags and
    ``fit`` options. ``here``: registered by this process's code only (not by an entry point)."""
    if cls.name in METHODS and METHODS[cls.name] is cls:
        return cls
    here = here and f"{cls.__module__}:{cls.__qualname__}" not in _IMPORTING
    problem = _problem(cls)
    if problem:
        raise UserError(f"register_method: {problem}")
    if cls.name in METHODS:  # a notebook cell run again: the newer class replaces the older
        warnings.warn(
            f"method {cls.name!r} was registered to another class; it is now {cls!r}", stacklevel=2
        )
    METHODS[cls.name] = cls
    if here:
        REGISTERED_HERE.add(cls.name)
    for listener in _LISTENERS:
        listener(cls)
    return cls


def on_register(listener) -> None:
    """Calls ``listener(cls)`` for every method registered from now on."""
    _LISTENERS.append(listener)


def _load_entry_points() -> None:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.module in sys.modules and not hasattr(sys.modules[point.module], point.attr):
            # the plugin's own module is importing debiaslab: it registers once defined
            _IMPORTING.add(f"{point.module}:{point.attr}")
            continue
        try:
            cls = point.load()
        except Exception as e:  # a broken plugin names itself instead of breaking every command
            raise UserError(
                f"the method plugin {point.name} = {point.value} (entry point group "
                f"{ENTRY_POINT_GROUP}) does not import: {type(e).__name__}: {e}; fix or "
                "uninstall it"
            ) from None
        register_method(cls, here=False)


def total_steps(cfg) -> int:
    """The steps of every stage of a run of ``cfg``: the last step its log and checkpoints reach."""
    return StagePlan(METHODS[cfg.method].stages(cfg.resolved())).total


for _target in BUILTIN.values():
    register_method(_load(_target), here=False)
_load_entry_points()

__all__ = ["METHODS", "Method", "Option", "register_method", "total_steps"]
