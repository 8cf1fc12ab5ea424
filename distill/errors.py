"""The exception types gankd raises for bad input: their message is a single line that names the problem.

:class:`GankdError` is gankd's one root error. It is defined in the bottom layer (``gankd.serve.errors``) so that
gankd.serve's ``ServeError`` derives from it although serve never imports gankd.distill, and re-exported here, its
home for users (``from gankd.distill import GankdError``).
"""

from gankd.serve.errors import GankdError

__all__ = ["GankdError", "RunInterrupted"]


class RunInterrupted(GankdError):
    """Ctrl-C / SIGTERM stopped a run after saving its state; ``--resume`` continues (exit status 130)."""
