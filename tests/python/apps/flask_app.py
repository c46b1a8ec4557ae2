"""Flask app for test_wsgi.py, served by `gunicorn -w 4` with SLUICE_SEGMENT set.

/v1/decorated is limited by the @limit decorator, /v1/mw by the WSGI middleware
(both per x-api-key on tier "pro"); POST /v1/completions by the decorator on the
tier its JSON body names in "model" (the view reads the same body with get_json);
/healthz is unlimited. Every response carries x-pid: the worker's pid.
"""

import os

from flask import Flask, request

from sluice.wsgi import RateLimitMiddleware, header, json_field, limit

app = Flask(__name__)


@app.get("/v1/decorated")
@limit(key=header("x-api-key"), tier="pro")
def decorated():
    return {"pid": os.getpid()}


@app.post("/v1/completions")
@limit(key=header("x-api-key"), tier=json_field("model"))
def completions():
    body = request.get_json()
    return {"pid": os.getpid(), "model": body["model"], "prompt": body["prompt"]}


@app.get("/v1/mw")
def mw():
    return {"pid": os.getpid()}


@app.get("/healthz")
def healthz():
    return {"pid": os.getpid()}


def pid_header(wsgi_app):
    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("x-pid", str(os.getpid()))], exc_info)

        return wsgi_app(environ, start)

    return wrapped


app.wsgi_app = pid_header(RateLimitMiddleware(
    app.wsgi_app, key=header("x-api-key"), tier="pro",
    exempt=lambda environ: not environ.get("PATH_INFO", "").startswith("/v1/mw")))
