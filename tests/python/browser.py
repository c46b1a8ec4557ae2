"""Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe
(fds 3/4, NUL-separated JSON; standard library only), for tests that render a page
and must see its console errors, uncaught exceptions, dialogs and requests."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    """Headless Chromium over the DevTools protocol on --remote-debugging-pipe."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_r, self._w = os.pipe()
        self._r, from_w = os.pipe()
        # fds >= 10, so that 3<&N 4>&M cannot clobber one with the other (bash, since
        # dash takes one-digit fds only)
        a = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        b = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_r)
        os.close(from_w)
        self._log = open(log, "wb")
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={profile}", "--remote-debugging-pipe",
               "--window-size=1280,2400", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "about:blank"]
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", f'exec "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-', "bash", *cmd],
            pass_fds=(a, b), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        os.close(a)
        os.close(b)
        self._q: queue.Queue = queue.Queue()
        self._next = 0
        self._responses: dict[int, dict] = {}
        self.events: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()
        self.call("Browser.getVersion", timeout=30)

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._q.put(None)
                return
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs:
                self._q.put(json.loads(m))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        return self._next

    def _pump(self, deadline: float) -> bool:
        """Handles one message; False when the deadline passed."""
        try:
            msg = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if msg is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        if "id" in msg:
            self._responses[msg["id"]] = msg
        else:
            self.events.append(msg)
            if msg.get("method") == "Page.javascriptDialogOpening":
                self.send("Page.handleJavaScriptDialog", {"accept": False}, msg.get("sessionId"))
        return True

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 20) -> dict:
        i = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while i not in self._responses:
            if not self._pump(deadline):
                raise TimeoutError(f"{method}: no answer in {timeout} s")
        msg = self._responses.pop(i)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._pump(deadline):
            pass

    def wait_event(self, method: str, session: str, start: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method and e.get("sessionId") == session
                      for e in self.events[start:]):
            if not self._pump(deadline):
                raise TimeoutError(f"no {method} in {timeout} s")

    def check(self, page: Path, hover: str | None = None, at: float = 0.6) -> dict:
        """Loads page in a new tab, moves the mouse over the element `hover` (a CSS
        selector) if given, `at` of its width from the left; returns errors, warnings,
        requests, dialogs and the tooltip's (display, text)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        start = len(self.events)
        for m in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            self.call(m, session=session)
        self.call("Page.navigate", {"url": page.as_uri()}, session)
        self.wait_event("Page.loadEventFired", session, start)
        self.settle(0.5)  # late timers, late console messages
        result: dict = {"tip": None}
        if hover:
            rect = self.evaluate(session, "(() => { const e = document.querySelector("
                                 f"{json.dumps(hover)}); e.scrollIntoView();"
                                 "const r = e.getBoundingClientRect();"
                                 f"return [r.left + r.width * {at}, r.top + r.height / 2]; }})()")
            for x in (rect[0] - 200, rect[0]):
                self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x,
                                                       "y": rect[1]}, session)
            self.settle(0.3)
            result["tip"] = self.evaluate(
                session, "(() => { const t = document.getElementById('tip');"
                "return t ? [getComputedStyle(t).display, t.textContent] : null; })()")
        self.settle(0.2)
        errors, warnings, requests, dialogs = [], [], [], []
        for e in self.events[start:]:
            if e.get("sessionId") != session and e.get("method") != "Target.targetCrashed":
                continue
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                errors.append("exception: " + str(d.get("exception", {}).get("description")
                                                  or d.get("text")))
            elif m == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", "")))
                                for a in p.get("args", []))
                if p.get("type") in ("error", "assert"):
                    errors.append(f"console.{p['type']}: {text}")
                elif p.get("type") == "warning":
                    warnings.append(f"console.warn: {text}")
            elif m == "Log.entryAdded":
                entry = p.get("entry", {})
                if entry.get("level") == "error":
                    errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
                elif entry.get("level") == "warning":
                    warnings.append(f"log: {entry.get('text')}")
            elif m == "Network.requestWillBeSent":
                requests.append(p.get("request", {}).get("url"))
            elif m == "Page.javascriptDialogOpening":
                dialogs.append(p.get("message"))
                errors.append(f"dialog: {p.get('type')} {p.get('message')}")
            elif m in ("Target.targetCrashed", "Inspector.targetCrashed"):
                errors.append("crashed")
        self.call("Target.closeTarget", {"targetId": target})
        result.update(errors=errors, warnings=warnings, requests=requests, dialogs=dialogs)
        return result

    def evaluate(self, session: str, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
