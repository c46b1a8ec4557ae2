"""ASGI middleware (Starlette, FastAPI, any ASGI 3 app): one host-wide limit per key.

    from fastapi import FastAPI
    from sluice.asgi import RateLimitMiddleware, header, path_regex

    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, key=header("x-api-key"), tier="pro")
    # or: app = RateLimitMiddleware(app, key=..., tier=lambda scope: ..., cost=...)

``key``, ``tier`` and ``cost`` are each either a constant or a callable that receives
the ASGI ``scope`` (a dict: ``scope["path"]``, ``scope["headers"]`` as lowercase
``(bytes, bytes)`` pairs, ``scope["client"]``...) and returns the value; a callable
may also be ``async`` (its result is awaited), and so may ``exempt``. Routing has
not run yet in a middleware, so read path parameters from ``scope["path"]``
(:func:`path_segment`, :func:`path_regex`), not from ``scope["path_params"]``.

From the JSON body:

    app.add_middleware(RateLimitMiddleware, key=header("x-api-key"),
                       tier=json_field("model"))        # {"model": "pro", ...}

A callable marked with :func:`reads_body` (:func:`json_field` is) makes the
middleware read the whole body first (at most ``max_body_bytes``, default 1 MiB;
larger, or a ``Content-Length`` announcing more: ``413`` before anything is read,
the app does not run), put it in ``scope["sluice.body"]`` and replay it to the app,
which sees the body unchanged. ``GET``, ``HEAD`` and ``OPTIONS`` bodies are not
read: the functions see an empty body. Custom functions read it with
:func:`request_json`. A field that is not a str or int, or (without ``default=``)
a missing field or a body that is not JSON, counts as no key/tier
(``missing_key_status``) or a bad cost (``400``); so a body-based tier needs a
``default`` (``json_field("model", default="free")``) or an ``exempt`` for routes
without a body. An int key counts as its decimal string (``123`` is ``"123"``); a
key or tier that is not valid Unicode (a lone surrogate) is a ``400``. A client
that disconnects while its body is read gets nothing and the app does not run.

What a request gets:

* admitted: the app runs; ``RateLimit-*`` and ``x-ratelimit-*`` headers are added to
  its response (replacing any of the same names the app set);
* denied: ``429`` with the decision's headers (``Retry-After`` in whole seconds) and an
  OpenAI-style body ``{"error": {"message", "type": "rate_limit_exceeded", "code",
  "tier", "retry_after", ...}}``; ``code`` is ``rate_limit_exceeded`` (wait and
  retry), ``cost_above_limit`` (the cost exceeds the tier's whole limit) or
  ``tier_closed`` (limit 0); the app does not run;
* no key (the key callable returned ``None`` or an empty value) or no tier:
  ``missing_key_status`` (400) with ``"type": "missing_rate_limit_key"``;
* a key or cost the limiter can never accept (key longer than the segment's
  ``max_key_bytes``, cost 0, negative, or above the tier's capacity), or a tier
  chosen by a callable that does not exist: ``400`` with ``"type":
  "invalid_request_error"``. This is the request's fault, so it is refused even
  with ``on_error="allow"`` (otherwise an over-long API key or a made-up tier would
  bypass the limit);
* the limiter itself fails (no segment: is ``sluiced`` running? a constant tier that
  does not exist, ...): by default ``error_status`` (503, with ``Retry-After: 1``)
  and ``"type": "rate_limiter_unavailable"`` -- fail closed, never a silent allow.
  ``on_error="allow"`` is the explicit opt-in to let such requests through (each
  failure is logged as a warning on the ``sluice`` logger, at most once a second);
* the tier's key table is full (``segment.max_keys`` live keys): ``error_status``
  even with ``on_error="allow"``, since anyone can fill it with made-up keys. Size
  ``max_keys`` for the keys a flood can make, or take the key from an
  authenticated identity, not from whatever the request says.

Place it inside ``CORSMiddleware`` (add it first: Starlette runs the last added
outermost), or exempt ``OPTIONS``: a browser's preflight carries no API key, and a
429 sent from outside the CORS layer has no ``Access-Control-Allow-Origin``, so the
browser reports a CORS error instead. List ``Retry-After`` and the ``RateLimit-*`` /
``x-ratelimit-*`` headers in ``expose_headers`` for scripts to read them.

Exceptions raised by your own key/tier/cost callables are not caught (the server
answers 500). ``lifespan`` scopes pass through untouched, ``websocket`` ones too
unless ``websocket=True`` (one admission per handshake), and so do requests for
which ``exempt(scope)`` is true.

The :class:`sluice.Client` is opened on the first request of each process (workers
that fork or spawn each open their own) unless ``client`` is given; all middlewares
of a process share one client per segment.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional, TypeVar, Union

import sluice
from sluice._limiter import (
    MAX_BODY_BYTES,
    _cached_json,
    _check_max_body,
    _field_path,
    _json_field,
    _Limiter,
    _replace_headers,
    _segment,
    _too_large_body,
)

__all__ = [
    "RateLimitMiddleware",
    "header",
    "path_segment",
    "path_regex",
    "client_host",
    "reads_body",
    "json_field",
    "request_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KeyLike = Union[str, bytes]
KeySource = Union[KeyLike, Callable[[Scope], Union[Optional[KeyLike], Awaitable[Optional[KeyLike]]]]]
TierSource = Union[str, Callable[[Scope], Union[Optional[str], Awaitable[Optional[str]]]]]
CostSource = Union[int, Callable[[Scope], Union[int, Awaitable[int]]]]
ExemptSource = Callable[[Scope], Union[bool, Awaitable[bool]]]
F = TypeVar("F", bound=Callable[..., Any])

# --- helpers for key/tier callables --------------------------------------------------------

def header(name: str, *, prefix: Optional[str] = None) -> Callable[[Scope], Optional[str]]:
    """A key/tier function returning request header ``name`` (case-insensitive) or None.

    The value is decoded as latin-1, as WSGI does, so one header names the same key
    under ``sluice.asgi`` and ``sluice.wsgi``. With ``prefix`` (e.g. ``"Bearer "``,
    compared case-insensitively) the value must start with it and the rest is
    returned; otherwise None."""
    wanted = name.lower().encode("latin-1")
    plen = len(prefix) if prefix else 0
    lprefix = prefix.lower() if prefix else None

    def read(scope: Scope) -> Optional[str]:
        for k, v in scope.get("headers") or ():
            if k.lower() == wanted:
                value = v.decode("latin-1")
                if lprefix is None:
                    return value
                if value[:plen].lower() == lprefix:
                    return value[plen:].strip() or None
                return None
        return None

    read.__qualname__ = read.__name__ = f"header({name!r})"
    return read


def path_segment(index: int) -> Callable[[Scope], Optional[str]]:
    """A key/tier function returning segment ``index`` of the request path (0-based,
    ignoring the leading '/'; negative counts from the end), or None if absent/empty.

    ``path_segment(2)`` on ``/v1/models/llama-3/chat`` is ``"llama-3"``."""

    def read(scope: Scope) -> Optional[str]:
        return _segment(scope.get("path") or "", index)

    read.__qualname__ = read.__name__ = f"path_segment({index})"
    return read



def path_regex(pattern: Union[str, "re.Pattern[str]"], group: Union[int, str] = 1) -> Callable[[Scope], Optional[str]]:
    """A key/tier function returning ``group`` of ``pattern`` searched in the request
    path, or None if it does not match. ``path_regex(r"^/v1/models/([^/]+)")``."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern

    def read(scope: Scope) -> Optional[str]:
        m = rx.search(scope.get("path") or "")
        return (m.group(group) or None) if m else None

    read.__qualname__ = read.__name__ = f"path_regex({rx.pattern!r})"
    return read


