"""sluice.wsgi over a real sluiced: the middleware driven directly (allow, deny,
headers, missing key, bad key/cost, limiter errors failing closed, the opt-in allow,
exempt paths), the Flask decorator through Flask's test client, then a Flask app
under `gunicorn -w 4` whose workers must share one exact limit."""

from __future__ import annotations

import functools
import io
import json
import logging
from wsgiref.util import setup_testing_defaults

import pytest

import sluice.asgi
from apps.server import PRO_LIMIT, PYTHON, run_bursts, serve
from sluice.wsgi import (
    RateLimitMiddleware,
    client_host,
    header,
    json_field,
    limit,
    path_regex,
    path_segment,
    request_body,
)

flask = pytest.importorskip("flask")


class App:
    """A plain WSGI app: 200 'ok' with its own header; records each call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        return [b"o", b"k"]


def environ(path="/v1/chat", headers=None, remote="10.1.2.3", body=None, chunked=False):
    """``body``: on wsgi.input with CONTENT_LENGTH, or ``chunked``: without one, on a
    terminated stream (wsgi.input_terminated)."""
    env = {"PATH_INFO": path, "REQUEST_METHOD": "POST", "REMOTE_ADDR": remote}
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    if body is not None:
        env["wsgi.input"] = io.BytesIO(body)
        if chunked:
            env["wsgi.input_terminated"] = True
        else:
            env["CONTENT_LENGTH"] = str(len(body))
    setup_testing_defaults(env)
    return env


class EchoApp:
    """Reads its body as a WSGI app does (CONTENT_LENGTH bytes, or to the end of a
    terminated stream) and answers it back; records each body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, environ, start_response):
        stream = environ["wsgi.input"]
        n = environ.get("CONTENT_LENGTH")
        body = stream.read(int(n)) if n else stream.read() if environ.get("wsgi.input_terminated") else b""
        self.bodies.append(body)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]


def json_body(obj) -> bytes:
    return json.dumps(obj).encode()


def call(mw, env):
    """Runs one request; returns (status code, headers dict, body)."""
    started = []

    def start_response(status, headers, exc_info=None):
        started.append((status, headers))

    body = b"".join(mw(env, start_response))
    status, headers = started[-1]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers), "WSGI headers are native str"
    return int(status.split()[0]), dict(headers), body, status


KEY = {"x-api-key": "cust-1"}


def test_allowed_then_429_with_headers(client):
    app = App()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="pro", client=client)
    for remaining in (4, 3, 2, 1, 0):
        code, h, body, _ = call(mw, environ(headers=KEY))
        assert (code, body) == (200, b"ok") and h["X-App"] == "1"
        assert h["RateLimit-Limit"] == "5" and h["RateLimit-Remaining"] == str(remaining)
        assert h["x-ratelimit-remaining-requests"] == str(remaining) and "Retry-After" not in h
    code, h, body, status = call(mw, environ(headers=KEY))
    assert status == "429 Too Many Requests" and app.calls == 5
    assert h["Content-Type"] == "application/json" and int(h["Content-Length"]) == len(body)
    assert h["Retry-After"] == "2" and h["RateLimit-Remaining"] == "0"
    err = json.loads(body)["error"]
    assert err["type"] == "rate_limit_exceeded" and err["tier"] == "pro" and 1.5 < err["retry_after"] <= 2


