"""The one port check of gankd's servers: ``gankd-demo`` (Gradio) and ``gankd-demo triton`` try to bind each port
before the server loads, so a busy port fails fast, in one line that names the option to change.

SO_REUSEADDR as uvicorn and tritonserver set it: a port left in TIME_WAIT by a stopped server counts as free.
"""

from __future__ import annotations

import errno
import socket

from .errors import ServeError, first_line


def port_message(host: str, port: int | None, exc: BaseException, option: str = "--port", hint: str = "") -> str:
    """The one line for an ``exc`` raised while binding ``host:port``: "in use" (with ``hint``, a guess at who holds
    it) and the option that picks another, or the OS's reason."""
    text = first_line(exc)
    if getattr(exc, "errno", None) == errno.EADDRINUSE or "empty port" in text:  # gradio: "Cannot find empty port"
        return f"port {port} on {host} is in use{f' ({hint})' if hint else ''}; pass {option} with a free one"
    return f"cannot listen on {host}:{port}: {text}"


def check_port_free(host: str, port: int, option: str = "--port", hint: str = "") -> None:
    """ServeError (one line, :func:`port_message`) when ``host:port`` cannot be bound."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        raise ServeError(port_message(host, port, exc, option, hint)) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS has free on ``host`` right now (for benchmarks, soaks and tests that start a server)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