def client_host() -> Callable[[Scope], Optional[str]]:
    """A key function returning the peer's address (``scope["client"][0]``). Behind a
    proxy that is the proxy: prefer a header the proxy sets."""

    def read(scope: Scope) -> Optional[str]:
        c = scope.get("client")
        return c[0] if c else None

    return read


def reads_body(fn: F) -> F:
    """Marks a key/tier/cost function (sync or async) as needing the request body:
    the middleware reads it before calling the function, which finds it with
    :func:`request_json` or as bytes in ``scope["sluice.body"]``."""

    @functools.wraps(fn)
    def wrapper(scope: Scope) -> Any:
        return fn(scope)  # an awaitable result is awaited by the middleware

    wrapper.reads_body = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def request_json(scope: Scope) -> Any:
    """The request's JSON body (parsed once per request), or None if it is not valid
    JSON. Only in a :func:`reads_body` function: raises RuntimeError otherwise."""
    body = scope.get("sluice.body")
    if body is None:
        raise RuntimeError("request_json(scope) needs the body: mark the function with sluice.asgi.reads_body")
    return _cached_json(scope, body)


def json_field(*path: str, default: Union[str, int, None] = None) -> Callable[[Scope], Any]:
    """A key/tier/cost function (marked :func:`reads_body`) returning the JSON body's
    field at ``path``: ``json_field("model")``, ``json_field("metadata", "user")``.
    A str or an int (a cost; as a key, its decimal string) is returned as is; a
    missing field or a body that is not a JSON object (no body: ``GET``...) gives
    ``default`` (``json_field("model", default="free")``); a field of another type:
    None."""
    path = _field_path(path, default)

    def read(scope: Scope) -> Any:
        return _json_field(request_json(scope), path, default)

    read.__qualname__ = read.__name__ = f"json_field({', '.join(map(repr, path))})"
    return reads_body(read)


