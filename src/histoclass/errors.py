"""The one exception type for mistakes a user can fix: the CLI prints its message, no traceback."""


class HistoclassError(Exception):
    """A problem with the user's input or setup, whose message names the bad value and the fix."""
