"""sluice.wsgi over a real sluiced: the middleware driven directly (allow, deny,
headers, missing key, bad key/cost, limiter errors failing closed, the opt-in allow,
exempt paths), the Flask decorator through Flask's test client, then a Flask app
under `gunicorn -w 4` whose workers must share one exact limit."""

from __future__ import annotations

import json
import logging
from wsgiref.util import setup_testing_defaults

import pytest

import sluice.asgi
from apps.server import PRO_LIMIT, PYTHON, run_bursts, serve
from sluice.wsgi import RateLimitMiddleware, client_host, header, limit, path_regex, path_segment

flask = pytest.importorskip("flask")


class App:
    """A plain WSGI app: 200 'ok' with its own header; records each call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        return [b"o", b"k"]


def environ(path="/v1/chat", headers=None, remote="10.1.2.3"):
    env = {"PATH_INFO": path, "REQUEST_METHOD": "POST", "REMOTE_ADDR": remote}
    for k, v in (headers or {}).items():
        env["HTTP_" + k.upper().replace("-", "_")] = v
    setup_testing_defaults(env)
    return env


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


def test_exempt_passes_through_without_the_limiter():
    app = App()
    mw = RateLimitMiddleware(app, key="k", tier="pro", segment="sluicetest-py-no-such-segment",
                             exempt=lambda env: env["PATH_INFO"] == "/healthz")
    code, h, body, _ = call(mw, environ("/healthz"))
    assert (code, body) == (200, b"ok") and "RateLimit-Limit" not in h
    assert call(mw, environ("/v1"))[0] == 503


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        RateLimitMiddleware(App(), key="k", tier="pro", on_error="ignore")
    with pytest.raises(ValueError):
        limit(key="k", tier="pro", cost=-1)


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

    pro = daemon.status()["tiers"][1]
    assert pro["name"] == "pro"
    assert pro["admitted"] == ok1 + ok2, "the daemon's counter equals the 200s the clients saw"
    assert pro["denied_window"] == denied1 + denied2