# --- the middleware ------------------------------------------------------------------------

_DISCONNECTED = object()
# Methods whose body, if any, is never read for a key/tier/cost: a global middleware
# would otherwise wait for (and with Expect: 100-continue, invite) an upload there.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


def _declared_length(scope: Scope) -> Optional[int]:
    """The Content-Length header's value, or None (absent, or not a number: the
    server refuses those; the body is read with its bound anyway)."""
    for k, v in scope.get("headers") or ():
        if k.lower() == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, max_bytes: int) -> Any:
    """The whole body; None if it exceeds ``max_bytes`` (reading stops there);
    _DISCONNECTED if the client left first."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _DISCONNECTED
        if message["type"] != "http.request":
            raise RuntimeError(f"unexpected ASGI message {message['type']!r} while reading the request body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real stream
    (for http.disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _resolve(source: Any, scope: Scope) -> Any:
    if not callable(source):
        return source
    value = source(scope)
    if inspect.isawaitable(value):
        value = await value
    return value


class RateLimitMiddleware:
    """Pure ASGI 3 middleware admitting each HTTP request through Sluice.

    :param app: the ASGI app to protect.
    :param key: the rate-limit key (``str``/``bytes``) or ``callable(scope)`` returning
        it (``None`` = no key -> ``missing_key_status``). See :func:`header`,
        :func:`path_segment`, :func:`path_regex`, :func:`client_host`.
    :param tier: the tier name or ``callable(scope)`` returning it.
    :param cost: units to acquire (default 1) or ``callable(scope)`` returning them.
    :param client: a :class:`sluice.Client` to use; default: one per process, opened
        on first use on ``segment``.
    :param segment: segment name when ``client`` is None (None: $SLUICE_SEGMENT or
        'sluice').
    :param on_error: ``"deny"`` (default): a limiter failure answers ``error_status``;
        ``"allow"``: explicit opt-in to let the request through (logged).
    :param missing_key_status: status for a request without key or tier (400).
    :param error_status: status when the limiter fails and ``on_error="deny"`` (503).
    :param exempt: optional ``callable(scope) -> bool`` (may be async); true: pass
        through unlimited, no headers (health checks, metrics).
    :param max_body_bytes: the most body read for :func:`reads_body` functions
        (default 1 MiB); a larger body, or a Content-Length above it, answers 413.
    :param websocket: also limit websocket connections (default False: they pass
        through). Each handshake is one admission, decided before the app sees it;
        body functions see an empty body. Admitted: the app's ``websocket.accept``
        carries the rate-limit headers. Refused: the refusal's status, headers and
        JSON body where the server supports the ``websocket.http.response``
        extension, else a close before accept (code 1008, the reason in its text),
        which the server sends as HTTP 403.
    """

    def __init__(
        self,
        app: ASGIApp,
        key: KeySource,
        tier: TierSource,
        cost: CostSource = 1,
        client: Optional[sluice.Client] = None,
        segment: Optional[str] = None,
        on_error: str = "deny",
        *,
        missing_key_status: int = 400,
        error_status: int = 503,
        exempt: Optional[ExemptSource] = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        websocket: bool = False,
    ) -> None:
        if not isinstance(websocket, bool):
            raise TypeError(f"websocket must be True or False, not {websocket!r}")
        self.app = app
        self.websocket = websocket
        self._limiter = _Limiter(key, tier, cost, client, segment, on_error, missing_key_status,
                                 error_status, exempt)
        self.max_body_bytes = _check_max_body(max_body_bytes)
        self._reads_body = any(getattr(s, "reads_body", False) for s in (key, tier, cost))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.websocket:
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self._limiter
        # Awaited: an async exempt's coroutine is truthy and would exempt everything.
        if lim.exempt is not None and await _resolve(lim.exempt, scope):
            await self.app(scope, receive, send)
            return
        if self._reads_body:
            # Set on the scope we were given, not a copy: a copy would hide from outer
            # middleware the keys the app sets (route, endpoint, user). The name is
            # namespaced, so it cannot clash with a server's or framework's key.
            if scope.get("method") in _BODILESS:
                scope["sluice.body"] = b""  # not read: the app reads the real receive
            else:
                declared = _declared_length(scope)
                if declared is not None and declared > self.max_body_bytes:
                    # Before the first receive(): the server sends no 100 Continue.
                    await _respond(send, 413, _too_large_body(self.max_body_bytes), {})
                    return
                raw = await _read_body(receive, self.max_body_bytes)
                if raw is _DISCONNECTED:
                    return  # no one to answer; the app never saw the request
                if raw is None:
                    await _respond(send, 413, _too_large_body(self.max_body_bytes), {})
                    return
                scope["sluice.body"] = raw
                receive = _replay(raw, receive)
        await self._admit(scope, receive, send, lambda *refusal: _respond(send, *refusal), ("http.response.start",))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        lim = self._limiter
        if lim.exempt is not None and await _resolve(lim.exempt, scope):
            await self.app(scope, receive, send)
            return
        if self._reads_body:
            scope["sluice.body"] = b""  # a handshake has no body
        # The app may accept, or deny the handshake itself with an HTTP response
        # (the websocket.http.response extension): either way it was counted.
        await self._admit(scope, receive, send,
                          lambda *refusal: _refuse_websocket(scope, receive, send, *refusal),
                          ("websocket.accept", "websocket.http.response.start"))

    async def _admit(self, scope: Scope, receive: Receive, send: Send,
                     refuse: Callable[[int, bytes, Mapping[str, str]], Awaitable[None]],
                     start_types: tuple) -> None:
        """Decides; then refuses, or runs the app with the decision's headers added to
        the message of ``start_types`` that starts its answer (the response start,
        or the websocket accept or the app's own HTTP answer to a handshake)."""
        lim = self._limiter
        key = await _resolve(lim.key, scope)
        tier = await _resolve(lim.tier, scope)
        cost = await _resolve(lim.cost, scope)
        status, *rest = lim.decide(key, tier, cost)
        if status is not None:
            await refuse(status, *rest)
            return
        decision = rest[0]
        if decision is None:  # on_error="allow"
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in decision.headers().items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] in start_types:
                message = {**message, "headers": _replace_headers(message.get("headers", ()), extra)}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, status: int, body: bytes,
                            headers: Mapping[str, str]) -> None:
    """Answers a handshake the limiter refused, before any accept."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return  # the client left first: no one to answer
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": _json_headers(body, headers)})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    try:
        text = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        text = "refused by the rate limiter"
    if "Retry-After" in headers:
        text = f"{status}: retry after {headers['Retry-After']} s: {text}"
    else:
        text = f"{status}: {text}"
    # A close frame's reason holds at most 123 bytes of UTF-8.
    reason = text.encode("utf-8")[:123].decode("utf-8", "ignore")
    await send({"type": "websocket.close", "code": 1008, "reason": reason})


def _json_headers(body: bytes, headers: Mapping[str, str]) -> list:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return raw + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def _respond(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _json_headers(body, headers)})
    await send({"type": "http.response.body", "body": body})
