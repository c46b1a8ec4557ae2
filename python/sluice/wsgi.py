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
available to the callable).

From the JSON body: ``tier=json_field("model")`` (or :func:`request_body` in your own
function) reads the body once, at most its ``max_body_bytes`` (default 1 MiB; a
chunked body too), and puts it back, so the app or view still reads it
(``request.get_json()`` works). A function that gets no value because the body is
larger answers ``413``, a body shorter than its ``CONTENT_LENGTH`` ``400``, and the
app does not run. ``GET``, ``HEAD`` and ``OPTIONS`` bodies are not read (empty). A
field that is not a str or int, or (without ``default=``) a missing field or a body
that is not JSON, counts as no key/tier or a bad cost; so a body-based tier needs a
``default`` (``json_field("model", default="free")``) or an ``exempt`` for routes
without a body. An int key counts as its decimal string; a key or tier that is not
valid Unicode (a lone surrogate) is a ``400``. ``exempt``, ``key``, ``tier`` and
``cost`` must not be async here (TypeError when the middleware or decorator is made).

The responses are those of :mod:`sluice.asgi`:

* admitted: the app runs; ``RateLimit-*`` and ``x-ratelimit-*`` headers are added to
  its response (replacing any of the same names the app set);
* denied: ``429 Too Many Requests`` with the decision's headers (``Retry-After`` in
  whole seconds) and ``{"error": {"message", "type": "rate_limit_exceeded", "tier",
  "retry_after", ...}}``;
* no key/tier: ``missing_key_status`` (400), ``"type": "missing_rate_limit_key"``;
* a key or cost the limiter can never accept, or a tier chosen by a callable that
  does not exist: 400 ``invalid_request_error`` (even with ``on_error="allow"``);
* a limiter failure (is ``sluiced`` running?): ``error_status`` (503, with
  ``Retry-After: 1``) by default -- fail closed; ``on_error="allow"`` is the
  explicit, logged opt-in to let it through;
* a full key table: ``error_status`` even with ``on_error="allow"`` (anyone can fill
  it with made-up keys; see :mod:`sluice.asgi`).

The :class:`sluice.Client` is opened on the first request in each process (gunicorn
forks its workers after loading the app with ``--preload``) unless ``client`` is given.
"""

from __future__ import annotations

import functools
import inspect
import io
import re
from http import HTTPStatus
from typing import Any, Callable, Iterable, Optional, TypeVar, Union

import sluice
from sluice._limiter import (
    MAX_BODY_BYTES,
    _cached_json,
    _check_max_body,
    _field_path,
    _invalid_body,
    _json_field,
    _Limiter,
    _replace_headers,
    _segment,
    _too_large_body,
)

__all__ = ["RateLimitMiddleware", "limit", "header", "path_segment", "path_regex", "client_host",
           "json_field", "request_body"]

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


def _is_async(fn: Any) -> bool:
    # inspect unwraps functools.partial and bound methods; a callable object is
    # async if its __call__ is.
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
               for f in (fn, getattr(fn, "__call__", None)) if f is not None)


def _check_sync(**sources: Any) -> None:
    # Nothing awaits here: an async exempt's coroutine is truthy (every request exempt,
    # or a 500 each), an async key/tier/cost is never a valid value. Refused up front.
    for name, fn in sources.items():
        if callable(fn) and _is_async(fn):
            raise TypeError(f"{name} must be a plain function under WSGI, not async: {fn!r}")


def _exempt(exempt: Callable[[Environ], Any], environ: Environ) -> bool:
    result = exempt(environ)
    if inspect.isawaitable(result):  # backstop for what _check_sync cannot see
        getattr(result, "close", lambda: None)()
        raise TypeError("exempt must be a plain function under WSGI, not async")
    return bool(result)


def _decide(lim: _Limiter, environ: Environ) -> tuple:
    values = []
    for source in (lim.key, lim.tier, lim.cost):
        # The 413 belongs to the function whose read failed, and only if it then had no
        # value: one that read a small bound and fell back to a larger one (or to a
        # header) is not refused for that first read.
        environ.pop("sluice.body_over", None)
        value = _resolve(source, environ)
        over = environ.pop("sluice.body_over", None)
        if environ.get("sluice.body_incomplete"):
            return 400, _invalid_body("The request body ended before its Content-Length.",
                                      code="incomplete_body"), {}
        if over is not None and (value is None or value == ""):
            return 413, _too_large_body(over), {}
        values.append(value)
    return lim.decide(*values)


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


# --- the request body ----------------------------------------------------------------------

class _PutBack:
    """wsgi.input with ``head`` (already read) in front of the rest of ``stream``."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head = io.BytesIO(head)
        self._stream = stream

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            return self._head.read() + self._stream.read()
        data = self._head.read(size)
        return data + self._stream.read(size - len(data)) if len(data) < size else data

    def readline(self, size: Optional[int] = -1) -> bytes:
        line = self._head.readline(-1 if size is None else size)
        if line.endswith(b"\n") or (size is not None and 0 <= size <= len(line)):
            return line
        return line + self._stream.readline(*(() if size is None or size < 0 else (size - len(line),)))

    def readlines(self, hint: int = -1) -> list:
        return list(self)

    def __iter__(self) -> Iterable[bytes]:
        return iter(self.readline, b"")


