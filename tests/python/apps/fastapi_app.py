"""FastAPI app for test_asgi.py, served by `uvicorn --workers 4` with SLUICE_SEGMENT set.

/v1/models/{model}/chat is limited per x-api-key on tier "pro"; /healthz is exempt.
Every response (the middleware's 429s included) carries x-pid: the worker's pid.
"""

import os

from fastapi import FastAPI

from sluice.asgi import RateLimitMiddleware, header

app = FastAPI()


@app.get("/v1/models/{model}/chat")
async def chat(model: str) -> dict:
    return {"pid": os.getpid(), "model": model}


@app.get("/healthz")
async def healthz() -> dict:
    return {"pid": os.getpid()}


class PidHeader:
    """Outermost ASGI wrapper: tells the test which worker answered."""

    def __init__(self, app):
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope, receive, send):
        async def send_pid(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-pid", self.pid)]
            await send(message)

        await self.app(scope, receive, send_pid if scope["type"] == "http" else send)


# add_middleware: the last one added is the outermost.
app.add_middleware(RateLimitMiddleware, key=header("x-api-key"), tier="pro",
                   exempt=lambda scope: scope["path"] == "/healthz")
app.add_middleware(PidHeader)
