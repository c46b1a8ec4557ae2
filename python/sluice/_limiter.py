"""Admission logic shared by :mod:`sluice.asgi` and :mod:`sluice.wsgi`: argument
checks, one client per process, the decision to admit / refuse / fail closed, the
JSON bodies of refusals, JSON body fields and header replacement. The middlewares
only resolve their callables and move the request body."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Optional

import sluice
from sluice.errors import (
    CostAboveCapacityError,
    CostZeroError,
    EmptyKeyError,
    KeyTooLongError,
    SluiceError,
    TableFullError,
    UnknownTierError,
)

log = logging.getLogger("sluice")

_MAX_COST = 2**32 - 1
MAX_BODY_BYTES = 1 << 20  # default max_body_bytes: the most read to find a key/tier/cost in a body
_TIER_SHOWN = 64  # characters of a request-chosen unknown tier quoted back
# Errors caused by the request's own key or cost: refused with 400 whatever on_error says.
_REQUEST_ERRORS = (EmptyKeyError, KeyTooLongError, CostZeroError, CostAboveCapacityError)


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


def _check_max_body(max_body_bytes: Any) -> int:
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be an int >= 0, not {max_body_bytes!r}")
    return max_body_bytes


def _field_path(path: tuple, default: Any = None) -> tuple:
    if not path or not all(isinstance(p, str) for p in path):
        raise TypeError(f"json_field needs one or more str field names, not {path!r}")
    if default is not None and not (isinstance(default, str) or _is_int(default)):
        raise TypeError(f"json_field's default must be a str, an int or None, not {default!r}")
    return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _utf8(value: str) -> bool:
    # A lone surrogate ("\ud800", valid in JSON and in Python str) has no UTF-8 form;
    # the limiter's encode would raise (a 500) instead of refusing the request.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_json(body: bytes) -> Any:
    """The body's JSON value, or None if it is not JSON (any bad input: bad UTF-8,
    bad syntax, too deep, a number too long to convert)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _cached_json(store: Any, body: bytes) -> Any:
    # One parse per request even when key, tier and cost all read the body.
    if "sluice.json" not in store:
        store["sluice.json"] = _parse_json(body)
    return store["sluice.json"]


def _json_field(value: Any, path: tuple, default: Any = None) -> Any:
    """``value[path[0]][path[1]]...`` if every step is an object holding the field and
    the result is a str or an int (not a bool, so it can serve as a cost); ``default``
    if a step is not an object or lacks the field (no body, not JSON); else None (a
    field the client did send, of a type no key/tier/cost can be)."""
    for name in path:
        if not isinstance(value, dict) or name not in value:
            return default
        value = value[name]
    if isinstance(value, str) or _is_int(value):
        return value
    return None


def _replace_headers(headers: Any, extra: list) -> list:
    """``headers`` without those named like one of ``extra`` (case-insensitive), then
    ``extra``: the decision's rate-limit headers replace any the app set. Works on
    ASGI's (bytes, bytes) and WSGI's (str, str) pairs alike."""
    names = {k.lower() for k, _ in extra}
    return [(k, v) for k, v in headers if k.lower() not in names] + extra


def _valid_cost(cost: Any) -> bool:
    return isinstance(cost, int) and not isinstance(cost, bool) and 0 < cost <= _MAX_COST


def _error_body(message: str, type_: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, **extra}}).encode()


def _denied_body(d: Any, cost: int) -> bytes:
    # Only window_full clears by waiting; the other two need the limit changed.
    if d.reason == "cost_above_limit":
        code = d.reason
        message = (f"This request's cost ({cost}) is above the whole limit of tier '{d.tier}' "
                   f"({d.limit} per {d.window:g}s): it cannot be admitted until the limit is raised.")
    elif d.reason == "tier_closed":
        code = d.reason
        message = f"Tier '{d.tier}' is closed (its limit is 0): no request is admitted until it is reopened."
    else:
        code = "rate_limit_exceeded"
        message = (
            f"Rate limit reached for tier '{d.tier}': limit {d.limit} per {d.window:g}s, "
            f"remaining {d.remaining}, requested {cost}. Please try again in {d.retry_after:.3f}s."
        )
    return _error_body(message, "rate_limit_exceeded", code=code, tier=d.tier,
                       retry_after=round(d.retry_after, 3), limit=d.limit, remaining=d.remaining,
                       reason=d.reason)