def test_callables_of_the_environ(client):
    mw = RateLimitMiddleware(App(), key=client_host(), tier=path_segment(1),
                             cost=lambda env: int(env.get("HTTP_X_COST", 1)), client=client)
    assert call(mw, environ("/v1/enterprise/x", {"x-cost": "7"}))[1]["RateLimit-Remaining"] == "13"
    assert call(mw, environ("/v1/pro/x"))[1]["RateLimit-Remaining"] == "4"
    assert call(mw, environ("/v1/enterprise/x", {"x-cost": "14"}))[0] == 429

    assert path_regex(r"^/v1/models/([^/]+)")(environ("/v1/models/llama/chat")) == "llama"
    assert path_regex(r"^/v1/models/([^/]+)")(environ("/v2")) is None
    # PEP 3333's latin-1 PATH_INFO reads as the UTF-8 text ASGI gives.
    assert path_segment(-1)(environ("/v1/models/caf\u00e9".encode().decode("latin-1"))) == "caf\u00e9"
    bearer = header("Authorization", prefix="Bearer ")
    assert bearer(environ(headers={"authorization": "Bearer sk-1"})) == "sk-1"
    assert bearer(environ(headers={"authorization": "sk-1"})) is None
    assert header("Content-Type")({"CONTENT_TYPE": "a/b"}) == "a/b"
    # one header, one key under both middlewares
    raw = "caf\u00e9".encode()
    assert header("x-k")(environ(headers={"x-k": raw.decode("latin-1")})) == \
        sluice.asgi.header("x-k")({"headers": [(b"x-k", raw)]})


def test_missing_key_is_400_and_bad_key_or_cost_is_400_even_with_allow(client):
    app = App()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier="pro", client=client)
    code, h, body, _ = call(mw, environ())
    assert code == 400 and json.loads(body)["error"]["type"] == "missing_rate_limit_key"
    assert "RateLimit-Limit" not in h
    for key, cost in (("k" * 65, 1), ("k", 26), ("k", 0)):
        mw = RateLimitMiddleware(app, key=lambda env: key, tier="pro", cost=lambda env: cost, client=client,
                                 on_error="allow")
        code, _, body, _ = call(mw, environ())
        assert code == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert app.calls == 0


def test_limiter_errors_fail_closed_unless_allow_is_opted_in(client, caplog):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="gold", client=client)
    code, _, body, status = call(mw, environ())
    assert status == "503 Service Unavailable" and app.calls == 0
    assert json.loads(body)["error"]["code"] == "UnknownTierError"
    mw = RateLimitMiddleware(app, key="k", tier="pro", segment="sluicetest-py-no-such-segment", error_status=500)
    code, _, body, _ = call(mw, environ())
    assert code == 500 and json.loads(body)["error"]["code"] == "NoSegmentError"
    assert app.calls == 0

    mw = RateLimitMiddleware(app, key="k", tier="pro", segment="sluicetest-py-no-such-segment", on_error="allow")
    with caplog.at_level(logging.WARNING, logger="sluice"):
        code, h, body, _ = call(mw, environ())
    assert (code, body) == (200, b"ok") and "RateLimit-Limit" not in h and app.calls == 1
    assert "ALLOWED" in caplog.text and "NoSegmentError" in caplog.text


def test_a_full_key_table_is_refused_even_with_allow(tmp_path):
    from conftest import Daemon

    d = Daemon(tmp_path, {"segment": {"max_keys": 4, "max_key_bytes": 16},
                          "tiers": [{"name": "t", "limit": 1, "window_ms": 60000, "max_limit": 1}]})
    try:
        with sluice.Client(d.segment) as c:
            app = App()
            mw = RateLimitMiddleware(app, key=lambda env: env["HTTP_X_API_KEY"], tier="t", client=c,
                                     on_error="allow")
            codes = [call(mw, environ(headers={"X-Api-Key": f"junk-{i}"}))[0] for i in range(20)]
            assert codes == [200] * 16 + [503] * 4
            code, h, body, _ = call(mw, environ(headers={"X-Api-Key": "new-key"}))
            assert code == 503 and h["Retry-After"] == "1" and app.calls == 16
            assert json.loads(body)["error"]["code"] == "TableFullError"
    finally:
        d.stop()


def test_exempt_passes_through_without_the_limiter():
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="pro", segment="sluicetest-py-no-such-segment",
                             exempt=lambda env: env["PATH_INFO"] == "/healthz")
    code, h, body, _ = call(mw, environ("/healthz"))
    assert (code, body) == (200, b"ok") and "RateLimit-Limit" not in h
    assert call(mw, environ("/v1"))[0] == 503


