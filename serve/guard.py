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
- Uploads are content-hashed: two clients who upload the same bytes under the same name get the same path, so a
  path belongs to the *set* of clients that uploaded it (each keeps it).
- Every body the app could parse as JSON is checked: FastAPI parses a content type whose subtype is ``json`` or
  ends in ``+json`` (``application/vnd.x+json``), and Gradio's component server reads any body as JSON. So a
  request body other than an upload (multipart) or a login (form) must be JSON by that rule (or have no content
  type) and parse, or it is refused (415 / 400) in one line, before Gradio sees it. (The demo has no microphone or
  webcam inputs, whose recordings Gradio takes as multipart bodies elsewhere.)
- A payload that reaches Gradio is one Gradio cannot fail on with a traceback: an allowed file payload is rebuilt
  from its path (and name) alone, and anything that looks like a file payload but is not a string path is inert.
- The event function checks the path once more (:meth:`ClientFiles.check`) and reads the resolved file it
  returns; the refusal is the same line whether the file exists or not.

Paths are compared after ``resolve()``: ``..`` and symlinks count as where they lead.
"""

from __future__ import annotations

import email.message
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
MAX_TRACKED_UPLOADS = 4096  # (path, client) pairs; the oldest beyond this are forgotten (and so refused)
FILE_META = {"_type": "gradio.FileData"}
NO_BODY_METHODS = ("GET", "HEAD", "OPTIONS")
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
    """The uploads of each client (path -> the set of clients that uploaded it) and the files any client may name
    (the demo's examples)."""

    def __init__(self, max_uploads: int = MAX_TRACKED_UPLOADS):
        self._owners: dict[str, set[str]] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()  # (path, client), oldest first
        self._public: set[str] = set()
        self._max = max_uploads
        self._lock = threading.Lock()

    def add_upload(self, client: str, path: str) -> None:
        resolved = _resolved(path)
        if resolved is None:
            return
        with self._lock:
            self._owners.setdefault(resolved, set()).add(client)
            self._order[(resolved, client)] = None
            self._order.move_to_end((resolved, client))
            while len(self._order) > self._max:  # bounded however many client ids upload one file
                (old_path, old_client), _ = self._order.popitem(last=False)
                owners = self._owners[old_path]
                owners.discard(old_client)
                if not owners:
                    del self._owners[old_path]

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
            if resolved in self._public or (client is not None and client in self._owners.get(resolved, ())):
                return resolved
        return None

    def owned_by_another(self, client: str | None, path: str) -> bool:
        """Whether ``path`` is an upload and ``client`` is not one of the clients that uploaded it."""
        resolved = _resolved(path)
        with self._lock:
            owners = self._owners.get(resolved, set()) if resolved else set()
            return bool(owners) and client not in owners

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
    """``data`` with every file payload (a dict with a ``path`` or a ``meta`` key) rebuilt: the ones whose string
    path ``allowed(path)`` accepts from their path, original name and ``meta`` marker alone (so no other field can
    fail Gradio's FileData validation), the others replaced by an inert one. Returns (data, how many file payloads
    it held)."""
    found = 0

    def walk(node):
        nonlocal found
        if isinstance(node, dict):
            if "path" in node or "meta" in node:
                found += 1
                path = node.get("path")
                return _file_payload(node, path) if isinstance(path, str) and allowed(path) else {"path": INERT_PATH}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(data), found


def _file_payload(node: dict, path: str) -> dict:
    payload = {"path": path}
    if isinstance(node.get("orig_name"), str):
        payload["orig_name"] = node["orig_name"]
    if node.get("meta") == FILE_META:
        payload["meta"] = dict(FILE_META)
    return payload


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
        if method in NO_BODY_METHODS or (method == "POST" and path.rstrip("/").endswith("/login")):
            return await self.app(scope, receive, send)  # a login form carries no file payload
        body = await _read_body(receive, MAX_JSON_BODY_BYTES)
        if body is None:
            return await self._refuse(send, 413, f"request body over {MAX_JSON_BODY_BYTES} bytes (images go to "
                                                 "/upload)")
        if body:
            kind = content_type(scope)
            if kind and not parsed_as_json(kind):  # no content type: Gradio's component server reads it as JSON
                return await self._refuse(send, 415, f"request bodies must be JSON (application/json), not {kind!r}")
            try:
                body = self._neutralised(body, client)
            except (ValueError, UnicodeDecodeError):
                return await self._refuse(send, 400, "the request body is not valid JSON")
            except RecursionError:
                return await self._refuse(send, 400, "the request body is nested too deeply")
        scope = {**scope, "headers": [*[(k, v) for k, v in scope["headers"] if k != b"content-length"],
                                      (b"content-length", str(len(body)).encode())]}
        return await self.app(scope, _replay(body, receive), send)

    def _neutralised(self, body: bytes, client: str) -> bytes:
        """The body with its file payloads rebuilt or made inert (:func:`neutralise`); ValueError when it is not
        JSON, RecursionError when it nests deeper than Python can walk."""
        data, found = neutralise(json.loads(body), lambda p: self.files.allowed(client, p) is not None)
        return json.dumps(data).encode() if found else body

    async def _refuse(self, send, status: int, message: str) -> None:
        """One line for the client and one in the log, with the request id ``log`` returns."""
        request_id = self.log(message) if self.log else None
        await _plain(send, status, f"{message} (request {request_id})" if request_id else message)

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


def content_type(scope) -> str | None:
    """The request's content type as the app reads it (Starlette: the first ``content-type`` header), or None."""
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return value.decode("latin-1")
    return None


def parsed_as_json(kind: str) -> bool:
    """Whether FastAPI parses a body of content type ``kind`` as JSON: type ``application`` with subtype ``json``
    or ``*+json``, read with ``email.message`` as ``fastapi.routing`` reads it (case, parameters, spaces)."""
    message = email.message.Message()
    message["content-type"] = kind
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


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
