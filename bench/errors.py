"""One exception type for problems the user can fix; the CLI turns it into one line and exit 2."""


class BenchError(Exception):
    """A bad input or configuration. The message names the problem and what to do about it."""
