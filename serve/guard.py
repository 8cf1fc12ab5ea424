"""What server-side files a client of the demo may name: its own uploads and the demo's example images, nothing else.

Gradio hands an event the ``path`` of a file payload as the client sent it. Its own check (uploads folder only)
runs only for payloads that carry ``meta: {"_type": "gradio.FileData"}``; without ``meta`` any path reached the
function, and with it any file in Gradio's upload folder did, including other clients' uploads. So:

- Every HTTP client gets a random id in the ``gankd_client`` cookie (browsers and gradio_client keep cookies; a
  client that does not gets a new id per request and can use no upload).
- :class:`FileGuard` (ASGI middleware) records which client each ``/upload`` stored which file for, replaces every
  file payload in a request body that is not that client's upload or an example by an inert one (no ``meta``, a
  path that names nothing), so neither Gradio nor our code opens it, and refuses ``/file=`` downloads of another
  client's upload and ``/file=`` URL proxying.
- The event function checks the path once more (:meth:`ClientFiles.check`) and reads the resolved file it
  returns; the refusal is the same line whether the file exists or not.

Paths are compared after ``resolve()``: ``..`` and symlinks count as where they lead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from .errors import ServeError

COOKIE = "gankd_client"
REFUSED = "the server reads only files this client uploaded (and the demo's examples)"
INERT_PATH = "gankd-refused-file"  # what a refused file payload's path becomes: names no file
MAX_JSON_BODY_BYTES = 1 << 20  # event requests carry a few file references and options, not pixels
MAX_TRACKED_UPLOADS = 4096  # the oldest uploads beyond this are forgotten (and so refused)
_ID = re.compile(r"[A-Za-z0-9_-]{24}")


def new_client_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters


def _resolved(path: str) -> str | None:
    if not path or "://" in path or path.startswith("data:") or "\x00" in path:
        return None
    try:
        return str(Path(os.path.abspath(path)).resolve())
    except (OSError, RuntimeError, ValueError):
        return None


class ClientFiles:
    """The uploads of each client (path -> client id) and the files any client may name (the demo's examples)."""

    def __init__(self, max_uploads: int = MAX_TRACKED_UPLOADS):
        self._owner: OrderedDict[str, str] = OrderedDict()
        self._public: set[str] = set()
        self._max = max_uploads
        self._lock = threading.Lock()

    def add_upload(self, client: str, path: str) -> None:
        resolved = _resolved(path)
        if resolved is None:
            return
        with self._lock:
            self._owner[resolved] = client
            self._owner.move_to_end(resolved)
            while len(self._owner) > self._max:
                self._owner.popitem(last=False)

    def add_public(self, path: str) -> None:
        resolved = _resolved(path)
        if resolved is not None:
            with self._lock:
                self._public.add(resolved)

    def allowed(self, client: str | None, path) -> str | None:
        """The resolved path when ``client`` may read ``path``, else None."""
        resolved = _resolved(path) if isinstance(path, str) else None
        if resolved is None:
            return None
        with self._lock:
            if resolved in self._public or (client is not None and self._owner.get(resolved) == client):
                return resolved
        return None

    def owned_by_another(self, client: str | None, path: str) -> bool:
        resolved = _resolved(path)
        with self._lock:
            owner = self._owner.get(resolved) if resolved else None
        return owner is not None and owner != client

    def check(self, client: str | None, path) -> Path:
        """The file to read for a path a request named; ServeError (one line, the same for every refused path)."""
        resolved = self.allowed(client, path)
        if resolved is None:
            raise ServeError(REFUSED)
        return Path(resolved)


def client_of(cookie_header: str) -> str | None:
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and _ID.fullmatch(value):
            return value
    return None


def _with_client(cookie_header: str, client: str) -> str:
    kept = [p.strip() for p in cookie_header.split(";") if p.strip() and not p.strip().startswith(COOKIE + "=")]
    return "; ".join([*kept, f"{COOKIE}={client}"])


def neutralise(data, allowed) -> tuple[object, int]:
    """``data`` with every file payload (a dict with a string ``path``) that ``allowed(path)`` refuses replaced by
    an inert one; returns (data, how many were replaced)."""
    replaced = 0

    def walk(node):
        nonlocal replaced
        if isinstance(node, dict):
            if isinstance(node.get("path"), str) and not allowed(node["path"]):
                replaced += 1
                return {"path": INERT_PATH}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(data), replaced


class FileGuard:
    """ASGI middleware around the Gradio app; see the module docstring."""

    def __init__(self, app, files: ClientFiles, log=None):
        self.app, self.files, self.log = app, files, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"cookie"]
        cookie = "; ".join(v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"cookie")
        client = client_of(cookie)
        fresh = client is None
        if fresh:
            client = new_client_id()
        scope = {**scope, "headers": [*headers, (b"cookie", _with_client(cookie, client).encode("latin-1"))]}
        send = self._setting_cookie(send, client) if fresh else send
        path, method = scope.get("path", ""), scope.get("method", "GET")

        if "/file=" in path and method in ("GET", "HEAD"):
            target = path.split("/file=", 1)[1]  # scope["path"] is decoded once, as the route that serves it reads it
            if "://" in target or self.files.owned_by_another(client, target):
                if self.log:
                    self.log("/file= " + ("URL proxying" if "://" in target else "download of another client's upload"))
                return await _plain(send, 403, f"File not allowed: {target}.")
        if method == "POST" and path.endswith("/upload"):
            return await self.app(scope, receive, self._recording_uploads(send, client))
        if method == "POST" and _is_json(scope):
            body = await _read_body(receive, MAX_JSON_BODY_BYTES)
            if body is None:
                return await _plain(send, 413, "request body too large")
            body = self._neutralised(body, client)
            scope = {**scope, "headers": [*[(k, v) for k, v in scope["headers"] if k != b"content-length"],
                                          (b"content-length", str(len(body)).encode())]}
            return await self.app(scope, _replay(body, receive), send)
        return await self.app(scope, receive, send)

    def _neutralised(self, body: bytes, client: str) -> bytes:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body  # not JSON after all: the app answers it as it would
        data, replaced = neutralise(data, lambda p: self.files.allowed(client, p) is not None)
        return json.dumps(data).encode() if replaced else body

    def _recording_uploads(self, send, client: str):
        status, chunks = [0], []

        async def wrapped(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        stored = json.loads(b"".join(chunks))
                    except ValueError:
                        stored = []
                    for item in stored if isinstance(stored, list) else []:
                        if isinstance(item, str):
                            self.files.add_upload(client, item)
            await send(message)

        return wrapped

    @staticmethod
    def _setting_cookie(send, client: str):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                value = f"{COOKIE}={client}; Path=/; HttpOnly; SameSite=Lax"
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"set-cookie", value.encode("latin-1"))]}
            await send(message)

        return wrapped


def _is_json(scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


async def _read_body(receive, limit: int) -> bytes | None:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes, receive):
    """The body, already read, then the connection's own messages (a disconnect when it comes)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _plain(send, status: int, text: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
    await send({"type": "http.response.body", "body": text.encode()})
