"""gankd's one error hierarchy: :class:`GankdError`, a one-line message a user can act on (every CLI prints it as
``error: ...``), and its kinds: :class:`ServeError` (gankd.serve's), ``OverBudget`` (a run stopped at its time
budget) and gankd.distill's ``RunInterrupted``; :func:`first_line` turns any exception into such a line.

The root lives here, in the bottom layer, because serve never imports gankd.distill: ServeError can then be a
GankdError, so gankd.export and gankd.distill let serve's errors pass through their own ``except GankdError`` and
CLIs without converting them. ``gankd.distill.errors`` re-exports GankdError (its public home for users). A
bottom-layer module: it imports nothing of gankd, so gankd.distill and gankd.export import it."""


class GankdError(Exception):
    """A user-facing error: missing file, wrong architecture, corrupted weights, bad value, unavailable backend.

    The message is one line (whitespace, newlines included, collapsed to single spaces); the CLI prints
    ``str(error)`` and exits non-zero; nothing that was saved is touched.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ServeError(GankdError):
    """Bad artifact folder, missing file, unavailable backend or an input the runtime cannot take: the errors of
    gankd.serve, a class of their own so a caller can tell a runtime's refusal from other errors (a Session's
    backend fallback catches only these)."""


class OverBudget(ServeError):
    """A tiled run stopped between two tiles at its time budget (``Session.run(..., budget_s=...)``)."""

    def __init__(self, message: str, done: int, total: int):
        super().__init__(message)
        self.done, self.total = done, total


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): what a one-line error
    quotes of a library's multi-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_cli(call, errors: tuple[type[BaseException], ...], interrupted: tuple[type[BaseException], ...] = ()) -> int:
    """Run a click command as a console script (``call`` runs it with ``standalone_mode=False``): one of ``errors``
    is one line, ``error: ...``, and exit code 2 (``stopped: ...`` and 130 for ``interrupted``); Ctrl-C is 130.
    The one wrapper of gankd-distill, gankd-export, gankd-bench and gankd-demo."""
    import click

    try:
        code = call()
    except errors as exc:
        stopped = isinstance(exc, interrupted)
        click.echo(f"{'stopped' if stopped else 'error'}: {exc}", err=True)
        return 130 if stopped else 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0