def test_an_async_exempt_is_refused_not_taken_as_true(client):
    async def exempt(env):
        return True

    class AsyncCall:
        async def __call__(self, env):
            return True

    # Refused when the middleware is made, not with a 500 on every request.
    for fn in (exempt, functools.partial(exempt), AsyncCall()):
        with pytest.raises(TypeError, match="async"):
            RateLimitMiddleware(App(), key="k", tier="pro", client=client, exempt=fn)
    for name in ("key", "tier", "cost"):
        with pytest.raises(TypeError, match=name):
            RateLimitMiddleware(App(), **{"key": "k", "tier": "pro", name: exempt}, client=client)
        with pytest.raises(TypeError, match=name):
            limit(**{"key": "k", "tier": "pro", name: exempt}, client=client)
    # The per-request backstop: a plain function that hands back a coroutine.
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="pro", client=client, exempt=lambda env: exempt(env))
    with pytest.raises(TypeError, match="async"):
        call(mw, environ())
    assert app.calls == 0


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        RateLimitMiddleware(App(), key="k", tier="pro", on_error="ignore")
    with pytest.raises(ValueError):
        limit(key="k", tier="pro", cost=-1)


# --- key, tier and cost from the JSON body -----------------------------------------------------------

MODELS = {"small-model": "free", "large-model": "pro"}


def test_a_tier_chosen_by_the_json_body_limits_per_tier(client):
    model = json_field("model")
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=header("x-api-key"), tier=lambda env: MODELS.get(model(env)), client=client)
    small = json_body({"model": "small-model", "prompt": "caf\u00e9"})
    for chunked in (False, True):
        code, h, body, _ = call(mw, environ(headers=KEY, body=small, chunked=chunked))
        assert code == 200 and h["RateLimit-Limit"] == "2" and body == small
    code, _, body, _ = call(mw, environ(headers=KEY, body=small))
    assert code == 429 and json.loads(body)["error"]["tier"] == "free"
    large = json_body({"model": "large-model"})
    code, h, body, _ = call(mw, environ(headers=KEY, body=large, chunked=True))
    assert code == 200 and h["RateLimit-Limit"] == "5" and body == large
    assert app.bodies == [small, small, large], "the app reads the exact body"


def test_request_body_reads_once_and_puts_it_back():
    raw = b'{"model": "pro"}\nsecond line\n'
    env = environ(body=raw)
    assert request_body(env) == raw and env["sluice.body"] == raw and env["CONTENT_LENGTH"] == str(len(raw))
    env["wsgi.input"] = io.BytesIO(b"must not be read again")
    assert request_body(env) == raw, "cached"

    env = environ(body=raw)
    stream = env["wsgi.input"]
    assert request_body(env, max_bytes=len(raw) - 1) is None
    assert env["wsgi.input"] is stream and stream.tell() == 0, "a body announced too large is not read at all"
    assert request_body(env, max_bytes=3) is None

    env = environ(body=raw, chunked=True)
    assert request_body(env, max_bytes=5) is None, "read max+1 bytes, then put back"
    back = env["wsgi.input"]
    assert back.read(3) == raw[:3] and back.readline() == raw[3:17] and list(back) == [raw[17:]]
    env = environ(body=raw, chunked=True)
    request_body(env, max_bytes=20)
    assert env["wsgi.input"].read() == raw
    env = environ(body=raw, chunked=True)
    request_body(env, max_bytes=20)
    assert env["wsgi.input"].readlines() == raw.splitlines(keepends=True)

    env = environ(body=raw, chunked=True)
    assert request_body(env) == raw and env["CONTENT_LENGTH"] == str(len(raw))
    assert env["wsgi.input"].read() == raw

    env = environ(body=raw)
    del env["CONTENT_LENGTH"]
    assert request_body(env) == b"", "PEP 3333: no CONTENT_LENGTH, not terminated: no body"
    env = environ(body=raw)
    env["CONTENT_LENGTH"] = "abc"
    assert request_body(env) == b""
    with pytest.raises(ValueError):
        request_body(environ(body=raw), max_bytes=-1)


