"""The error type of gankd.serve: a one-line message a user can act on (the CLI prints it as ``error: ...``);
``OverBudget`` is the ServeError of a run stopped at its time budget.

Defined here rather than imported from gankd.distill, which serve never imports."""


class ServeError(Exception):
    """Bad artifact folder, missing file, unavailable backend or an input the runtime cannot take."""


class OverBudget(ServeError):
    """A tiled run stopped between two tiles at its time budget (``Session.run(..., budget_s=...)``)."""

    def __init__(self, message: str, done: int, total: int):
        super().__init__(message)
        self.done, self.total = done, total
