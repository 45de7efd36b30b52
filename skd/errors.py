"""The one exception type for bad user input: the entry points print its message on one line."""


class SkdError(Exception):
    """Bad input (file, flag, key) with a one-line message naming it; CLI exits with status 2."""
