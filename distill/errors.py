"""The one exception type gankd raises for bad input: its message is a single line that names the problem."""


class GankdError(Exception):
    """A user-facing error: missing file, wrong architecture, corrupted weights, bad value.

    The CLI prints ``str(error)`` as one line and exits non-zero; nothing that was saved is touched.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class RunInterrupted(GankdError):
    """Ctrl-C / SIGTERM stopped a run after saving its state; ``--resume`` continues (exit status 130)."""
