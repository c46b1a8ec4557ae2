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
import json
import logging
import os
import re
import threading
import time
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, Optional, Union

import sluice
from sluice.errors import (
    CostAboveCapacityError,
    CostZeroError,
    EmptyKeyError,
    KeyTooLongError,
    SluiceError,
)

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

log = logging.getLogger("sluice")

_MAX_COST = 2**32 - 1
# Errors caused by the request's own key or cost: refused with 400 whatever on_error says.
_REQUEST_ERRORS = (EmptyKeyError, KeyTooLongError, CostZeroError, CostAboveCapacityError)


# --- shared by sluice.asgi and sluice.wsgi -------------------------------------------------

_clients: dict[Optional[str], sluice.Client] = {}
_clients_lock = threading.Lock()


def _forget_clients_after_fork() -> None:
    # The child re-opens its own handle on first use (the inherited one would work too,
    # but each process owning its handle keeps close() and reference counts simple).
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def _shared_client(segment: Optional[str]) -> sluice.Client:
    """This process's client for ``segment`` (None: $SLUICE_SEGMENT or 'sluice'),
    opened on first use. A failed open is not cached: the next request retries."""
    c = _clients.get(segment)
    if c is not None:
        return c
    with _clients_lock:
        c = _clients.get(segment)
        if c is None:
            c = sluice.Client(segment)
            _clients[segment] = c
        return c


class _Throttled:
    """Logs at most once per ``every`` seconds, counting what it held back."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.last = -1e18
        self.held = 0

    def __call__(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.held += 1
            return
        held, self.held, self.last = self.held, 0, now
        if held:
            msg += " (%d similar messages suppressed)"
            args = (*args, held)
        log.log(level, msg, *args)


def _check_options(on_error: str, missing_key_status: int, error_status: int) -> None:
    if on_error not in ("deny", "allow"):
        raise ValueError(f"on_error must be 'deny' or 'allow', not {on_error!r}")
    for name, status in (("missing_key_status", missing_key_status), ("error_status", error_status)):
        if not (isinstance(status, int) and 400 <= status <= 599):
            raise ValueError(f"{name} must be an HTTP error status (400..599), not {status!r}")


def _valid_cost(cost: Any) -> bool:
    return isinstance(cost, int) and not isinstance(cost, bool) and 0 < cost <= _MAX_COST


def _error_body(message: str, type_: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, **extra}}).encode()


def _denied_body(d: Any, cost: int) -> bytes:
    message = (
        f"Rate limit reached for tier '{d.tier}': limit {d.limit} per {d.window:g}s, "
        f"remaining {d.remaining}, requested {cost}. Please try again in {d.retry_after:.3f}s."
    )
    return _error_body(message, "rate_limit_exceeded", code="rate_limit_exceeded", tier=d.tier,
                       retry_after=round(d.retry_after, 3), limit=d.limit, remaining=d.remaining,
                       reason=d.reason)


def _missing_body(what: str) -> bytes:
    return _error_body(f"This request carries no rate-limit {what}; it cannot be admitted.",
                       "missing_rate_limit_key", param=what)


def _invalid_body(message: str) -> bytes:
    return _error_body(message, "invalid_request_error", code="invalid_rate_limit_key_or_cost")


def _unavailable_body(err: SluiceError) -> bytes:
    return _error_body(f"The rate limiter is unavailable: {err.message}", "rate_limiter_unavailable",
                       code=type(err).__name__, status_code=err.code)


class _Limiter:
    """The admission logic shared by sluice.asgi and sluice.wsgi (the callables receive
    an ASGI scope or a WSGI environ; resolving them is the middleware's job)."""

    def __init__(self, key: Any, tier: Any, cost: Any, client: Optional[sluice.Client],
                 segment: Optional[str], on_error: str, missing_key_status: int, error_status: int,
                 exempt: Optional[Callable[[Any], bool]]) -> None:
        _check_options(on_error, missing_key_status, error_status)
        if not callable(cost) and not _valid_cost(cost):
            raise ValueError(f"cost must be a positive integer below 2**32 or a callable, not {cost!r}")
        if not callable(tier) and not (isinstance(tier, str) and tier):
            raise TypeError(f"tier must be a non-empty str or a callable, not {tier!r}")
        if not callable(key) and not (isinstance(key, (str, bytes)) and key):
            raise TypeError(f"key must be a non-empty str/bytes or a callable, not {key!r}")
        self.key, self.tier, self.cost = key, tier, cost
        self.client = client
        self.segment = segment
        self.allow_on_error = on_error == "allow"
        self.missing_key_status = missing_key_status
        self.error_status = error_status
        self.exempt = exempt
        self._log = _Throttled()

    def get_client(self) -> sluice.Client:
        return self.client if self.client is not None else _shared_client(self.segment)

    def decide(self, key: Any, tier: Any, cost: Any) -> tuple:
        """One admission check. Returns ``(None, decision)``: admit and add the decision's
        headers; ``(None, None)``: admit without headers (a limiter error under
        on_error="allow"); ``(status, body, headers)``: answer now, the app does not run."""
        if key is None or key == "" or key == b"":
            return self.missing_key_status, _missing_body("key"), {}
        if tier is None or tier == "":
            return self.missing_key_status, _missing_body("tier"), {}
        if not _valid_cost(cost):
            return 400, _invalid_body(f"The request's cost must be a positive integer, not {cost!r}."), {}
        try:
            d = self.get_client().acquire(key, tier, cost)
        except _REQUEST_ERRORS as e:
            return 400, _invalid_body(f"The request cannot be rate-limited: {e.message}"), {}
        except SluiceError as e:
            if self.allow_on_error:
                self._log(logging.WARNING, "sluice: rate limiter error, request ALLOWED (on_error='allow'): %s: %s",
                          type(e).__name__, e.message)
                return None, None
            self._log(logging.ERROR, "sluice: rate limiter error, request refused with %d: %s: %s",
                      self.error_status, type(e).__name__, e.message)
            return self.error_status, _unavailable_body(e), {}
        if d.allowed:
            return None, d
        return 429, _denied_body(d, cost), d.headers()


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


def _segment(path: str, index: int) -> Optional[str]:
    parts = path.strip("/").split("/")
    try:
        return parts[index] or None
    except IndexError:
        return None


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
