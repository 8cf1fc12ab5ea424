"""The error type of gankd.serve: a one-line message a user can act on (the CLI prints it as ``error: ...``);
``OverBudget`` is the ServeError of a run stopped at its time budget; :func:`first_line` turns any exception into
such a line.

Defined here rather than imported from gankd.distill, which serve never imports. A bottom-layer module: it imports
nothing of gankd, so gankd.distill and gankd.export may import it (``first_line``)."""


class ServeError(Exception):
    """Bad artifact folder, missing file, unavailable backend or an input the runtime cannot take."""


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
