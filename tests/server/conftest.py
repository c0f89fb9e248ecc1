"""Black-box tests of `nibble serve` over HTTP (run by ctest through tests/server/run.sh).

The server under test is the real binary on the CPU with the bundled demo model and its two
adapters. NIBBLE_BINARY_DIR names the build folder (default: build), NIBBLE_SOURCE_DIR the repository.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

SOURCE_DIR = Path(os.environ.get("NIBBLE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BINARY_DIR = Path(os.environ.get("NIBBLE_BINARY_DIR", SOURCE_DIR / "build"))
NIBBLE = BINARY_DIR / "nibble"
DEMO = SOURCE_DIR / "models" / "demo"
ADAPTERS = {"kjv": DEMO / "adapters" / "kjv", "devil": DEMO / "adapters" / "devil"}


class Server:
    """A running `nibble serve`: its URL, port and output; stop() sends SIGTERM and returns the exit code."""

    def __init__(self, args, env=None, ready_timeout=120):
        cmd = [str(NIBBLE), "serve", str(DEMO), "--port", "0", "--quiet", *args]
        self.proc = subprocess.Popen(cmd, cwd=SOURCE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "NIBBLE_THREADS": "2", **(env or {})})
        self.stdout_lines, self.stderr_lines = [], []
        self._ready = threading.Event()
        self.port = None
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(ready_timeout) or self.port is None:
            self.proc.kill()
            raise RuntimeError("nibble serve did not become ready:\n" + self.output())
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_stdout(self):
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            m = re.search(r"ready on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def output(self):
        return "".join(self.stdout_lines) + "".join(self.stderr_lines)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    # Plain HTTP, for what the openai client cannot send (malformed bodies, raw streams).
    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, data.decode("utf-8", "replace"), dict(resp.getheaders())

    def post_json(self, path, body, headers=None):
        status, text, _ = self.request("POST", path, body, headers)
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def metrics(self):
        from prometheus_client.parser import text_string_to_metric_families
        status, text, headers = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def nibble_tokenize(text):
    out = subprocess.run([str(NIBBLE), "tokenize", str(DEMO), text, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ids"]


def nibble_generate(prompt_ids, max_tokens, adapter=None):
    """Greedy text of `nibble generate` (one row) for token ids, with or without an adapter."""
    cmd = [str(NIBBLE), "generate", str(DEMO), "--prompt-ids", ",".join(map(str, prompt_ids)),
           "--max-tokens", str(max_tokens), "--temperature", "0", "--quiet"]
    if adapter:
        cmd += ["--lora", f"{adapter}={ADAPTERS[adapter]}", "--adapter", adapter]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=SOURCE_DIR,
                         env={**os.environ, "NIBBLE_THREADS": "2"})
    assert out.stdout.endswith("\n"), out.stdout
    return out.stdout[:-1]


def default_server_args():
    return [arg for name, path in ADAPTERS.items() for arg in ("--lora", f"{name}={path}")]


@pytest.fixture(scope="session")
def server():
    if not NIBBLE.exists():
        pytest.fail(f"{NIBBLE} does not exist: build first (NIBBLE_BINARY_DIR={BINARY_DIR})")
    s = Server(default_server_args())
    yield s
    code = s.stop()
    assert code == 0, "nibble serve did not exit cleanly on SIGTERM:\n" + s.output()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def wait_until(predicate, timeout=10.0, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
