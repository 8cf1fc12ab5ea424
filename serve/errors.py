"""The one error type of gankd.serve: a one-line message a user can act on (the CLI prints it as ``error: ...``).

Defined here rather than imported from gankd.distill, which serve never imports."""


class ServeError(Exception):
    """Bad artifact folder, missing file, unavailable backend or an input the runtime cannot take."""
