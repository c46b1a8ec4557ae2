"""WSGI middleware and a Flask decorator: one host-wide limit per key.

    from sluice.wsgi import RateLimitMiddleware, header

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, key=header("x-api-key"), tier="pro")

    # or per view, in Flask:
    from sluice.wsgi import limit

    @app.post("/v1/chat/completions")
    @limit(key=header("authorization", prefix="Bearer "), tier="pro")
    def chat(): ...

``key``, ``tier`` and ``cost`` are each a constant or a callable receiving the WSGI
``environ`` (in :func:`limit` too, so the same helpers work there; inside a Flask
view, ``flask.request`` -- including ``flask.request.view_args`` -- is also
available to the callable). The responses are those of :mod:`sluice.asgi`:

* admitted: the app runs; ``RateLimit-*`` and ``x-ratelimit-*`` headers are added to
  its response;
* denied: ``429 Too Many Requests`` with the decision's headers (``Retry-After`` in
  whole seconds) and ``{"error": {"message", "type": "rate_limit_exceeded", "tier",
  "retry_after", ...}}``;
* no key/tier: ``missing_key_status`` (400), ``"type": "missing_rate_limit_key"``;
* a key or cost the limiter can never accept: 400 ``invalid_request_error`` (even
  with ``on_error="allow"``);
* a limiter failure (is ``sluiced`` running?): ``error_status`` (503) by default --
  fail closed; ``on_error="allow"`` is the explicit, logged opt-in to let it through.

The :class:`sluice.Client` is opened on the first request in each process (gunicorn
forks its workers after loading the app with ``--preload``) unless ``client`` is given.
"""

from __future__ import annotations

import functools
import inspect
import re
from http import HTTPStatus
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

import sluice
from sluice._limiter import _Limiter, _segment

__all__ = ["RateLimitMiddleware", "limit", "header", "path_segment", "path_regex", "client_host"]

Environ = dict
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
KeyLike = Union[str, bytes]
KeySource = Union[KeyLike, Callable[[Environ], Optional[KeyLike]]]
TierSource = Union[str, Callable[[Environ], Optional[str]]]
CostSource = Union[int, Callable[[Environ], int]]
F = TypeVar("F", bound=Callable[..., Any])


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _resolve(source: Any, environ: Environ) -> Any:
    return source(environ) if callable(source) else source


def _decide(lim: _Limiter, environ: Environ) -> tuple:
    return lim.decide(_resolve(lim.key, environ), _resolve(lim.tier, environ), _resolve(lim.cost, environ))


# --- helpers for key/tier callables --------------------------------------------------------

def header(name: str, *, prefix: Optional[str] = None) -> Callable[[Environ], Optional[str]]:
    """A key/tier function returning request header ``name`` (case-insensitive) or None.
    With ``prefix`` (e.g. ``"Bearer "``, case-insensitive) the value must start with it
    and the rest is returned. Same key as :func:`sluice.asgi.header` for one header."""
    upper = name.upper().replace("-", "_")
    var = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
    plen = len(prefix) if prefix else 0
    lprefix = prefix.lower() if prefix else None

    def read(environ: Environ) -> Optional[str]:
        value = environ.get(var)
        if value is None or lprefix is None:
            return value
        if value[:plen].lower() == lprefix:
            return value[plen:].strip() or None
        return None

    read.__qualname__ = read.__name__ = f"header({name!r})"
    return read


def _path(environ: Environ) -> str:
    # PEP 3333 gives PATH_INFO as latin-1-decoded bytes; ASGI gives UTF-8 text.
    p = environ.get("PATH_INFO") or ""
    try:
        return p.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return p


def path_segment(index: int) -> Callable[[Environ], Optional[str]]:
    """A key/tier function returning segment ``index`` of ``PATH_INFO`` (0-based, ignoring
    the leading '/'; negative counts from the end), or None if absent or empty."""

    def read(environ: Environ) -> Optional[str]:
        return _segment(_path(environ), index)

    read.__qualname__ = read.__name__ = f"path_segment({index})"
    return read