@pytest.mark.parametrize("raw", [
    b"not json", b"", b'{"other": "pro"}', b'["pro"]', b'{"model": null}', b'{"model": true}',
    b'{"model": {"name": "pro"}}', b'{"model": ""}', b"\xff\xfe{", b"[" * 100000,
])
def test_an_invalid_body_or_missing_field_is_400_with_param(client, raw):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    code, h, body, _ = call(mw, environ(body=raw))
    assert code == 400 and not app.bodies and "RateLimit-Limit" not in h
    err = json.loads(body)["error"]
    assert err["type"] == "missing_rate_limit_key" and err["param"] == "tier"


def test_a_body_field_of_the_wrong_type_is_400(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=json_field("metadata", "user"), tier=json_field("tier"),
                             cost=json_field("n"), client=client)
    for fields in ({"tier": 5}, {"n": "3"}, {"n": True}, {"n": 0}):
        raw = json_body({"metadata": {"user": "u"}, "tier": "pro", "n": 1, **fields})
        code, _, body, _ = call(mw, environ(body=raw))
        assert code == 400 and json.loads(body)["error"]["type"] == "invalid_request_error", fields
    assert not app.bodies
    code, h, body, _ = call(mw, environ(body=json_body({"metadata": {"user": "u"}, "tier": "pro", "n": 3})))
    assert code == 200 and h["RateLimit-Remaining"] == "2" and client.peek("u", "pro").remaining == 1


def test_a_whole_number_key_counts_as_its_decimal_string(client):
    mw = RateLimitMiddleware(EchoApp(), key=json_field("user_id"), tier="pro", client=client)
    assert call(mw, environ(body=json_body({"user_id": 123})))[1]["RateLimit-Remaining"] == "4"
    assert call(mw, environ(body=json_body({"user_id": "123"})))[1]["RateLimit-Remaining"] == "3", "one key"
    code, _, body, _ = call(mw, environ(body=json_body({"user_id": False})))
    assert code == 400 and json.loads(body)["error"]["param"] == "key", "a bool is no key"
    mw = RateLimitMiddleware(EchoApp(), key="k", tier=json_field("tier"), client=client)
    code, _, body, _ = call(mw, environ(body=json_body({"tier": 1})))
    assert code == 400 and json.loads(body)["error"]["param"] == "tier", "a tier is still a str"


@pytest.mark.parametrize("raw, param", [(rb'{"user": "\ud800", "model": "pro"}', "key"),
                                        (rb'{"user": "u", "model": "\udfffpro"}', "tier")])