def _read_up_to(stream: Any, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(min(n - got, 65536))
        if not chunk:
            break  # the client sent less than it announced
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _take_body(environ: Environ, max_bytes: int) -> Optional[bytes]:
    req = environ.get("werkzeug.request")
    if req is not None:  # inside a Flask view: werkzeug's cache keeps it for the view
        n = req.content_length
        if n is not None and n > max_bytes:
            return None
        if n is None and getattr(req, "_cached_data", None) is None:
            # Chunked: get_data() would read the whole stream before any size check.
            stream = req.stream
            data = _read_up_to(stream, max_bytes + 1)
            # werkzeug recomputes these from the environ on next use (the view's
            # get_json(), or a later read with a larger bound).
            req.__dict__.pop("stream", None)
            req.__dict__.pop("content_length", None)
            if len(data) > max_bytes:
                environ["wsgi.input"] = _PutBack(data, stream)
                return None
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
            return data
        data = req.get_data(cache=True)
        # Also for a request object made later from environ (werkzeug's test client
        # sets its own werkzeug.request before Flask makes the view's).
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        return data if len(data) <= max_bytes else None
    stream = environ.get("wsgi.input")
    try:
        n: Optional[int] = max(0, int(environ.get("CONTENT_LENGTH") or ""))
    except ValueError:
        n = None  # absent or not a number: no length (werkzeug reads it so too)
    if stream is None:
        return b""
    if n is not None:
        if n > max_bytes:
            return None  # not read at all: the app keeps its body
        data = _read_up_to(stream, n)
        if len(data) < n:  # the client left mid-body: decide nothing on a part of it
            environ["sluice.body_incomplete"] = True
            environ["wsgi.input"] = io.BytesIO(data)
            return None
    elif environ.get("wsgi.input_terminated"):
        data = _read_up_to(stream, max_bytes + 1)
        if len(data) > max_bytes:
            environ["wsgi.input"] = _PutBack(data, stream)
            return None
    else:
        return b""  # PEP 3333: no CONTENT_LENGTH, no body
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    return data


_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})  # bodies never read for a key/tier/cost


def request_body(environ: Environ, max_bytes: int = MAX_BODY_BYTES) -> Optional[bytes]:
    """The request body, read once and put back for the app (cached in
    ``environ["sluice.body"]``); ``b""`` for ``GET``, ``HEAD`` and ``OPTIONS`` (not
    read); None if it is larger than ``max_bytes`` -- then, if the key/tier/cost
    function that asked ends up with no value, the middleware or :func:`limit`
    answers 413 and the app does not run -- or shorter than its ``CONTENT_LENGTH``
    (the client left): 400.

    Inside a Flask view it goes through ``request.get_data(cache=True)`` (a chunked
    body: at most ``max_bytes + 1`` read from ``request.stream``); otherwise it reads
    ``CONTENT_LENGTH`` bytes (a larger announced body is not read at all) or, without
    one, a ``wsgi.input_terminated`` stream, and replaces ``wsgi.input``."""
    max_bytes = _check_max_body(max_bytes)
    if environ.get("REQUEST_METHOD") in _BODILESS:
        return b""
    if environ.get("sluice.body_incomplete"):
        return None
    body = environ.get("sluice.body")
    known_over = environ.get("sluice.body_larger_than", -1)  # a fact: not re-read for it
    if body is None and max_bytes > known_over:
        body = _take_body(environ, max_bytes)
        if environ.get("sluice.body_incomplete"):
            return None
        if body is not None:
            environ["sluice.body"] = body
        else:
            environ["sluice.body_larger_than"] = max_bytes
    if body is None or len(body) > max_bytes:
        # For _decide: this call's bound, for the key/tier/cost function that made it.
        environ["sluice.body_over"] = max(max_bytes, environ.get("sluice.body_over", -1))
        return None
    return body


def json_field(*path: str, max_body_bytes: int = MAX_BODY_BYTES,
               default: Union[str, int, None] = None) -> Callable[[Environ], Any]:
    """A key/tier/cost function returning the JSON body's field at ``path``
    (``json_field("model")``, ``json_field("metadata", "user")``): a str or an int
    (a cost; as a key, its decimal string) as is; a missing field or a body that is
    not a JSON object (no body: ``GET``...) gives ``default``
    (``json_field("model", default="free")``); a field of another type, or a body
    too large or cut short: None. The body is read with :func:`request_body`."""
    path = _field_path(path, default)
    _check_max_body(max_body_bytes)

    def read(environ: Environ) -> Any:
        body = request_body(environ, max_body_bytes)
        # Too large / cut short: None, never the default (the 413/400 must stand).
        return None if body is None else _json_field(_cached_json(environ, body), path, default)

    read.__qualname__ = read.__name__ = f"json_field({', '.join(map(repr, path))})"
    return read


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
        _check_sync(key=key, tier=tier, cost=cost, exempt=exempt)
        self.app = app
        self._limiter = _Limiter(key, tier, cost, client, segment, on_error, missing_key_status,
                                 error_status, exempt)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        lim = self._limiter
        if lim.exempt is not None and _exempt(lim.exempt, environ):
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
            return start_response(status_line, _replace_headers(headers, extra), exc_info)

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
    _check_sync(key=key, tier=tier, cost=cost)
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
