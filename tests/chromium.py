"""Look at a page the way a reader does: headless Chromium driven over the DevTools protocol on
a pipe (``--remote-debugging-pipe``, no port, no extra package). :func:`look` loads a file at
a given width and returns what a person would notice: console errors (a Content-Security-Policy
violation is one), requests that left the file, the page's width against the window's, the
sections present, and a full-page screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@dataclass
class Look:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)   # every URL but the page's own and data:
    scroll_width: int = 0
    window_width: int = 0
    sections: list[str] = field(default_factory=list)
    overflowing: list[str] = field(default_factory=list)  # elements past the right edge
    screenshot: bytes = b""
    seconds: float = 0.0


class _Pipe:
    def __init__(self, exe: str, profile: str) -> None:
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds() -> None:  # the protocol's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


PROBE = """JSON.stringify({
  scroll: document.documentElement.scrollWidth, window: window.innerWidth,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  over: [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                 && !e.closest('.scroll, pre'))
    .map(e => e.tagName + (e.id ? '#' + e.id : '')).slice(0, 20)})"""


def look(page: Path, width: int = 1280, height: int = 900) -> Look:
    exe = browser()
    if exe is None:
        raise RuntimeError("no Chromium on this machine (apt-get install chromium)")
    start = time.monotonic()
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(exe, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target,
                                                          "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": False}, session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            time.sleep(0.5)  # late console messages (CSP reports arrive after load)
            probe = json.loads(pipe.send("Runtime.evaluate", {"expression": PROBE,
                                                              "returnByValue": True},
                                         session=session)["result"]["value"])
            size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = pipe.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": min(size["height"], 16000),
                         "scale": 1}}, session=session)["data"]
        finally:
            pipe.close()
    result = Look(scroll_width=probe["scroll"], window_width=probe["window"],
                  sections=probe["sections"], overflowing=probe["over"],
                  screenshot=base64.b64decode(shot), seconds=time.monotonic() - start)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                  for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            req = params["request"]["url"]
            if req != url and not req.startswith("data:"):
                result.requests.append(req)
    return result


if __name__ == "__main__":  # the README's screenshot: python tests/chromium.py PAGE OUT.png
    import argparse
    import io

    from PIL import Image

    parser = argparse.ArgumentParser(description="Screenshot a page's top at a given width.")
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500, help="crop the full page to this")
    args = parser.parse_args()
    seen = look(args.page, width=args.width)
    im = Image.open(io.BytesIO(seen.screenshot))
    im.crop((0, 0, im.width, min(args.height, im.height))).save(args.out, optimize=True)
    print(f"{args.out}: {args.width} px wide; load and checks took {seen.seconds:.1f} s; "
          f"console errors {len(seen.console_errors)}, requests {len(seen.requests)}")
