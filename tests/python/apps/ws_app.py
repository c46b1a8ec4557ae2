"""A raw ASGI app for test_asgi.py's websocket test, served by uvicorn (wsproto)
with SLUICE_SEGMENT set: /healthz answers 200 (exempt); a websocket handshake is
limited per x-api-key on tier "tiny" (1 a minute), then accepted and sent "hello"."""

from sluice.asgi import RateLimitMiddleware, header


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        await send({"type": "websocket.close", "code": 1000})


app = RateLimitMiddleware(app, key=header("x-api-key"), tier="tiny", websocket=True,
                          exempt=lambda scope: scope["path"] == "/healthz")
