"""ASGI middleware (Starlette, FastAPI, any ASGI 3 app): one host-wide limit per key.

    from fastapi import FastAPI
    from sluice.asgi import RateLimitMiddleware, header, path_regex

    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, key=header("x-api-key"), tier="pro")
    # or: app = RateLimitMiddleware(app, key=..., tier=lambda scope: ..., cost=...)

``key``, ``tier`` and ``cost`` are each either a constant or a callable that receives
the ASGI ``scope`` (a dict: ``scope["path"]``, ``scope["headers"]`` as lowercase
``(bytes, bytes)`` pairs, ``scope["client"]``...) and returns the value; a callable
may also be ``async`` (its result is awaited). Routing has not run yet in a
middleware, so read path parameters from ``scope["path"]`` (:func:`path_segment`,
:func:`path_regex`), not from ``scope["path_params"]``.

What a request gets:

* admitted: the app runs; ``RateLimit-*`` and ``x-ratelimit-*`` headers are appended
  to its response;
* denied: ``429`` with the decision's headers (``Retry-After`` in whole seconds) and an
  OpenAI-style body ``{"error": {"message", "type": "rate_limit_exceeded", "tier",
  "retry_after", ...}}``; the app does not run;
* no key (the key callable returned ``None`` or an empty value) or no tier:
  ``missing_key_status`` (400) with ``"type": "missing_rate_limit_key"``;
* a key or cost the limiter can never accept (key longer than the segment's
  ``max_key_bytes``, cost 0, negative, or above the tier's capacity): ``400`` with
  ``"type": "invalid_request_error"``. This is the request's fault, so it is refused
  even with ``on_error="allow"`` (otherwise an over-long API key would bypass the
  limit);
* the limiter itself fails (no segment: is ``sluiced`` running? unknown tier, full
  key table, ...): by default ``error_status`` (503) with ``"type":
  "rate_limiter_unavailable"`` -- fail closed, never a silent allow.
  ``on_error="allow"`` is the explicit opt-in to let such requests through (each
  failure is logged as a warning on the ``sluice`` logger, at most once a second).

Exceptions raised by your own key/tier/cost callables are not caught (the server
answers 500). Scopes other than ``http`` (``lifespan``, ``websocket``) pass through
untouched, and so do requests for which ``exempt(scope)`` is true.

The :class:`sluice.Client` is opened on the first request of each process (workers
that fork or spawn each open their own) unless ``client`` is given; all middlewares
of a process share one client per segment.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional, Union

import sluice
from sluice._limiter import _Limiter, _segment

__all__ = [
    "RateLimitMiddleware",
    "header",
    "path_segment",
    "path_regex",
    "client_host",
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


# --- the middleware ------------------------------------------------------------------------

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
    :param exempt: optional ``callable(scope) -> bool``; true: pass through unlimited,
        no headers (health checks, metrics).
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
        exempt: Optional[Callable[[Scope], bool]] = None,
    ) -> None:
        self.app = app
        self._limiter = _Limiter(key, tier, cost, client, segment, on_error, missing_key_status,
                                 error_status, exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lim = self._limiter
        if lim.exempt is not None and lim.exempt(scope):
            await self.app(scope, receive, send)
            return
        key = await _resolve(lim.key, scope)
        tier = await _resolve(lim.tier, scope)
        cost = await _resolve(lim.cost, scope)
        status, *rest = lim.decide(key, tier, cost)
        if status is not None:
            body, headers = rest
            await _respond(send, status, body, headers)
            return
        decision = rest[0]
        if decision is None:  # on_error="allow"
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in decision.headers().items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _respond(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
