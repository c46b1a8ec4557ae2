"""The LLM advisor inside a running sluiced, against a stub Ollama server on
loopback: a valid answer is published (actor "advisor", through governance); a
malformed one falls back to the rules and the fallback is in the audit trail."""

from __future__ import annotations

import http.server
import json
import threading
import time

import pytest

import sluice
from conftest import Daemon


class Stub(http.server.BaseHTTPRequestHandler):
    answer: dict | str = {}
    requests: list[dict] = []
    delay = 0.0  # seconds before answering, as a model thinks

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.requests.append({"path": self.path, "body": body})
        time.sleep(Stub.delay)
        content = Stub.answer if isinstance(Stub.answer, str) else json.dumps(Stub.answer)
        out = json.dumps({"model": "stub", "message": {"role": "assistant", "content": content}, "done": True})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    Stub.requests = []
    Stub.delay = 0.0
    yield server
    server.shutdown()
    Stub.delay = 0.0


def policy(port: int) -> dict:
    return {
        "segment": {"max_keys": 100},
        "tiers": [
            {"name": "enterprise", "limit": 10, "window_ms": 1000, "max_limit": 80, "revenue_per_request": 0.2},
            {"name": "free", "limit": 3, "window_ms": 1000, "max_limit": 9, "adaptive": False},
        ],
        "tick_ms": 200,
        "advisor": {"kind": "ollama", "url": f"http://127.0.0.1:{port}", "model": "stub", "timeout_ms": 1000},
    }


def audit(d: Daemon) -> list[dict]:
    return json.loads(d.ctl("audit", "--json").stdout)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_valid_advice_is_published_as_the_advisor(stub, tmp_path):
    Stub.answer = {"limits": {"enterprise": 14, "free": 3}, "confidence": 0.9, "rationale": "steady growth"}
    d = Daemon(tmp_path, policy(stub.server_address[1]))
    try:
        with sluice.Client(d.segment) as c:
            wait_for(lambda: c.peek("k", "enterprise").limit == 14)
        rec = wait_for(lambda: [a for a in audit(d) if a["event"] == "published" and a["actor"] == "advisor"])
        assert rec[0]["new_limit"] == 14 and "steady growth" in rec[0]["reason"]
        req = Stub.requests[0]
        assert req["path"] == "/api/chat" and req["body"]["stream"] is False and "format" in req["body"]
        assert "enterprise" in json.dumps(req["body"]["messages"])
    finally:
        d.stop()


def test_the_rules_do_not_undo_the_advice_while_the_next_answer_is_on_its_way(stub, tmp_path):
    # A model slower than a tick (300 ms against 200 ms ticks) leaves ticks with no
    # new answer. Those are not failures: had they fallen back to the rules, the
    # rules would pull the limit back to its baseline of 10 and the model push it
    # to 14 again, on alternate ticks.
    Stub.answer = {"limits": {"enterprise": 14, "free": 3}, "confidence": 0.9, "rationale": "steady growth"}
    Stub.delay = 0.3
    d = Daemon(tmp_path, policy(stub.server_address[1]))
    try:
        first = wait_for(lambda: [a for a in audit(d) if a["event"] == "published" and a["actor"] == "advisor"])
        time.sleep(2.0)  # about 10 ticks, 6 or 7 answers
        later = [a for a in audit(d) if a["event"] == "published" and a["id"] > first[0]["id"]]
        assert not [a for a in later if a["actor"] == "rules"], f"the rules undid the advice: {later}"
        assert len(Stub.requests) >= 4, "the advisor was asked on every free turn"
        with sluice.Client(d.segment) as c:
            assert c.peek("k", "enterprise").limit == 14
    finally:
        d.stop()


def test_malformed_advice_falls_back_to_rules_and_is_recorded(stub, tmp_path):
    Stub.answer = "this is not JSON"
    d = Daemon(tmp_path, policy(stub.server_address[1]))
    try:
        rec = wait_for(lambda: [a for a in audit(d) if a["event"] == "advisor"])
        assert "malformed" in rec[0]["reason"]
        with sluice.Client(d.segment) as c:
            assert c.peek("k", "enterprise").limit == 10
    finally:
        d.stop()


def test_a_refused_connection_falls_back(tmp_path):
    d = Daemon(tmp_path, policy(9))  # nothing listens on port 9
    try:
        rec = wait_for(lambda: [a for a in audit(d) if a["event"] == "advisor"])
        assert "refused" in rec[0]["reason"]
    finally:
        d.stop()
