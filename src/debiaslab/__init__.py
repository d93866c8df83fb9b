"""debiaslab: training image classifiers that do not lean on spurious correlations."""

from debiaslab.errors import UserError
from debiaslab.version import __version__ as __version__  # re-exported

# The Python API (debiaslab/api.py), imported on first use so that `import debiaslab` and the
# CLI's --help stay fast.
__all__ = [
    "Backbone",
    "Run",
    "TrainConfig",
    "UserError",
    "dataset_data",
    "fit",
    "fit_many",
    "load_run",
    "manifest_data",
    "register_method",
    "register_model",
    "tensor_data",
]


def __getattr__(name: str):
    if name in __all__:
        from debiaslab import api

        return getattr(api, name)
    raise AttributeError(f"module 'debiaslab' has no attribute {name!r}")