def test_a_key_or_tier_with_a_lone_surrogate_is_400_naming_it(client, raw, param):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key=json_field("user"), tier=json_field("model"), client=client,
                             on_error="allow")
    code, _, body, _ = call(mw, environ(body=raw))
    err = json.loads(body)["error"]
    assert code == 400 and err["type"] == "invalid_request_error" and err["param"] == param and not app.bodies

    fl = flask.Flask(__name__)

    @fl.post("/v")
    @limit(key=json_field("user"), tier=json_field("model"), client=client)
    def view():
        raise AssertionError("must not run")

    r = fl.test_client().post("/v", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.json["error"]["param"] == param


def test_get_head_options_bodies_are_not_read_and_default_serves_them(client):
    app = EchoApp()
    strict = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    lenient = RateLimitMiddleware(app, key=lambda env: env["REQUEST_METHOD"],
                                  tier=json_field("model", default="free"), client=client)
    raw = json_body({"model": "pro"})
    for method in ("GET", "HEAD", "OPTIONS"):
        env = environ(body=raw)
        env["REQUEST_METHOD"] = method
        code, _, body, _ = call(strict, env)
        assert code == 400 and json.loads(body)["error"]["param"] == "tier"
        assert env["wsgi.input"].tell() == 0 and "sluice.body" not in env, "not read"
        env = environ(body=raw)
        env["REQUEST_METHOD"] = method
        code, h, body, _ = call(lenient, env)
        assert code == 200 and h["RateLimit-Limit"] == "2" and body == raw, "the app reads its own body"
    assert call(lenient, environ(body=raw))[1]["RateLimit-Limit"] == "5", "a POST still names its tier"
    for bad, remaining in ((json_body({"other": 1}), "1"), (b"{oops", "0")):
        code, h, _, _ = call(lenient, environ(body=bad))
        assert code == 200 and h["RateLimit-Limit"] == "2" and h["RateLimit-Remaining"] == remaining
    code, _, body, _ = call(lenient, environ(body=json_body({"model": None})))
    assert code == 400 and json.loads(body)["error"]["param"] == "tier", "a field sent with a bad type"
    small = RateLimitMiddleware(app, key="k", tier=json_field("model", default="free", max_body_bytes=5),
                                client=client)
    code, _, body, _ = call(small, environ(body=raw, chunked=True))
    assert code == 413, "too large is not 'missing': no default"
    for bad in (1.5, True, b"free"):
        with pytest.raises(TypeError, match="default"):
            json_field("model", default=bad)


def test_a_failed_small_read_does_not_refuse_a_later_larger_one(client):
    def tier(env):  # a tiny body names its tier; otherwise the JSON's model
        small = request_body(env, 10)
        return small.decode() if small is not None else json_field("model")(env)

    app = EchoApp()
    raw = json_body({"model": "pro", "prompt": "p" * 40})
    for chunked in (False, True):
        mw = RateLimitMiddleware(app, key="k", tier=tier, client=client)
        code, h, body, _ = call(mw, environ(body=raw, chunked=chunked))
        assert code == 200 and h["RateLimit-Limit"] == "5" and body == raw, (code, body)
    # A function that had no value because of its own bound is still refused, whichever
    # function read first.
    for key, tier_ in ((json_field("user", max_body_bytes=10), json_field("model")),
                       (json_field("user"), json_field("model", max_body_bytes=10))):
        mw = RateLimitMiddleware(app, key=key, tier=tier_, client=client)
        code, _, body, _ = call(mw, environ(body=json_body({"user": "u", "model": "pro"}), chunked=True))
        assert code == 413 and "10 bytes" in json.loads(body)["error"]["message"]
    assert app.bodies == [raw, raw]

    fl = flask.Flask(__name__)  # the same inside a Flask view, where werkzeug holds the stream

    @fl.post("/v")
    @limit(key="k", tier=tier, client=client)
    def view():
        return flask.request.get_data()

    env = environ("/v", body=raw, chunked=True)
    code, h, body, _ = call(fl, env)
    assert code == 200 and h["RateLimit-Limit"] == "5" and body == raw


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversize_body_is_413_and_the_app_does_not_run(client, chunked):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model", max_body_bytes=16), client=client)
    fits = json_body({"model": "pro"})
    assert len(fits) == 16 and call(mw, environ(body=fits, chunked=chunked))[0] == 200
    code, h, body, status = call(mw, environ(body=json_body({"model": "pro", "x": 1}), chunked=chunked))
    assert code == 413 and app.bodies == [fits] and int(h["Content-Length"]) == len(body)
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and "16 bytes" in err["message"]
    assert client.peek("k", "pro").remaining == 3


def test_a_body_cut_short_is_not_admitted(client):
    app = EchoApp()
    mw = RateLimitMiddleware(app, key="k", tier=json_field("model"), client=client)
    env = environ(body=b'{"model": "pro"}')
    env["CONTENT_LENGTH"] = "100"  # the client went away after 16 bytes of valid JSON
    code, _, body, _ = call(mw, env)
    assert code == 400 and json.loads(body)["error"]["code"] == "incomplete_body" and not app.bodies
    assert request_body(env) is None

    class Broken(io.RawIOBase):
        def read(self, n=-1):
            raise OSError("client disconnected")

    env = environ(body=b"")
    env["wsgi.input"], env["CONTENT_LENGTH"] = Broken(), "10"
    with pytest.raises(OSError):  # the server's own error, as when the app reads it
        call(mw, env)
    assert not app.bodies and client.peek("k", "pro").remaining == 4


# --- tiers the request names, headers ------------------------------------------------------------------

@pytest.mark.parametrize("on_error", ["deny", "allow"])
def test_an_unknown_tier_chosen_by_the_request_is_400_even_with_allow(client, on_error):
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier=header("x-tier"), client=client, on_error=on_error)
    code, _, body, _ = call(mw, environ(headers={"x-tier": "gold" * 50}))
    assert code == 400 and app.calls == 0
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "tier" and "goldgold" in err["message"]
    mw = RateLimitMiddleware(app, key="k", tier="gold", client=client, on_error=on_error)
    assert call(mw, environ())[0] == (200 if on_error == "allow" else 503), "a constant tier: configuration"


