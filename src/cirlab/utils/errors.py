"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class CirlabError(Exception):
    """A problem with the user's input (file, flag, data) rather than a bug in cirlab."""