def _missing_body(what: str) -> bytes:
    return _error_body(f"This request carries no rate-limit {what}; it cannot be admitted.",
                       "missing_rate_limit_key", param=what)


def _invalid_body(message: str, code: str = "invalid_rate_limit_key_or_cost", **extra: Any) -> bytes:
    return _error_body(message, "invalid_request_error", code=code, **extra)


def _too_large_body(max_bytes: int) -> bytes:
    return _invalid_body(f"The request body is larger than {max_bytes} bytes, the most read to find its "
                         "rate-limit key, tier or cost.", code="request_too_large")


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
        for name, value in (("key", key), ("tier", tier)):
            if isinstance(value, str) and not _utf8(value):
                raise ValueError(f"{name} must be encodable as UTF-8, not {value!r}")
        self.key, self.tier, self.cost = key, tier, cost
        # A tier the request chose (a callable) that does not exist is the request's
        # fault; a constant one is a configuration error.
        self.tier_from_request = callable(tier)
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
        if _is_int(key):  # json_field gives a JSON number as an int: 123 is the key "123"
            try:
                key = str(key)
            except ValueError:  # more digits than Python converts
                return 400, _invalid_body("The request's rate-limit key is a number too long to be a key.",
                                          param="key"), {}
        if key is None or key == "" or key == b"":
            return self.missing_key_status, _missing_body("key"), {}
        if tier is None or tier == "":
            return self.missing_key_status, _missing_body("tier"), {}
        # A callable may hand back a client's value (json_field gives str or int):
        # a wrong type is refused like a bad value, not left to raise a 500. An int
        # key was made a str above; a tier must be a str.
        if not isinstance(key, (str, bytes, bytearray, memoryview)):
            return 400, _invalid_body(f"The request's rate-limit key must be a string or an integer, "
                                      f"not {type(key).__name__}.", param="key"), {}
        if not isinstance(tier, str):
            return 400, _invalid_body(f"The request's rate-limit tier must be a string, not {type(tier).__name__}.",
                                      code="unknown_rate_limit_tier", param="tier"), {}
        for name, value in (("key", key), ("tier", tier)):
            if isinstance(value, str) and not _utf8(value):
                return 400, _invalid_body(f"The request's rate-limit {name} is not valid Unicode text "
                                          "(a lone surrogate): it cannot be encoded as UTF-8.", param=name), {}
        if not _valid_cost(cost):
            return 400, _invalid_body(f"The request's cost must be a positive integer, not {cost!r}."), {}
        try:
            d = self.get_client().acquire(key, tier, cost)
        except _REQUEST_ERRORS as e:
            return 400, _invalid_body(f"The request cannot be rate-limited: {e.message}"), {}
        except UnknownTierError as e:
            if not self.tier_from_request:
                return self._failed(e)
            shown = tier if len(tier) <= _TIER_SHOWN else tier[:_TIER_SHOWN] + "..."
            return 400, _invalid_body(f"The request names rate-limit tier {shown!r}, which does not exist.",
                                      code="unknown_rate_limit_tier", param="tier"), {}
        except TableFullError as e:
            # Refused even with on_error="allow": anyone can fill the table with made-up
            # keys, and under "allow" every new key would then pass uncounted.
            return self._failed(e, allow=False)
        except SluiceError as e:
            return self._failed(e)
        if d.allowed:
            return None, d
        return 429, _denied_body(d, cost), d.headers()

    def _failed(self, e: SluiceError, allow: Optional[bool] = None) -> tuple:
        if self.allow_on_error if allow is None else allow:
            self._log(logging.WARNING, "sluice: rate limiter error, request ALLOWED (on_error='allow'): %s: %s",
                      type(e).__name__, e.message)
            return None, None
        self._log(logging.ERROR, "sluice: rate limiter error, request refused with %d: %s: %s",
                  self.error_status, type(e).__name__, e.message)
        # A 503 says when to come back (RFC 9110 10.2.3); the outage's end is unknown.
        return self.error_status, _unavailable_body(e), {"Retry-After": "1"} if self.error_status == 503 else {}



def _segment(path: str, index: int) -> Optional[str]:
    parts = path.strip("/").split("/")
    try:
        return parts[index] or None
    except IndexError:
        return None