def test_the_decisions_headers_replace_the_apps(client):
    def app(environ, start_response):
        start_response("200 OK", [("ratelimit-limit", "999"), ("X-App", "1"), ("X-RATELIMIT-REMAINING-REQUESTS", "7"),
                                  ("RateLimit-Limit", "998"), ("Retry-After", "9")])
        return [b"ok"]

    started = []
    mw = RateLimitMiddleware(app, key="k", tier="pro", client=client)
    b"".join(mw(environ(), lambda status, headers, exc_info=None: started.append(headers)))
    names = [k.lower() for k, _ in started[0]]
    assert len(names) == len(set(names)), started[0]
    h = {k.lower(): v for k, v in started[0]}
    assert h["ratelimit-limit"] == "5" and h["x-ratelimit-remaining-requests"] == "4" and h["x-app"] == "1"
    assert h["retry-after"] == "9"

    fl = flask.Flask(__name__)

    @fl.get("/v")
    @limit(key="k", tier="pro", client=client)
    def view():
        return "v", 200, {"ratelimit-limit": "999"}

    r = fl.test_client().get("/v")
    assert r.headers.getlist("RateLimit-Limit") == ["5"]


# --- the Flask decorator ----------------------------------------------------------------------------

def test_flask_decorator(client):
    app = flask.Flask(__name__)
    calls = []

    def key(environ):  # the API key and the model: one limit per (key, model)
        api_key = header("x-api-key")(environ)
        return api_key and f"{api_key}:{flask.request.view_args['model']}"

    @app.post("/v1/chat/<model>")
    @limit(key=key,
           tier="pro", cost=lambda env: flask.request.get_json()["n"], client=client)
    def chat(model):
        calls.append(model)
        return {"model": model}

    @app.get("/v1/async")
    @limit(key=header("x-api-key"), tier="free", client=client)
    async def async_view():
        return "async ok", 201, {"X-View": "1"}

    assert chat.__name__ == "chat", "functools.wraps"
    tc = app.test_client()
    r = tc.post("/v1/chat/llama", json={"n": 3}, headers=KEY)
    assert r.status_code == 200 and r.json == {"model": "llama"}
    assert r.headers["RateLimit-Limit"] == "5" and r.headers["RateLimit-Remaining"] == "2"
    r = tc.post("/v1/chat/llama", json={"n": 3}, headers=KEY)
    assert r.status_code == 429 and calls == ["llama"]
    assert r.headers["Retry-After"] == "2" and r.headers["RateLimit-Remaining"] == "2"
    assert r.json["error"]["type"] == "rate_limit_exceeded" and r.mimetype == "application/json"
    assert tc.post("/v1/chat/mistral", json={"n": 3}, headers=KEY).status_code == 200, "key includes the model"
    assert client.peek("cust-1:llama", "pro", cost=2).allowed

    r = tc.post("/v1/chat/llama", json={"n": 1})
    assert r.status_code == 400 and r.json["error"]["type"] == "missing_rate_limit_key"
    r = tc.post("/v1/chat/llama", json={"n": 99}, headers=KEY)
    assert r.status_code == 400 and r.json["error"]["type"] == "invalid_request_error"

    try:
        import asgiref  # noqa: F401  (Flask runs async views through asgiref)
    except ImportError:
        return
    r = tc.get("/v1/async", headers=KEY)
    assert r.status_code == 201 and r.data == b"async ok" and r.headers["X-View"] == "1"
    assert r.headers["RateLimit-Limit"] == "2" and r.headers["RateLimit-Remaining"] == "1"
    tc.get("/v1/async", headers=KEY)
    assert tc.get("/v1/async", headers=KEY).status_code == 429
    assert tc.get("/v1/async").status_code == 400


