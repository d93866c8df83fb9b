"""debiaslab: training image classifiers that do not lean on spurious correlations."""

__version__ = "0.1.0"

# The Python API (debiaslab/api.py), imported on first use so that `import debiaslab` and the
# CLI's --help stay fast.
__all__ = [
    "Backbone",
    "Run",
    "UserError",
    "dataset_data",
    "fit",
    "fit_many",
    "load_run",
    "manifest_data",
    "register_model",
    "tensor_data",
]


def __getattr__(name: str):
    if name in __all__:
        from debiaslab import api

        return getattr(api, name)
    raise AttributeError(f"module 'debiaslab' has no attribute {name!r}")


class UserError(Exception):
    """A problem with what the user asked for or pointed at.

    The CLI prints its message as one line (no traceback) and exits with code 2, so every
    message should name the offending path or value *and* the fix.
    """
