"""sluice.asgi over a real sluiced: the middleware driven directly (allow, deny,
headers, missing key, bad key/cost, limiter errors failing closed, the opt-in allow,
lifespan/websocket passthrough, per-process clients), then a FastAPI app under
`uvicorn --workers 4` whose workers must share one exact limit."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

import sluice
import sluice._limiter
import sluice.asgi
from apps.server import PRO_LIMIT, PYTHON, run_bursts, serve
from sluice.asgi import (
    RateLimitMiddleware,
    client_host,
    header,
    json_field,
    path_regex,
    path_segment,
    reads_body,
    request_json,
)


# --- a tiny ASGI app and a driver --------------------------------------------------------------

class App:
    """Answers 200 'ok' with its own header (in two body chunks); records each call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.calls.append(scope)
        if scope["type"] == "lifespan":
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        await send({"type": "http.response.body", "body": b"k"})


def scope(path="/v1/chat", headers=(), type_="http", client=("10.1.2.3", 5555)):
    return {"type": type_, "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(k.encode(), v.encode()) for k, v in headers],
            "client": client, "server": ("127.0.0.1", 8000)}


def call(mw, sc, chunks=None, disconnect=False, received=None):
    """Runs one request; returns (status, headers as a dict, body, messages sent).

    ``chunks``: the request body as http.request messages (more_body on all but the
    last; on all with ``disconnect``, then http.disconnect); every message handed out
    is appended to ``received``."""
    sent = []
    if chunks is None:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]
    else:
        messages = [{"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]
    received = [] if received is None else received

    async def receive():
        if sc["type"] == "lifespan":
            return {"type": "lifespan.startup"}
        m = messages.pop(0) if messages else {"type": "http.disconnect"}
        received.append(m)
        return m

    async def send(message):
        sent.append(message)

    asyncio.run(mw(sc, receive, send))
    if not sent:
        return None, {}, b"", sent
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start.get("headers", ())}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start.get("status"), headers, body, sent


KEY = [("x-api-key", "cust-1")]


class EchoApp:
    """Reads the whole body as an app does, answers it back, then asks receive once
    more (the server's http.disconnect); records bodies, scopes and that last message."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.scopes: list[dict] = []
        self.after: list[dict] = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            m = await receive()
            assert m["type"] == "http.request", m
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.bodies.append(body)
        self.scopes.append(scope)
        self.after.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


def json_body(obj) -> bytes:
    return json.dumps(obj).encode()


# --- allow / deny / headers ----------------------------------------------------------------------

def test_allowed_requests_pass_with_headers_then_429(client):
    app = App()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="pro", client=client)
    for remaining in (4, 3, 2, 1, 0):
        status, h, body, sent = call(mw, scope(headers=KEY))
        assert (status, body) == (200, b"ok")
        assert h["x-app"] == "1" and h["content-type"] == "text/plain", "the app's headers are kept"
        assert h["ratelimit-limit"] == "5" and h["ratelimit-remaining"] == str(remaining)
        assert h["x-ratelimit-limit-requests"] == "5" and h["ratelimit-reset"] == "2"
        assert "retry-after" not in h
        assert all(k == k.lower() for k, _ in sent[0]["headers"]), "ASGI header names are lowercase"
    assert len(app.calls) == 5

    status, h, body, _ = call(mw, scope(headers=KEY))
    assert status == 429 and len(app.calls) == 5, "a denied request never reaches the app"
    assert h["content-type"] == "application/json" and int(h["content-length"]) == len(body)
    assert h["retry-after"] == "2" and h["ratelimit-remaining"] == "0" and h["ratelimit-limit"] == "5"
    err = json.loads(body)["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "rate_limit_exceeded"
    assert err["tier"] == "pro" and 1.5 < err["retry_after"] <= 2.0
    assert err["limit"] == 5 and err["remaining"] == 0 and err["reason"] == "window_full"
    assert "pro" in err["message"] and "try again" in err["message"]

    other = call(mw, scope(headers=[("x-api-key", "cust-2")]))
    assert other[0] == 200 and other[1]["ratelimit-remaining"] == "4", "keys are independent"


def test_callable_and_async_key_tier_cost(client):
    async def tier(sc):
        await asyncio.sleep(0)
        return "enterprise"

    mw = RateLimitMiddleware(App(), key=lambda sc: sc["client"][0].encode(), tier=tier,
                             cost=lambda sc: int(header("x-cost")(sc) or 1), client=client)
    assert call(mw, scope(headers=[("x-cost", "7")]))[1]["ratelimit-remaining"] == "13"
    assert call(mw, scope())[1]["ratelimit-remaining"] == "12"
    assert client.peek(b"10.1.2.3", "enterprise").remaining == 11, "bytes key: the client's address (peek: after 1 more)"
    status, h, body, _ = call(mw, scope(headers=[("x-cost", "13")]))
    assert status == 429 and json.loads(body)["error"]["remaining"] == 12, "all or nothing"


def test_constant_key_and_path_helpers(client):
    mw = RateLimitMiddleware(App(), key="global", tier=path_segment(1), client=client)
    assert call(mw, scope(path="/v1/free/x"))[1]["ratelimit-limit"] == "2"
    assert call(mw, scope(path="/v1/pro/x"))[1]["ratelimit-limit"] == "5"

    model = path_regex(r"^/v1/models/(?P<model>[^/]+)", group="model")
    assert model(scope(path="/v1/models/llama-3-70b/chat")) == "llama-3-70b"
    assert model(scope(path="/v2/other")) is None
    assert path_segment(2)(scope(path="/v1/models/m/chat")) == "m"
    assert path_segment(-1)(scope(path="/v1/models/m/chat/")) == "chat"
    assert path_segment(9)(scope(path="/v1")) is None
    assert client_host()(scope()) == "10.1.2.3" and client_host()(scope(client=None)) is None
    bearer = header("Authorization", prefix="Bearer ")
    assert bearer(scope(headers=[("authorization", "bearer sk-123")])) == "sk-123"
    assert bearer(scope(headers=[("authorization", "Basic abc")])) is None
    # Bytes as latin-1, like WSGI's environ: one header, one key under both middlewares.
    assert header("X-Api-Key")(scope(headers=[("x-api-key", "caf\u00e9")])) == "caf\u00e9".encode().decode("latin-1")


# --- requests that cannot be limited --------------------------------------------------------------

def test_missing_key_is_400_and_consumes_nothing(client):
    app = App()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="pro", client=client)
    for headers in ((), [("x-api-key", "")]):
        status, h, body, _ = call(mw, scope(headers=headers))
        assert status == 400 and not app.calls
        err = json.loads(body)["error"]
        assert err["type"] == "missing_rate_limit_key" and "key" in err["message"]
        assert "ratelimit-limit" not in h

    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier=lambda sc: None, client=client,
                             missing_key_status=401)
    status, _, body, _ = call(mw, scope(headers=KEY))
    assert status == 401 and json.loads(body)["error"]["param"] == "tier"
    assert client.peek("cust-1", "pro").remaining == 4, "untouched (peek reports after 1 more)"


@pytest.mark.parametrize("on_error", ["deny", "allow"])
@pytest.mark.parametrize("key, cost", [("k" * 65, 1), ("k", 26), ("k", 0), ("k", -1), ("k", 2**40), ("k", "3")])
def test_a_key_or_cost_the_limiter_refuses_is_400_even_with_allow(client, on_error, key, cost):
    app = App()
    mw = RateLimitMiddleware(app, key=lambda sc: key, tier="pro", cost=lambda sc: cost, client=client,
                             on_error=on_error)
    status, _, body, _ = call(mw, scope())
    assert status == 400 and not app.calls, "an over-long key or huge cost must not bypass the limit"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# --- limiter failures: fail closed unless explicitly opted in ------------------------------------

def test_limiter_error_fails_closed_with_503(daemon, client, caplog):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="gold", client=client)
    with caplog.at_level(logging.ERROR, logger="sluice"):
        status, h, body, _ = call(mw, scope())
    assert status == 503 and not app.calls
    err = json.loads(body)["error"]
    assert err["type"] == "rate_limiter_unavailable" and err["code"] == "UnknownTierError"
    assert err["status_code"] == -5 and "tier" in err["message"]
    assert "UnknownTierError" in caplog.text

    closed = sluice.Client(daemon.segment)
    closed.close()
    mw = RateLimitMiddleware(app, key="k", tier="pro", client=closed, error_status=500)
    with pytest.raises(ValueError):
        call(mw, scope())  # not a SluiceError: a bug in the caller, not hidden


def test_no_segment_is_503_and_the_next_request_retries(daemon, tmp_path):
    from conftest import Daemon

    segment = f"{daemon.segment}-later"
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="pro", segment=segment)
    status, _, body, _ = call(mw, scope())
    assert status == 503 and not app.calls
    err = json.loads(body)["error"]
    assert err["code"] == "NoSegmentError" and "sluiced" in err["message"]

    later = Daemon(tmp_path, segment=segment)
    try:
        status, h, _, _ = call(mw, scope())
        assert status == 200 and h["ratelimit-remaining"] == "4", "a failed open is not cached"
    finally:
        sluice._limiter._clients.pop(segment).close()
        later.stop()


def test_on_error_allow_is_an_explicit_logged_opt_in(client, caplog):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="gold", client=client, on_error="allow")
    with caplog.at_level(logging.WARNING, logger="sluice"):
        for _ in range(3):
            status, h, body, _ = call(mw, scope())
            assert (status, body) == (200, b"ok")
            assert "ratelimit-limit" not in h, "no decision, no rate-limit headers"
    assert len(app.calls) == 3
    warnings = [r for r in caplog.records if r.name == "sluice"]
    assert len(warnings) == 1, "logged at most once a second"
    assert warnings[0].levelno == logging.WARNING and "ALLOWED" in warnings[0].getMessage()

    mw = RateLimitMiddleware(app, key="k", tier="pro", segment="sluicetest-py-no-such-segment",
                             on_error="allow")
    assert call(mw, scope())[0] == 200


@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_a_full_key_table_is_refused_even_with_allow(tmp_path, on_error):
    # Before: under "allow", made-up keys filled the table and every new key then
    # passed uncounted (a tier of 1 request a minute admitted 5 of 5).
    from conftest import Daemon

    d = Daemon(tmp_path, {"segment": {"max_keys": 4, "max_key_bytes": 16},
                          "tiers": [{"name": "t", "limit": 1, "window_ms": 60000, "max_limit": 1}]})
    try:
        with sluice.Client(d.segment) as c:
            app = App()
            mw = RateLimitMiddleware(app, key=lambda sc: dict(sc["headers"])[b"x-api-key"], tier="t",
                                     client=c, on_error=on_error)
            statuses = [call(mw, scope(headers=[("x-api-key", f"junk-{i}")]))[0] for i in range(40)]
            assert statuses.count(200) == 16 and statuses[16:] == [503] * 24  # 16 table slots
            for _ in range(5):
                status, h, body, _ = call(mw, scope(headers=[("x-api-key", "new-key")]))
                assert status == 503 and h["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "TableFullError"
            assert len(app.calls) == 16
    finally:
        d.stop()


def test_a_fail_closed_503_says_when_to_retry(client):
    mw = RateLimitMiddleware(App(), key="k", tier="gold", client=client)
    status, h, _, _ = call(mw, scope())
    assert status == 503 and h["retry-after"] == "1"
    mw = RateLimitMiddleware(App(), key="k", tier="gold", client=client, error_status=500)
    status, h, _, _ = call(mw, scope())
    assert status == 500 and "retry-after" not in h, "Retry-After only where HTTP defines it"


def test_bad_options_are_refused_at_construction():
    with pytest.raises(ValueError):
        RateLimitMiddleware(App(), key="k", tier="pro", on_error="maybe")
    with pytest.raises(ValueError):
        RateLimitMiddleware(App(), key="k", tier="pro", cost=0)
    with pytest.raises(ValueError):
        RateLimitMiddleware(App(), key="k", tier="pro", missing_key_status=200)
    with pytest.raises(TypeError):
        RateLimitMiddleware(App(), key="k", tier=None)
    with pytest.raises(TypeError):
        RateLimitMiddleware(App(), key="", tier="pro")


# --- what passes through untouched -----------------------------------------------------------------

def test_lifespan_websocket_and_exempt_pass_through_without_the_limiter():
    app = App()
    # A segment that does not exist: touching the limiter would answer 503.
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="pro", segment="sluicetest-py-no-such-segment",
                             exempt=lambda sc: sc["path"] == "/healthz")
    _, _, _, sent = call(mw, scope(type_="lifespan"))
    assert sent == [{"type": "lifespan.startup.complete"}]
    _, _, _, sent = call(mw, scope(type_="websocket", path="/ws"))
    assert sent == [{"type": "websocket.accept"}]
    status, h, body, _ = call(mw, scope(path="/healthz"))
    assert (status, body) == (200, b"ok") and "ratelimit-limit" not in h
    assert [s["type"] for s in app.calls] == ["lifespan", "websocket", "http"]
    assert call(mw, scope(headers=KEY))[0] == 503


def test_an_async_exempt_is_awaited(client):
    calls = []

    async def exempt(sc):
        calls.append(sc["path"])
        return sc["path"] == "/healthz"

    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="tiny", client=client, exempt=exempt)
    assert call(mw, scope(path="/v1/x"))[0] == 200
    status, _, body, _ = call(mw, scope(path="/v1/x"))
    assert status == 429 and json.loads(body)["error"]["tier"] == "tiny", "a coroutine is not 'exempt'"
    for _ in range(3):
        status, h, body, _ = call(mw, scope(path="/healthz"))
        assert (status, body) == (200, b"ok") and "ratelimit-limit" not in h
    assert len(app.calls) == 4 and calls == ["/v1/x"] * 2 + ["/healthz"] * 3


# --- key, tier and cost from the JSON body ----------------------------------------------------------

MODELS = {"small-model": "free", "large-model": "pro"}


def test_a_tier_chosen_by_the_json_body_limits_per_tier(client):
    @reads_body
    async def tier(sc):
        await asyncio.sleep(0)
        model = (request_json(sc) or {}).get("model")
        return MODELS.get(model) if isinstance(model, str) else None

    app = EchoApp()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier=tier, client=client)
    small = json_body({"model": "small-model", "prompt": "hi"})
    for remaining in ("1", "0"):
        status, h, body, _ = call(mw, scope(headers=KEY), [small])
        assert status == 200 and h["ratelimit-limit"] == "2" and h["ratelimit-remaining"] == remaining
        assert body == small
    status, h, body, _ = call(mw, scope(headers=KEY), [small])
    assert status == 429 and json.loads(body)["error"]["tier"] == "free"
    large = json_body({"model": "large-model"})
    status, h, body, _ = call(mw, scope(headers=KEY), [large])
    assert status == 200 and h["ratelimit-limit"] == "5" and body == large, "another tier, its own limit"
    assert app.bodies == [small, small, large]
    assert all(sc["sluice.body"] == b for sc, b in zip(app.scopes, app.bodies))


def test_the_app_gets_the_exact_body_sent_in_chunks(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=json_field("metadata", "user"), tier=json_field("model"),
                             cost=json_field("n"), client=client)
    raw = '{"model": "enterprise", "n": 3, "metadata": {"user": "u-1"}, "text": "caf\u00e9 \u2615"}'.encode()
    chunks = [raw[:1], raw[1:9], b"", raw[9:30], raw[30:]]
    original = scope()
    received = []
    status, h, body, _ = call(mw, original, chunks, received=received)
    assert status == 200 and h["ratelimit-remaining"] == "17" and body == raw
    assert app.bodies == [raw], "one message with every chunk's bytes"
    assert app.after == [{"type": "http.disconnect"}], "then the real receive"
    assert len(received) == len(chunks) + 1
    # Set on the scope the middleware was given (no copy), so outer middleware sees
    # what the app adds to it (test_an_outer_middleware_sees_keys_the_app_set).
    assert app.scopes[0] is original and original["sluice.body"] == raw
    assert client.peek("u-1", "enterprise").remaining == 16


@pytest.mark.parametrize("raw", [
    b"not json", b"", b'{"other": "pro"}', b'["pro"]', b'"pro"', b'{"model": null}', b'{"model": true}',
    b'{"model": ["pro"]}', b'{"model": {"name": "pro"}}', b'{"model": ""}', b"\xff\xfe{", b"[" * 100000,
    b'{"model": "pro"', ('{"model": "pro", "n": ' + "9" * 5000 + "}").encode(),
])
def test_an_invalid_body_or_missing_field_is_400_with_param(client, raw):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    status, h, body, _ = call(mw, scope(), [raw])
    assert status == 400 and not app.bodies and "ratelimit-limit" not in h
    err = json.loads(body)["error"]
    assert err["type"] == "missing_rate_limit_key" and err["param"] == "tier"


def test_a_body_field_of_the_wrong_type_is_400(client):
    app = EchoApp()
    for fields, what in (({"tier": 5}, "tier"), ({"n": "3"}, "cost"),
                         ({"n": True}, "cost"), ({"n": 1.0}, "cost"), ({"n": 0}, "cost")):
        mw = RateLimitMiddleware(app, key=json_field("key"), tier=json_field("tier"), cost=json_field("n"),
                                 client=client)
        status, _, body, _ = call(mw, scope(), [json_body({"key": "k", "tier": "pro", "n": 1, **fields})])
        err = json.loads(body)["error"]
        assert status == 400 and err["type"] == "invalid_request_error", (fields, err)
        assert what in err["message"]
    assert not app.bodies


def test_a_whole_number_key_counts_as_its_decimal_string(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=json_field("user_id"), tier="pro", client=client)
    status, h, _, _ = call(mw, scope(), [json_body({"user_id": 123})])
    assert status == 200 and h["ratelimit-remaining"] == "4"
    status, h, _, _ = call(mw, scope(), [json_body({"user_id": "123"})])
    assert status == 200 and h["ratelimit-remaining"] == "3", "123 and '123' are one key"
    assert call(mw, scope(), [json_body({"user_id": 0})])[1]["ratelimit-remaining"] == "4"
    status, _, body, _ = call(mw, scope(), [json_body({"user_id": True})])
    assert status == 400 and json.loads(body)["error"]["param"] == "key", "a bool is no key"
    for key in (7.5, 10**5000):  # a float; an int with more digits than Python prints
        status, _, body, _ = call(RateLimitMiddleware(app, key=lambda sc: key, tier="pro", client=client), scope())
        err = json.loads(body)["error"]
        assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == "key"
    mw = RateLimitMiddleware(app, key="k", tier=json_field("tier"), client=client)
    status, _, body, _ = call(mw, scope(), [json_body({"tier": 1})])
    assert status == 400 and json.loads(body)["error"]["param"] == "tier", "a tier is still a str"
    assert client.peek("123", "pro").remaining == 2 and len(app.bodies) == 3


@pytest.mark.parametrize("on_error", ["deny", "allow"])
@pytest.mark.parametrize("raw, param", [(rb'{"user": "\ud800", "model": "pro"}', "key"),
                                        (rb'{"user": "u", "model": "pro\udfff"}', "tier")])
def test_a_key_or_tier_with_a_lone_surrogate_is_400_naming_it(client, on_error, raw, param):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=json_field("user"), tier=json_field("model"), client=client,
                             on_error=on_error)
    status, _, body, _ = call(mw, scope(), [raw])  # valid JSON: the escape decodes to a lone surrogate
    err = json.loads(body)["error"]
    assert status == 400 and err["type"] == "invalid_request_error" and err["param"] == param, err
    assert not app.bodies
    with pytest.raises(ValueError, match="UTF-8"):
        RateLimitMiddleware(app, key="k", tier="pro\ud800", client=client)


def test_get_head_options_bodies_are_not_read_and_default_serves_them(client):
    app = EchoApp()
    strict = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    by_method = lambda sc: sc["method"]  # noqa: E731  (one key per method: free is 2 per window)
    lenient = RateLimitMiddleware(app, key=by_method, tier=json_field("model", default="free"), client=client)
    raw = json_body({"model": "pro"})
    for method in ("GET", "HEAD", "OPTIONS"):
        sc, received = {**scope(), "method": method}, []
        status, _, body, _ = call(strict, sc, [raw], received=received)
        assert status == 400 and json.loads(body)["error"]["param"] == "tier" and received == [], \
            "the body is not read: the functions see none"
        sc = {**scope(), "method": method}
        status, h, body, _ = call(lenient, sc, [raw])
        assert status == 200 and h["ratelimit-limit"] == "2" and sc["sluice.body"] == b"", method
        assert body == raw, "the app reads the real receive"
    assert call(lenient, scope(), [raw])[1]["ratelimit-limit"] == "5", "a POST still names its tier"
    # Missing field, not JSON: the default; a field sent with a bad type: still refused.
    for bad, remaining in ((json_body({"other": 1}), "1"), (b"{oops", "0")):
        status, h, _, _ = call(lenient, scope(), [bad])
        assert status == 200 and h["ratelimit-limit"] == "2" and h["ratelimit-remaining"] == remaining
    status, _, body, _ = call(lenient, scope(), [json_body({"model": None})])
    assert status == 400 and json.loads(body)["error"]["param"] == "tier"
    for bad in (1.5, True, b"free"):
        with pytest.raises(TypeError, match="default"):
            json_field("model", default=bad)


def test_a_content_length_above_the_bound_is_413_before_reading(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client, max_body_bytes=27)
    received = []
    sc = scope(headers=[("content-length", str(50 << 20)), ("expect", "100-continue")])
    status, _, body, _ = call(mw, sc, [b"x" * 10], received=received)
    assert status == 413 and "27 bytes" in json.loads(body)["error"]["message"]
    assert received == [], "no receive(): the server sends no 100 Continue, the client uploads nothing"
    fits = json_body({"model": "pro"})
    sc = scope(headers=[("content-length", str(len(fits)))])
    assert call(mw, sc, [fits])[0] == 200 and app.bodies == [fits]
    sc = scope(headers=[("content-length", "bogus")])
    assert call(mw, sc, [b"x" * 30])[0] == 413, "an unreadable length: the body's own size still bounds it"


def test_an_outer_middleware_sees_keys_the_app_set(client):
    seen = []

    async def inner(sc, receive, send):
        sc["route"] = "/v1/chat"  # as a router does (Starlette: scope["route"], "endpoint")
        m = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": m["body"]})

    mw = RateLimitMiddleware(inner, key="k", tier=json_field("model"), client=client)

    async def outer(sc, receive, send):
        await mw(sc, receive, send)
        seen.append(sc.get("route"))

    raw = json_body({"model": "pro"})
    status, _, body, _ = call(outer, scope(), [raw])
    assert status == 200 and body == raw and seen == ["/v1/chat"]


def test_an_oversize_body_is_413_and_the_app_does_not_run(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client, max_body_bytes=27)
    fits = json_body({"model": "pro", "x": "12"})
    assert len(fits) == 27
    assert call(mw, scope(), [fits[:10], fits[10:]])[0] == 200
    received = []
    status, h, body, _ = call(mw, scope(), [b"x" * 10, b"x" * 10, b"x" * 10, b"x" * 10], received=received)
    assert status == 413 and app.bodies == [fits]
    assert h["content-type"] == "application/json" and int(h["content-length"]) == len(body)
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and "27 bytes" in err["message"]
    assert len(received) == 3, "reading stops at the first byte over the limit"
    assert client.peek("k", "pro").remaining == 3, "an oversize request consumes nothing"


def test_a_client_that_disconnects_mid_body_gets_nothing(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    status, _, _, sent = call(mw, scope(), [b'{"model": ', b'"pro"'], disconnect=True)
    assert status is None and sent == [] and not app.bodies
    assert client.peek("k", "pro").remaining == 4


def test_the_body_is_read_only_when_a_function_needs_it(client):
    app = EchoApp()
    raw = json_body({"model": "pro"})
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client,
                             exempt=lambda sc: sc["path"] == "/healthz")
    received = []
    assert call(mw, scope(path="/healthz"), [raw[:3], raw[3:]], received=received)[0] == 200
    assert app.bodies == [raw] and len(received) == 3 and "sluice.body" not in app.scopes[0], \
        "exempt: the app reads the real receive"
    plain = RateLimitMiddleware(app, key="k", tier="pro", client=client)
    received = []
    assert call(plain, scope(), [raw[:3], raw[3:]], received=received)[0] == 200
    assert app.bodies[-1] == raw and "sluice.body" not in app.scopes[-1]


def test_body_helpers_refuse_bad_arguments():
    with pytest.raises(TypeError):
        json_field()
    with pytest.raises(TypeError):
        json_field("a", 1)
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError):
            RateLimitMiddleware(App(), key="k", tier=json_field("m"), max_body_bytes=bad)
    with pytest.raises(RuntimeError, match="reads_body"):
        request_json(scope())
    assert getattr(json_field("model"), "reads_body") is True and json_field("model").__name__ == "json_field('model')"
    assert reads_body(lambda sc: 1).reads_body is True


# --- tiers the request names ------------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_an_unknown_tier_chosen_by_the_request_is_400_even_with_allow(client, on_error, caplog):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier=header("x-tier"), client=client, on_error=on_error)
    status, h, body, _ = call(mw, scope(headers=[("x-tier", "gold" * 50)]))
    assert status == 400 and not app.calls, "a made-up tier must not bypass the limit"
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "tier"
    assert "goldgold" in err["message"] and "gold" * 17 not in err["message"], "named, truncated"
    assert call(mw, scope(headers=[("x-tier", "pro")]))[0] == 200

    echo = EchoApp()
    mw = RateLimitMiddleware(echo, key="k", tier=json_field("model"), client=client, on_error=on_error)
    status, _, body, _ = call(mw, scope(), [json_body({"model": "gold"})])
    assert status == 400 and "'gold'" in json.loads(body)["error"]["message"] and not echo.bodies

    # A constant tier that does not exist is the configuration's fault: unchanged.
    mw = RateLimitMiddleware(app, key="k", tier="gold", client=client, on_error=on_error)
    status, _, body, _ = call(mw, scope())
    if on_error == "allow":
        assert (status, body) == (200, b"ok")
    else:
        assert status == 503 and json.loads(body)["error"]["code"] == "UnknownTierError"


# --- response headers and denied bodies --------------------------------------------------------------

class HeaderApp(App):
    """Sets its own rate-limit headers, in mixed case."""

    async def __call__(self, scope, receive, send):
        self.calls.append(scope)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"RateLimit-Limit", b"999"), (b"x-app", b"1"),
                                (b"X-RateLimit-Remaining-Requests", b"7"), (b"ratelimit-limit", b"998"),
                                (b"retry-after", b"9")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_the_decisions_headers_replace_the_apps(client):
    mw = RateLimitMiddleware(HeaderApp(), key="k", tier="pro", client=client)
    _, _, _, sent = call(mw, scope())
    headers = [(k.decode().lower(), v.decode()) for k, v in sent[0]["headers"]]
    names = [k for k, _ in headers]
    assert len(names) == len(set(names)), headers
    h = dict(headers)
    assert h["ratelimit-limit"] == "5" and h["x-ratelimit-remaining-requests"] == "4" and h["x-app"] == "1"
    assert h["retry-after"] == "9", "a header the decision does not set stays the app's"


def test_the_denied_body_says_why(client):
    from types import SimpleNamespace

    mw = RateLimitMiddleware(App(), key="k", tier="pro", cost=6, client=client)  # limit 5, capacity 25
    status, h, body, _ = call(mw, scope())
    assert status == 429 and "retry-after" in h and h["ratelimit-limit"] == "5"
    err = json.loads(body)["error"]
    assert err["code"] == "cost_above_limit" and err["reason"] == "cost_above_limit"
    assert err["type"] == "rate_limit_exceeded" and "try again" not in err["message"]
    assert "cost (6)" in err["message"] and "(5 per 2s)" in err["message"]

    # A policy cannot close a tier (limit >= 1) and sluiced closes one only under
    # its own loop, so the body is checked on a stand-in decision.
    closed = SimpleNamespace(reason="tier_closed", tier="free", limit=0, window=2.0, remaining=0, retry_after=2.0)
    err = json.loads(sluice._limiter._denied_body(closed, 1))["error"]
    assert err["code"] == "tier_closed" and "closed" in err["message"] and "try again" not in err["message"]
    full = SimpleNamespace(reason="window_full", tier="free", limit=2, window=2.0, remaining=0, retry_after=1.5)
    assert json.loads(sluice._limiter._denied_body(full, 1))["error"]["code"] == "rate_limit_exceeded"


# --- one client per process ------------------------------------------------------------------------

def test_the_client_is_opened_lazily_once_per_process(daemon, monkeypatch):
    monkeypatch.setenv("SLUICE_SEGMENT", daemon.segment)
    sluice._limiter._clients.pop(None, None)
    a = RateLimitMiddleware(App(), key="k", tier="pro")
    b = RateLimitMiddleware(App(), key="k", tier="pro")
    assert None not in sluice._limiter._clients, "nothing opened before the first request"
    assert call(a, scope())[1]["ratelimit-remaining"] == "4"
    assert call(b, scope())[1]["ratelimit-remaining"] == "3"
    shared = sluice._limiter._clients[None]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: forgets the parent's client, opens its own, same limit
        try:
            ok = None not in sluice._limiter._clients
            ok = ok and call(a, scope())[1]["ratelimit-remaining"] == "2"
            ok = ok and sluice._limiter._clients[None] is not shared
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(r)
    assert sluice._limiter._clients[None] is shared
    assert call(a, scope())[1]["ratelimit-remaining"] == "1"
    sluice._limiter._clients.pop(None).close()


# --- the stub --------------------------------------------------------------------------------------

def test_the_stub_covers_the_extension():
    stub = ast.parse((Path(sluice.__file__).parent / "__init__.pyi").read_text())
    classes = {n.name: {m.name for m in n.body if isinstance(m, ast.FunctionDef)}
               for n in stub.body if isinstance(n, ast.ClassDef)}
    for cls in (sluice.Client, sluice.Decision):
        public = {n for n in dir(cls) if not n.startswith("_")}
        assert public <= classes[cls.__name__], public - classes[cls.__name__]
    names = {a.asname or a.name for n in stub.body if isinstance(n, ast.ImportFrom) for a in n.names}
    names |= {t.target.id for t in stub.body if isinstance(t, ast.AnnAssign)}
    assert set(sluice.__all__) <= names | set(classes)
    from sluice import errors
    assert {c.__name__ for c in errors.BY_CODE.values()} <= names
    assert (Path(sluice.__file__).parent / "py.typed").exists()


# --- websockets (opt-in) -------------------------------------------------------------------------------

def ws_call(mw, sc, first=None):
    """One websocket handshake; returns the messages the middleware or app sent."""
    sent = []
    messages = [first or {"type": "websocket.connect"}]

    async def receive():
        return messages.pop(0) if messages else {"type": "websocket.disconnect", "code": 1000}

    async def send(message):
        sent.append(message)

    asyncio.run(mw(sc, receive, send))
    return sent


def test_websockets_pass_through_unless_opted_in(client):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="tiny", client=client)
    for _ in range(3):
        assert ws_call(mw, scope(type_="websocket")) == [{"type": "websocket.accept"}]
    assert client.acquire("k", "tiny").allowed, "nothing was counted before"
    with pytest.raises(TypeError):
        RateLimitMiddleware(app, key="k", tier="tiny", client=client, websocket="yes")


def test_an_opted_in_websocket_handshake_is_one_admission(client):
    app = App()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="tiny", client=client, websocket=True)
    sc = scope(type_="websocket", headers=[("x-api-key", "ws-1")])
    sent = ws_call(mw, sc)
    assert [m["type"] for m in sent] == ["websocket.accept"]
    headers = dict(sent[0]["headers"])
    assert headers[b"ratelimit-limit"] == b"1" and headers[b"ratelimit-remaining"] == b"0"
    # Refused before accept: a close the server sends as 403, the reason in its text.
    sent = ws_call(mw, scope(type_="websocket", headers=[("x-api-key", "ws-1")]))
    assert len(sent) == 1 and sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008
    assert sent[0]["reason"].startswith("429: retry after ") and len(sent[0]["reason"].encode()) <= 123
    assert len(app.calls) == 1, "the app never saw the refused handshake"
    # A server with the websocket.http.response extension gets the full 429.
    sc = scope(type_="websocket", headers=[("x-api-key", "ws-1")])
    sc["extensions"] = {"websocket.http.response": {}}
    sent = ws_call(mw, sc)
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 429 and dict(sent[0]["headers"])[b"retry-after"]
    assert json.loads(sent[1]["body"])["error"]["type"] == "rate_limit_exceeded"
    # No key: refused too; a client gone before connect gets nothing.
    sent = ws_call(mw, scope(type_="websocket"))
    assert sent[0]["type"] == "websocket.close" and sent[0]["reason"].startswith("400: ")
    assert ws_call(mw, scope(type_="websocket"), first={"type": "websocket.disconnect", "code": 1001}) == []
    assert len(app.calls) == 1


def test_an_app_that_denies_an_admitted_handshake_itself_still_gets_the_headers(client):
    async def denying_app(scope, receive, send):  # e.g. a bad token, answered over the extension
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-app", b"1")]})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    mw = RateLimitMiddleware(denying_app, key=header("x-api-key"), tier="pro", client=client, websocket=True)
    sc = scope(type_="websocket", headers=[("x-api-key", "ws-app-denies")])
    sc["extensions"] = {"websocket.http.response": {}}
    sent = ws_call(mw, sc)
    assert [m["type"] for m in sent] == ["websocket.http.response.start", "websocket.http.response.body"]
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 401 and headers[b"x-app"] == b"1"
    assert headers[b"ratelimit-remaining"] == b"4", "the handshake was counted, and says so"
    assert sent[1] == {"type": "websocket.http.response.body", "body": b"no"}


def test_a_websocket_handshake_under_uvicorn_is_limited(daemon, tmp_path):
    import socket as sk

    argv = lambda port: [PYTHON, "-m", "uvicorn", "--app-dir", ".", "--host", "127.0.0.1", "--port", str(port),
                         "--ws", "wsproto", "--log-level", "warning", "--no-access-log", "ws_app:app"]

    def handshake(port, api_key):
        with sk.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall((f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       f"Sec-WebSocket-Version: 13\r\nx-api-key: {api_key}\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    break
                head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        return int(lines[0].split()[1]), {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}

    with serve(argv, tmp_path / "uvicorn-ws.log", {"SLUICE_SEGMENT": daemon.segment}) as server:
        status, headers = handshake(server.port, "ws-e2e")
        assert status == 101 and headers["ratelimit-remaining"] == "0", (status, headers, server.log_tail())
        status, _ = handshake(server.port, "ws-e2e")
        assert status == 403, server.log_tail()
        assert handshake(server.port, "ws-e2e-other")[0] == 101


# --- FastAPI under uvicorn --workers 4 ---------------------------------------------------------------

def test_fastapi_under_uvicorn_with_4_workers_shares_one_exact_limit(daemon, tmp_path):
    argv = lambda port: [PYTHON, "-m", "uvicorn", "--app-dir", ".", "--host", "127.0.0.1", "--port", str(port),
                         "--workers", "4", "--log-level", "warning", "--no-access-log", "fastapi_app:app"]
    with serve(argv, tmp_path / "uvicorn.log", {"SLUICE_SEGMENT": daemon.segment}) as server:
        warm = server.warm_pids(4)
        assert len(warm) >= 2, f"workers that answered: {warm}\n{server.log_tail()}"

        r = server.get("/v1/models/m/chat")
        assert r.status == 400 and r.json()["error"]["type"] == "missing_rate_limit_key"

        ok, denied, pids = run_bursts(server, "/v1/models/llama/chat", "fastapi-key", PRO_LIMIT)
        assert len(pids) >= 2, f"one worker served the whole burst: {pids}"
        r = server.get("/v1/models/llama/chat", {"x-api-key": "another-key"})
        assert r.status == 200 and r.json()["model"] == "llama" and r.headers["ratelimit-remaining"] == "4"
        ok += 1

        # POST: the tier named in the JSON body; the pydantic handler still parses it.
        prompt = "caf\u00e9 " + "x" * 3000  # several TCP segments' worth, non-ASCII
        raw = json.dumps({"model": "pro", "prompt": prompt}).encode()

        def echoed(r):
            assert r.json()["prompt"] == prompt and r.json()["model"] == "pro", r.body[:200]

        for bad, param in ((b"{not json", "tier"), (json.dumps({"prompt": "p"}).encode(), "tier")):
            r = server.get("/v1/completions", {"x-api-key": "k"}, body=bad)
            assert r.status == 400 and r.json()["error"]["param"] == param, r.body
        r = server.get("/v1/completions", {"x-api-key": "k"}, body=json.dumps({"model": "gold", "prompt": "p"}).encode())
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = server.get("/v1/completions", {"x-api-key": "k"}, body=json.dumps({"model": "pro"}).encode())
        assert r.status == 422, "admitted (and counted): the handler's own validation refuses it"
        ok += 1
        ok2, denied2, pids2 = run_bursts(server, "/v1/completions", "fastapi-body", PRO_LIMIT, body=raw,
                                         check_ok=echoed)
        assert len(pids2) >= 2, f"one worker served the whole burst: {pids2}"
        ok, denied = ok + ok2, denied + denied2

    pro = daemon.status()["tiers"][1]
    assert pro["name"] == "pro"
    assert pro["admitted"] == ok, "the daemon's counter equals the 200s the clients saw"
    assert pro["denied_window"] == denied