def test_flask_decorator_and_view_both_read_the_json_body(client):
    app = flask.Flask(__name__)
    seen = []

    @app.post("/v1/completions")
    @limit(key=json_field("user"), tier=lambda env: MODELS.get(json_field("model")(env)), client=client)
    def completions():
        seen.append(flask.request.get_json())
        return {"echo": flask.request.get_json()["prompt"], "raw": flask.request.get_data(as_text=True)}

    @app.post("/v1/small")
    @limit(key="k", tier=json_field("model", max_body_bytes=8), client=client)
    def small():
        raise AssertionError("must not run")

    tc = app.test_client()
    payload = {"user": "u-1", "model": "small-model", "prompt": "caf\u00e9"}
    r = tc.post("/v1/completions", json=payload)
    assert r.status_code == 200 and r.json["echo"] == "caf\u00e9" and json.loads(r.json["raw"]) == payload
    assert r.headers["RateLimit-Limit"] == "2" and seen == [payload]
    r = tc.post("/v1/completions", data=b"{oops", content_type="application/json")
    assert r.status_code == 400 and r.json["error"]["param"] == "key" and len(seen) == 1
    r = tc.post("/v1/small", json={"model": "pro"})
    assert r.status_code == 413 and r.json["error"]["type"] == "invalid_request_error"


class CountingStream:
    """A chunked body of ``size`` bytes made as it is read; counts what was read."""

    def __init__(self, size: int, head: bytes = b"") -> None:
        self.head, self.left, self.read_bytes = head, size - len(head), 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = len(self.head) + self.left
        out, self.head = self.head[:n], self.head[n:]
        more = min(n - len(out), self.left)
        self.left -= more
        out += b"x" * more
        self.read_bytes += len(out)
        return out

    def readline(self, n=-1):
        return self.read(n)


def test_a_chunked_body_is_read_only_to_its_bound_in_a_flask_view(client):
    app = flask.Flask(__name__)
    seen = []

    @app.post("/v1/completions")
    @limit(key="k", tier=json_field("model", max_body_bytes=1000), client=client)
    def completions():
        seen.append(flask.request.get_json())
        return {"prompt": flask.request.get_json()["prompt"]}

    mw = RateLimitMiddleware(App(), key="k", tier=json_field("model", max_body_bytes=1000), client=client)
    def chunked(body):  # as gunicorn gives a chunked request: no CONTENT_LENGTH, a terminated stream
        env = environ("/v1/completions", headers={"transfer-encoding": "chunked"}, body=body, chunked=True)
        env["CONTENT_TYPE"] = "application/json"
        return env

    for target in (app, mw):
        env = chunked(b"")
        env["wsgi.input"] = stream = CountingStream(50 << 20, head=b'{"model": "pro", "prompt": "')
        code, _, body, _ = call(target, env)
        assert code == 413 and "1000 bytes" in json.loads(body)["error"]["message"]
        assert stream.read_bytes <= 1001, f"{stream.read_bytes} bytes read for a 1000-byte bound"
    assert not seen

    raw = json_body({"model": "pro", "prompt": "caf\u00e9"})
    code, h, body, _ = call(app, chunked(raw))
    assert code == 200 and json.loads(body) == {"prompt": "caf\u00e9"} and h["RateLimit-Remaining"] == "4"
    assert seen == [json.loads(raw)], "the view's request.get_json() reads the body sluice read"


