"""The one exception type users see: a one-line message naming what was wrong and what is expected."""


class RidgelineError(ValueError):
    """Bad input or an impossible request; the CLI prints the message on one line and exits 2."""
