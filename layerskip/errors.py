"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LayerskipError(Exception):
    """An error caused by user input or the environment (bad flag, missing file, offline hub).

    The command-line entry point catches it and prints ``error: <message>`` without a traceback.
    """