@pytest.mark.parametrize("as_a_server", [True, False])
def test_the_middleware_in_front_of_flask_leaves_the_view_its_body(client, as_a_server):
    app = flask.Flask(__name__)
    seen = []

    @app.post("/v1/completions")
    def completions():
        seen.append((flask.request.get_json(), flask.request.content_length))
        return {"prompt": flask.request.get_json()["prompt"]}

    mw = RateLimitMiddleware(app.wsgi_app, key=header("x-api-key"), tier=json_field("model"), client=client)

    def server_environ(environ, start_response):
        # Werkzeug's test client puts its own request in the environ; a real server
        # (gunicorn) does not, and the body then comes from wsgi.input.
        if as_a_server:
            del environ["werkzeug.request"]
        return mw(environ, start_response)

    app.wsgi_app = server_environ
    tc = app.test_client()
    payload = {"model": "pro", "prompt": "x" * 5000}
    r = tc.post("/v1/completions", json=payload, headers=KEY)
    assert r.status_code == 200 and r.json == {"prompt": "x" * 5000} and r.headers["RateLimit-Remaining"] == "4"
    assert seen == [(payload, len(json.dumps(payload)))]
    r = tc.post("/v1/completions", json={"prompt": "p"}, headers=KEY)
    assert r.status_code == 400 and r.json["error"]["param"] == "tier" and len(seen) == 1


def test_flask_decorator_fails_closed(client):
    app = flask.Flask(__name__)

    @app.get("/a")
    @limit(key="k", tier="gold", client=client)
    def a():
        raise AssertionError("must not run")

    @app.get("/b")
    @limit(key="k", tier="gold", client=client, on_error="allow")
    def b():
        return "b"

    r = app.test_client().get("/a")
    assert r.status_code == 503 and r.json["error"]["type"] == "rate_limiter_unavailable"
    r = app.test_client().get("/b")
    assert r.status_code == 200 and r.data == b"b" and "RateLimit-Limit" not in r.headers


# --- Flask under gunicorn -w 4 ----------------------------------------------------------------------

def test_flask_under_gunicorn_with_4_workers_shares_one_exact_limit(daemon, tmp_path):
    argv = lambda port: [PYTHON, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}", "--timeout", "30",
                         "--graceful-timeout", "5", "--log-level", "warning", "flask_app:app"]
    with serve(argv, tmp_path / "gunicorn.log", {"SLUICE_SEGMENT": daemon.segment}) as server:
        warm = server.warm_pids(4)
        assert len(warm) >= 2, f"workers that answered: {warm}\n{server.log_tail()}"
        assert server.get("/v1/mw").status == 400
        assert server.get("/v1/decorated").status == 400

        ok1, denied1, pids1 = run_bursts(server, "/v1/decorated", "flask-decorated", PRO_LIMIT)
        ok2, denied2, pids2 = run_bursts(server, "/v1/mw", "flask-mw", PRO_LIMIT)
        assert len(pids1) >= 2 and len(pids2) >= 2, f"one worker served a whole burst: {pids1} {pids2}"

        # POST: the tier named in the JSON body; the view reads the same body after the decorator.
        prompt = "caf\u00e9 " + "x" * 3000
        raw = json.dumps({"model": "pro", "prompt": prompt}).encode()

        def echoed(r):
            assert r.json()["prompt"] == prompt and r.json()["model"] == "pro", r.body[:200]

        r = server.get("/v1/completions", {"x-api-key": "k"}, body=b"{not json")
        assert r.status == 400 and r.json()["error"]["param"] == "tier", r.body
        r = server.get("/v1/completions", {"x-api-key": "k"}, body=json.dumps({"model": "gold", "prompt": "p"}).encode())
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        ok3, denied3, pids3 = run_bursts(server, "/v1/completions", "flask-body", PRO_LIMIT, body=raw, check_ok=echoed)
        assert len(pids3) >= 2, f"one worker served the whole burst: {pids3}"

    pro = daemon.status()["tiers"][1]
    assert pro["name"] == "pro"
    assert pro["admitted"] == ok1 + ok2 + ok3, "the daemon's counter equals the 200s the clients saw"
    assert pro["denied_window"] == denied1 + denied2 + denied3
