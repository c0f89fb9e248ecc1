"""A bounded load test of `nibble serve` (CPU, demo model).

CLIENTS clients send requests for SECONDS seconds: random prompts, random adapters (more adapters
than --max-loras and --max-cpu-loras, so adapters are evicted and reloaded), streamed or not; some
cancel mid-stream or hang up while waiting; one adapter is loaded and another unloaded during the
traffic. Every response that ran to its end must equal its solo greedy output (token for token and
text); afterwards /metrics must show no running or waiting sequence and no KV block in use, and the
server must still answer and exit 0 on SIGTERM.

    python tests/server/load_test.py --clients 128 --seconds 60     # the full size
    pytest tests/server/load_test.py                                 # NIBBLE_LOAD_CLIENTS / _SECONDS, default 32 x 20
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ADAPTERS, Server, nibble_tokenize, wait_until  # noqa: E402

TEXTS = ["It is a truth universally acknowledged", "In the beginning God", "ABSURDITY, n.", "Emma Woodhouse, handsome",
         "And the LORD said unto Moses", "She was", "The", "Mr. Darcy"]
MAX_TOKENS = 24
# Copies of the two demo adapters under more names: 2 + 5 names for 2 device slots and 3 in memory.
COPIES = {"k1": "kjv", "k2": "kjv", "d1": "devil", "d2": "devil", "late": "kjv"}


def request_raw(port, body, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def read_stream(resp, cancel_after=None):
    """Token ids, text and finish of an SSE completion; stops reading after `cancel_after` events."""
    ids, text, finish, events = [], "", None, 0
    buffer = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            raise RuntimeError("stream ended without [DONE]")
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            data = event[6:]
            if data == b"[DONE]":
                return ids, text, finish
            j = json.loads(data)
            if "error" in j:
                raise RuntimeError(f"stream error: {j}")
            for c in j["choices"]:
                ids += c.get("token_ids") or []
                text += c["text"]
                finish = c["finish_reason"] or finish
            events += 1
            if cancel_after is not None and events >= cancel_after:
                return None


class Load:
    def __init__(self, server, clients, seconds, seed):
        self.s = server
        self.clients = clients
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = Counter()
        self.failures = []
        self.available = ["demo", "kjv", "devil", "k1", "k2", "d1", "d2"]
        self.unloaded_at = None  # the time "d2" started unloading
        self.prompts = [nibble_tokenize(t) for t in TEXTS]
        self.reference = {}

    def solo(self, model, p):
        status, body = self.s.post_json("/v1/completions", {"model": model, "prompt": self.prompts[p],
                                                            "max_tokens": MAX_TOKENS, "temperature": 0,
                                                            "return_token_ids": True})
        assert status == 200, body
        c = body["choices"][0]
        return c["token_ids"], c["text"], c["finish_reason"]

    def compute_references(self):
        # One request at a time: the solo greedy output of every (prompt, adapter source).
        for p in range(len(self.prompts)):
            for model in ("demo", "kjv", "devil"):
                self.reference[(model, p)] = self.solo(model, p)
        # Copies answer exactly as their source (checked once each, solo).
        for name, source in COPIES.items():
            if name in self.available:
                assert self.solo(name, 0) == self.reference[(source, 0)], name

    def source(self, model):
        return COPIES.get(model, model)

    def fail(self, message):
        with self.lock:
            self.failures.append(message)

    def client(self, k, deadline):
        rng = random.Random(self.rng.random() + k)
        while time.monotonic() < deadline:
            with self.lock:
                model = rng.choice(self.available)
            p = rng.randrange(len(self.prompts))
            stream = rng.random() < 0.6
            action = rng.random()
            body = {"model": model, "prompt": self.prompts[p], "max_tokens": MAX_TOKENS, "temperature": 0,
                    "return_token_ids": True, "stream": stream}
            sent_at = time.monotonic()
            try:
                conn, resp = request_raw(self.s.port, body)
            except OSError as e:
                self.fail(f"connect: {e}")
                continue
            try:
                if resp.status == 404 and model == "d2" and self.unloaded_at is not None and sent_at >= self.unloaded_at - 1:
                    resp.read()
                    self.count("404 after unload")
                    continue
                if resp.status != 200:
                    self.fail(f"{model} {p}: HTTP {resp.status} {resp.read()[:300]!r}")
                    continue
                if stream and action < 0.15:  # cancel mid-stream
                    read_stream(resp, cancel_after=rng.randint(1, 6))
                    conn.sock.shutdown(socket.SHUT_RDWR)
                    self.count("cancelled mid-stream")
                    continue
                if not stream and action < 0.05:  # hang up while waiting
                    time.sleep(rng.random() * 0.05)
                    conn.sock.shutdown(socket.SHUT_RDWR)
                    self.count("disconnected")
                    continue
                if stream:
                    got = read_stream(resp)
                else:
                    c = json.loads(resp.read())["choices"][0]
                    got = (c["token_ids"], c["text"], c["finish_reason"])
                expected = self.reference[(self.source(model), p)]
                if tuple(got) != tuple(expected):
                    self.fail(f"{model} prompt {p} stream={stream}: got {got}, solo {expected}")
                self.count("complete")
            except Exception as e:  # noqa: BLE001 - every failure is reported at the end
                self.fail(f"{model} prompt {p} stream={stream}: {type(e).__name__}: {e}")
            finally:
                conn.close()

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def admin(self, deadline, adapter_dir):
        # A third in: load "late"; two thirds in: unload "d2".
        time.sleep(self.seconds / 3)
        status, text, _ = self.s.request("POST", "/v1/load_lora_adapter",
                                         {"lora_name": "late", "lora_path": str(adapter_dir / "late")})
        if status != 200:
            self.fail(f"load late: {status} {text}")
        else:
            with self.lock:
                self.available.append("late")
        time.sleep(max(0.0, deadline - time.monotonic()) / 2)
        with self.lock:
            self.available.remove("d2")
            self.unloaded_at = time.monotonic()
        status, text, _ = self.s.request("POST", "/v1/unload_lora_adapter", {"lora_name": "d2"})
        if status != 200:
            self.fail(f"unload d2: {status} {text}")

    def run(self, adapter_dir):
        self.compute_references()
        deadline = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self.client, args=(k, deadline)) for k in range(self.clients)]
        threads.append(threading.Thread(target=self.admin, args=(deadline, adapter_dir)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def run_load(clients, seconds, seed=1):
    tmp = Path(tempfile.mkdtemp(prefix="nibble-load-"))
    try:
        for name, source in COPIES.items():
            shutil.copytree(ADAPTERS[source], tmp / name)
        args = [a for name, path in ADAPTERS.items() for a in ("--lora", f"{name}={path}")]
        args += ["--max-loras", "2", "--max-cpu-loras", "3", "--allowed-adapter-dir", str(tmp),
                 "--max-num-seqs", str(max(64, clients)), "--kv-cache-tokens", "8192"]
        s = Server(args)
        try:
            for name in COPIES:
                if name != "late":
                    status, text, _ = s.request("POST", "/v1/load_lora_adapter",
                                                {"lora_name": name, "lora_path": str(tmp / name)})
                    assert status == 200, text
            load = Load(s, clients, seconds, seed)
            started = time.monotonic()
            load.run(tmp)
            elapsed = time.monotonic() - started
            # Cancellations reach the engine asynchronously: give them a moment.
            idle = wait_until(lambda: (lambda m: m[("nibble_num_requests_running", ())] == 0
                                       and m[("nibble_num_requests_waiting", ())] == 0
                                       and m[("nibble_kv_blocks_used", ())] == 0)(s.metrics()), 15)
            m = s.metrics()
            loads = sum(v for (name, _), v in m.items() if name == "nibble_adapter_loads_total")
            evictions = sum(v for (name, _), v in m.items() if name == "nibble_adapter_evictions_total")
            summary = (f"{clients} clients x {seconds} s ({elapsed:.1f} s with references): {dict(load.counts)}; "
                       f"adapter loads {loads:.0f}, evictions {evictions:.0f}; "
                       f"generated {m[('nibble_generation_tokens_total', ())]:.0f} tokens")
            print(summary)
            assert not load.failures, f"{len(load.failures)} failures, first: " + "\n".join(load.failures[:10])
            assert idle, "after the load: " + ", ".join(f"{k[0]}={m[(k[0], ())]}" for k in [
                ("nibble_num_requests_running",), ("nibble_num_requests_waiting",), ("nibble_kv_blocks_used",)])
            assert load.counts["complete"] > clients, summary
            assert evictions > 0 and loads > len(COPIES) + 2, "no adapter was evicted and reloaded: " + summary
            assert s.request("GET", "/health")[0] == 200
            models = [d["id"] for d in json.loads(s.request("GET", "/v1/models")[1])["data"]]
            assert "late" in models and "d2" not in models, models
        finally:
            code = s.stop()
        assert code == 0, "exit code %s\n%s" % (code, s.output()[-3000:])
    finally:
        shutil.rmtree(tmp)


def test_load():
    run_load(int(os.environ.get("NIBBLE_LOAD_CLIENTS", "32")), float(os.environ.get("NIBBLE_LOAD_SECONDS", "20")))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    run_load(a.clients, a.seconds, a.seed)
