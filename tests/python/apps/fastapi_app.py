"""FastAPI app for test_asgi.py, served by `uvicorn --workers 4` with SLUICE_SEGMENT set.

/v1/models/{model}/chat is limited per x-api-key on tier "pro"; POST /v1/completions
per x-api-key on the tier its JSON body names in "model" (its handler parses the
same body with pydantic); /healthz is exempt. Every response (the middleware's 429s
included) carries x-pid: the worker's pid.
"""

import os

from fastapi import FastAPI
from pydantic import BaseModel

from sluice.asgi import RateLimitMiddleware, header, json_field

app = FastAPI()


class Completion(BaseModel):
    model: str
    prompt: str


@app.post("/v1/completions")
async def completions(req: Completion) -> dict:
    return {"pid": os.getpid(), "model": req.model, "prompt": req.prompt}


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


async def not_completions(scope) -> bool:  # async: the middleware must await it
    return scope["path"] != "/v1/completions"


# add_middleware: the last one added is the outermost.
app.add_middleware(RateLimitMiddleware, key=header("x-api-key"), tier=json_field("model"),
                   exempt=not_completions)
app.add_middleware(RateLimitMiddleware, key=header("x-api-key"), tier="pro",
                   exempt=lambda scope: scope["path"] in ("/healthz", "/v1/completions"))
app.add_middleware(PidHeader)
