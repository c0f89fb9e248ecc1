"""The web page at / in headless Chromium (Debian's chromium-headless-shell, or chromium): pick an
adapter from the list the page loaded from /v1/models, type a message, press Enter, and read the
answer the page streamed; it must equal the same chat request made over the API.

Chromium is driven through the DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out,
NUL-separated JSON), so no WebSocket library is needed. Skipped when no Chromium is installed
(scripts/install-deps installs chromium-headless-shell).
"""
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import wait_until

CHROMIUM = next((shutil.which(b) for b in ("chromium-headless-shell", "chromium", "chromium-browser")
                 if shutil.which(b)), None)


class DevTools:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="nibble-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: a shell puts the pipe ends there
        # (moved to fds >= 10 first, so that the redirections cannot overwrite each other).
        r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        headless = [] if CHROMIUM.endswith("headless-shell") else ["--headless"]
        args = [CHROMIUM, *headless, "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
                f"--user-data-dir={self.profile}", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', "bash", *args],
                                     pass_fds=(r, w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r)
        os.close(w)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        while True:  # replies and events come in order; skip events
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def attach_page(self):
        for _ in range(100):
            pages = [t for t in self.send("Target.getTargets", session=False)["targetInfos"] if t["type"] == "page"]
            if pages:
                self.session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True},
                                         session=False)["sessionId"]
                return
            time.sleep(0.05)
        raise RuntimeError("no page target")

    def eval(self, expression):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", session=False)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium-headless-shell or chromium installed")
def test_chat_page_streams_an_answer(server):
    browser = DevTools()
    try:
        browser.attach_page()
        browser.send("Page.enable")
        browser.send("Page.navigate", {"url": server.url + "/"})
        assert wait_until(lambda: (browser.eval("document.getElementById('model') ? "
                                                "document.getElementById('model').options.length : 0") or 0) >= 3, 20)
        options = browser.eval("[...document.getElementById('model').options].map(o => o.value)")
        assert options[0] == "demo" and set(options[1:]) == {"kjv", "devil"}
        browser.eval("document.getElementById('model').value = 'kjv';"
                     "document.getElementById('temperature').value = '0';"
                     "document.getElementById('max-tokens').value = '24';"
                     "document.getElementById('input').focus()")
        question = "Who made the heaven?"
        browser.send("Input.insertText", {"text": question})
        for kind in ("keyDown", "keyUp"):
            browser.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                    "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13})
        assert wait_until(lambda: browser.eval("document.getElementById('status').textContent") in ("done", "error"), 60)
        status = browser.eval("document.getElementById('status').textContent")
        errors = browser.eval("[...document.querySelectorAll('.msg.error')].map(e => e.textContent)")
        assert status == "done", errors
        user = browser.eval("document.querySelector('.msg.user').textContent")
        answer = browser.eval("document.querySelector('.msg.assistant').firstChild.textContent")
        meta = browser.eval("document.querySelector('.msg.assistant .meta').textContent")
    finally:
        browser.close()
    assert user == question
    status, body = server.post_json("/v1/chat/completions", {
        "model": "kjv", "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24})
    assert status == 200
    assert answer == body["choices"][0]["message"]["content"] and answer
    assert meta.startswith("finish: " + body["choices"][0]["finish_reason"])
    assert f"{body['usage']['completion_tokens']} tokens" in meta
