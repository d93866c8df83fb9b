"""The one exception every layer raises for a user's mistake; it imports nothing of debiaslab,
so the data readers and builders at the bottom of the house can raise it."""


class UserError(Exception):
    """A problem with what the user asked for or pointed at.

    The CLI prints its message as one line (no traceback) and exits with code 2, so every
    message should name the offending path or value *and* the fix.
    """


def closest(word: str, known, n: int = 1) -> list[str]:
    """The names of ``known`` nearest to a mistyped ``word`` (at most ``n``; none where none is
    close), for a refusal's "did you mean ...?"."""
    import difflib

    return difflib.get_close_matches(str(word), list(known), n=n, cutoff=0.6)
