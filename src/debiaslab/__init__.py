"""debiaslab: training image classifiers that do not lean on spurious correlations."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user asked for or pointed at.

    The CLI prints its message as one line (no traceback) and exits with code 2, so every
    message should name the offending path or value *and* the fix.
    """