def path_regex(pattern: Union[str, "re.Pattern[str]"], group: Union[int, str] = 1) -> Callable[[Environ], Optional[str]]:
    """A key/tier function returning ``group`` of ``pattern`` searched in ``PATH_INFO``,
    or None if it does not match."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern

    def read(environ: Environ) -> Optional[str]:
        m = rx.search(_path(environ))
        return (m.group(group) or None) if m else None

    read.__qualname__ = read.__name__ = f"path_regex({rx.pattern!r})"
    return read


def client_host() -> Callable[[Environ], Optional[str]]:
    """A key function returning ``REMOTE_ADDR`` (behind a proxy: the proxy's address)."""
    return lambda environ: environ.get("REMOTE_ADDR") or None


# --- the middleware ------------------------------------------------------------------------

class RateLimitMiddleware:
    """WSGI middleware admitting each request through Sluice.

    Same parameters as :class:`sluice.asgi.RateLimitMiddleware`, with callables of the
    WSGI ``environ``: ``key``, ``tier``, ``cost`` (constant or ``callable(environ)``),
    ``client`` (default: one per process on ``segment``), ``on_error`` (``"deny"`` or
    the opt-in ``"allow"``), ``missing_key_status`` (400), ``error_status`` (503) and
    ``exempt`` (``callable(environ) -> bool``: pass through unlimited).
    """

    def __init__(
        self,
        app: WSGIApp,
        key: KeySource,
        tier: TierSource,
        cost: CostSource = 1,
        client: Optional[sluice.Client] = None,
        segment: Optional[str] = None,
        on_error: str = "deny",
        *,
        missing_key_status: int = 400,
        error_status: int = 503,
        exempt: Optional[Callable[[Environ], bool]] = None,
    ) -> None:
        self.app = app
        self._limiter = _Limiter(key, tier, cost, client, segment, on_error, missing_key_status,
                                 error_status, exempt)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        lim = self._limiter
        if lim.exempt is not None and lim.exempt(environ):
            return self.app(environ, start_response)
        status, *rest = _decide(lim, environ)
        if status is not None:
            body, headers = rest
            start_response(_status_line(status), [("Content-Type", "application/json"),
                                                  ("Content-Length", str(len(body))), *headers.items()])
            return [body]
        decision = rest[0]
        if decision is None:  # on_error="allow"
            return self.app(environ, start_response)
        extra = list(decision.headers().items())

        def start_with_headers(status_line: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status_line, [*headers, *extra], exc_info)

        return self.app(environ, start_with_headers)


# --- Flask ---------------------------------------------------------------------------------

def limit(
    key: KeySource,
    tier: TierSource,
    cost: CostSource = 1,
    client: Optional[sluice.Client] = None,
    segment: Optional[str] = None,
    on_error: str = "deny",
    *,
    missing_key_status: int = 400,
    error_status: int = 503,
) -> Callable[[F], F]:
    """Flask view decorator: admit each call of the view through Sluice.

    The callables receive ``flask.request.environ``. A refused request gets a JSON
    :class:`flask.Response` (429 with ``Retry-After`` and ``RateLimit-*`` headers, 400
    or 503 as for the middleware) and the view does not run; an admitted one gets the
    view's response (through ``flask.make_response``) with the rate-limit headers set.
    ``async def`` views are supported. Raises RuntimeError if Flask is not installed.
    """
    try:
        import flask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("sluice.wsgi.limit needs Flask; use sluice.wsgi.RateLimitMiddleware "
                           "for other WSGI frameworks") from e
    lim = _Limiter(key, tier, cost, client, segment, on_error, missing_key_status, error_status, None)

    def refuse(status: int, body: bytes, headers: dict) -> Any:
        return flask.Response(body, status=status, headers=headers, mimetype="application/json")

    def finish(rv: Any, decision: Any) -> Any:
        resp = flask.make_response(rv)
        if decision is not None:
            for k, v in decision.headers().items():
                resp.headers[k] = v
        return resp

    def decorate(view: F) -> F:
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                status, *rest = _decide(lim, flask.request.environ)
                if status is not None:
                    return refuse(status, *rest)
                return finish(await view(*args, **kwargs), rest[0])

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            status, *rest = _decide(lim, flask.request.environ)
            if status is not None:
                return refuse(status, *rest)
            return finish(view(*args, **kwargs), rest[0])

        return wrapper  # type: ignore[return-value]

    return decorate
