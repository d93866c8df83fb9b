"""The one exception every layer raises for a user's mistake; it imports nothing of debiaslab,
so the data readers and builders at the bottom of the house can raise it."""


class UserError(Exception):
    """A problem with what the user asked for or pointed at.

    The CLI prints its message as one line (no traceback) and exits with code 2, so every
    message should name the offending path or value *and* the fix.
    """
