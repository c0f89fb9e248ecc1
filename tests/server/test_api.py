"""The OpenAI-compatible API of `nibble serve`, through the official openai client where it can send
the request, and plain HTTP where it cannot (malformed bodies, size limits, raw streams)."""
import concurrent.futures as cf
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import openai
import pytest

from conftest import ADAPTERS, DEMO, Server, default_server_args, nibble_generate, nibble_tokenize, wait_until

PROMPTS = ["It is a truth universally acknowledged", "In the beginning", "ABSURDITY, n."]


def test_models_lists_base_and_adapters(client, server):
    models = client.models.list().data
    ids = [m.id for m in models]
    assert ids[0] == "demo" and set(ids[1:]) == {"kjv", "devil"}
    status, body = server.post_json("/v1/models", {})  # POST is not a route
    assert status == 404 and "error" in body
    status, text, _ = server.request("GET", "/v1/models")
    raw = json.loads(text)
    assert raw["object"] == "list"
    for m in raw["data"]:
        assert set(m) >= {"id", "object", "created", "owned_by", "root", "parent", "max_model_len"}
        assert m["object"] == "model" and m["owned_by"] == "nibble" and m["max_model_len"] == 512
        assert m["parent"] == (None if m["id"] == "demo" else "demo")


def test_completion(client):
    r = client.completions.create(model="demo", prompt="It is a truth", max_tokens=12, temperature=0)
    c = r.choices[0]
    assert r.object == "text_completion" and r.model == "demo"
    assert c.finish_reason in ("stop", "length") and isinstance(c.text, str) and c.text
    assert r.usage.prompt_tokens == len(nibble_tokenize("It is a truth"))
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat(client):
    r = client.chat.completions.create(model="kjv", messages=[{"role": "user", "content": "Who made the earth?"}],
                                       max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16


@pytest.mark.parametrize("adapter", [None, "kjv", "devil"])
def test_greedy_equals_nibble_generate(client, adapter):
    """Greedy text over HTTP equals `nibble generate` for the same token ids, alone."""
    for text in PROMPTS:
        ids = nibble_tokenize(text)
        expected = nibble_generate(ids, 24, adapter)
        r = client.completions.create(model=adapter or "demo", prompt=ids, max_tokens=24, temperature=0)
        assert r.choices[0].text == expected, (adapter, text)


def test_greedy_equals_nibble_generate_under_concurrency(client):
    """The same, while other requests (other adapters, sampled, streamed) run in the same batches."""
    cases = [(nibble_tokenize(t), a) for t in PROMPTS for a in (None, "kjv", "devil")]
    expected = {i: nibble_generate(ids, 24, a) for i, (ids, a) in enumerate(cases)}

    def greedy(i):
        ids, a = cases[i]
        return i, client.completions.create(model=a or "demo", prompt=ids, max_tokens=24, temperature=0).choices[0].text

    def noise(k):
        stream = client.completions.create(model=["demo", "kjv", "devil"][k % 3], prompt=PROMPTS[k % 3],
                                           max_tokens=40, temperature=1.0, seed=k, stream=True)
        return "".join(ch.choices[0].text for ch in stream if ch.choices)

    with cf.ThreadPoolExecutor(24) as pool:
        noise_jobs = [pool.submit(noise, k) for k in range(12)]
        results = dict(f.result() for f in [pool.submit(greedy, i) for i in range(len(cases)) for _ in range(2)])
        for f in noise_jobs:
            f.result()
    for i, text in results.items():
        assert text == expected[i], cases[i]


def test_streaming_with_usage(client):
    stream = client.chat.completions.create(model="devil", messages=[{"role": "user", "content": "Define love."}],
                                            max_tokens=20, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 20
    assert all(c.usage is None for c in chunks[:-1])
    full = client.chat.completions.create(model="devil", messages=[{"role": "user", "content": "Define love."}],
                                          max_tokens=20, temperature=0)
    assert full.choices[0].message.content == text
    assert full.usage.completion_tokens == chunks[-1].usage.completion_tokens


def test_raw_sse_framing(server):
    status, text, headers = server.request("POST", "/v1/completions",
                                           {"prompt": "In the beginning", "max_tokens": 8, "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: {") and "\n" not in e
        json.loads(e[6:])


def test_adapters_change_the_output(client):
    ids = nibble_tokenize("In the beginning")
    outs = {m: client.completions.create(model=m, prompt=ids, max_tokens=24, temperature=0).choices[0].text
            for m in ("demo", "kjv", "devil")}
    assert len(set(outs.values())) == 3, outs


def test_stop_strings_and_ids(client):
    ids = nibble_tokenize("It is a truth universally acknowledged")
    full = client.completions.create(model="kjv", prompt=ids, max_tokens=30, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    words = full.split(" ")
    assert len(words) > 4, full
    stop = " " + words[3]  # a stop string somewhere inside the text
    cut = full[:full.index(stop)]
    r = client.completions.create(model="kjv", prompt=ids, max_tokens=30, temperature=0, stop=[stop, "\x00never"],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 30
    stream = client.completions.create(model="kjv", prompt=ids, max_tokens=30, temperature=0, stop=stop, stream=True,
                                       extra_body={"ignore_eos": True})
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].text for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"
    # stop_token_ids (vLLM): ends after the id, without its text.
    r = client.completions.create(model="kjv", prompt=ids, max_tokens=30, temperature=0,
                                  extra_body={"ignore_eos": True, "return_token_ids": True})
    tokens = r.choices[0].token_ids
    r2 = client.completions.create(model="kjv", prompt=ids, max_tokens=30, temperature=0,
                                   extra_body={"ignore_eos": True, "stop_token_ids": [tokens[5]], "return_token_ids": True})
    first = tokens.index(tokens[5])
    assert r2.choices[0].token_ids == tokens[:first + 1] and r2.choices[0].finish_reason == "stop"


def test_n_batch_seed_and_logprobs(client):
    r = client.completions.create(model="demo", prompt=["In the beginning", "It is"], n=2, max_tokens=8,
                                  temperature=1.0, seed=7, logprobs=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        assert all(1 <= len(top) <= 3 for top in c.logprobs.top_logprobs)
    again = client.completions.create(model="demo", prompt=["In the beginning", "It is"], n=2, max_tokens=8,
                                      temperature=1.0, seed=7, logprobs=3)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]  # seeded: reproducible
    chat = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    # greedy: the chosen token is the best of its top list
    assert all(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-4 for t in content)


def test_echo_and_penalties(client):
    r = client.completions.create(model="demo", prompt="It is", max_tokens=4, temperature=0, echo=True)
    assert r.choices[0].text.startswith("It is")
    r = client.completions.create(model="demo", prompt="It is", max_tokens=16, temperature=0,
                                  presence_penalty=1.5, frequency_penalty=1.0)
    assert r.choices[0].finish_reason in ("stop", "length")


def expect_error(server, path, body, status, param=None, headers=None):
    got, data = server.post_json(path, body, headers)
    assert got == status, (body, data)
    err = data["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], data
    if param is not None:
        assert err["param"] == param, data
    return err


def test_error_classes(server, client):
    c = "/v1/completions"
    expect_error(server, c, "{not json", 400)
    expect_error(server, c, "[1, 2]", 400)
    expect_error(server, c, {"prompt": "x", "temperature": "hot"}, 400, "temperature")
    expect_error(server, c, {"prompt": 5}, 400, "prompt")
    expect_error(server, c, {"prompt": "x", "model": "nobody"}, 404, "model")
    expect_error(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "model": "nobody"}, 404)
    long_ids = list(range(10, 610))
    err = expect_error(server, c, {"prompt": long_ids}, 400)
    assert "512" in err["message"] and "600" in err["message"]
    err = expect_error(server, c, {"prompt": [5, 6, 7], "max_tokens": 510}, 400, "max_tokens")
    assert "512" in err["message"] and "513" in err["message"]
    expect_error(server, c, {"prompt": "x", "max_tokens": 0}, 400, "max_tokens")
    expect_error(server, c, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens")
    for field, value in [("temperature", -1), ("temperature", 1e300), ("top_p", 0), ("top_p", 1.5), ("min_p", 2),
                         ("presence_penalty", 9), ("frequency_penalty", -9), ("top_k", -5), ("n", 0), ("logprobs", 99)]:
        expect_error(server, c, {"prompt": "x", field: value}, 400, field)
    status, text, _ = server.request("POST", c, '{"prompt": "x", "temperature": NaN}')
    assert status == 400 and "error" in json.loads(text)
    status, text, _ = server.request("POST", c, '{"prompt": "' + "a" * (9 << 20) + '"}')
    assert status == 413 and json.loads(text)["error"]["code"] == "request_too_large"
    # the openai client sees the same as exceptions
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nobody", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo", prompt="x", max_tokens=0)
    # and the server still works
    assert client.completions.create(model="demo", prompt="x", max_tokens=2).choices[0].finish_reason


def test_errors_do_not_disturb_others(server, client):
    def good(k):
        return client.completions.create(model="kjv", prompt=PROMPTS[k % 3], max_tokens=16, temperature=0).choices[0].text

    solo = {k: good(k) for k in range(3)}
    with cf.ThreadPoolExecutor(8) as pool:
        goods = [pool.submit(good, k) for k in range(6)]
        for _ in range(10):
            expect_error(server, "/v1/completions", "{", 400)
            expect_error(server, "/v1/completions", {"prompt": "x", "model": "zz"}, 404)
        assert [f.result() for f in goods] == [solo[k % 3] for k in range(6)]


def test_load_unload_at_run_time():
    tmp = Path(tempfile.mkdtemp(prefix="nibble-serve-"))
    try:
        allowed = tmp / "allowed"
        allowed.mkdir()
        shutil.copytree(ADAPTERS["kjv"], allowed / "kjv-copy")
        os.symlink(ADAPTERS["devil"].resolve(), allowed / "devil-link")  # inside -> outside: refused
        outside = tmp / "outside"
        shutil.copytree(ADAPTERS["kjv"], outside)
        s = Server(default_server_args() + ["--allowed-adapter-dir", str(allowed)])
        try:
            base = s.post_json("/v1/completions", {"model": "kjv", "prompt": "In the beginning", "max_tokens": 16,
                                                   "temperature": 0})[1]["choices"][0]["text"]
            status, text, _ = s.request("POST", "/v1/load_lora_adapter",
                                        {"lora_name": "kjv2", "lora_path": str(allowed / "kjv-copy")})
            assert status == 200, text
            r = s.post_json("/v1/completions", {"model": "kjv2", "prompt": "In the beginning", "max_tokens": 16,
                                                "temperature": 0})
            assert r[0] == 200 and r[1]["choices"][0]["text"] == base  # a copy of kjv answers as kjv
            models = json.loads(s.request("GET", "/v1/models")[1])["data"]
            assert {"id": "kjv2", "parent": "demo"}.items() <= next(m for m in models if m["id"] == "kjv2").items()
            err = expect_error(s, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(outside)}, 403, "lora_path")
            assert "--allowed-adapter-dir" in err["message"]
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(allowed / "devil-link")}, 403)
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(allowed / ".." / "outside")}, 403)
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": "kjv2", "lora_path": str(allowed / "kjv-copy")}, 400)
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(allowed / "missing")}, 400)
            (allowed / "broken").mkdir()
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(allowed / "broken")}, 400)
            expect_error(s, "/v1/load_lora_adapter", {"lora_name": 3}, 400, "lora_name")
            status, text, _ = s.request("POST", "/v1/unload_lora_adapter", {"lora_name": "kjv2"})
            assert status == 200, text
            expect_error(s, "/v1/unload_lora_adapter", {"lora_name": "kjv2"}, 404)
            expect_error(s, "/v1/completions", {"model": "kjv2", "prompt": "x"}, 404, "model")
        finally:
            assert s.stop() == 0, s.output()
    finally:
        shutil.rmtree(tmp)


def test_runtime_loading_refused_without_allowed_dir(server):
    err = expect_error(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(ADAPTERS["kjv"])}, 403)
    assert "--allowed-adapter-dir" in err["message"]


def test_api_key():
    s = Server(default_server_args(), env={"NIBBLE_API_KEY": "sesame"})
    try:
        expect_error(s, "/v1/completions", {"prompt": "x", "max_tokens": 1}, 401)
        expect_error(s, "/v1/completions", {"prompt": "x", "max_tokens": 1}, 401, headers={"Authorization": "Bearer nope"})
        assert s.request("GET", "/v1/models")[0] == 401
        assert s.request("GET", "/health")[0] == 200  # stays open
        from openai import OpenAI
        good = OpenAI(base_url=s.url + "/v1", api_key="sesame", max_retries=0)
        assert good.completions.create(model="demo", prompt="x", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        assert s.stop() == 0
    s = Server(default_server_args() + ["--api-key", "flag-key"])
    try:
        assert s.request("GET", "/v1/models", headers={"Authorization": "Bearer flag-key"})[0] == 200
        assert s.request("GET", "/v1/models")[0] == 401
    finally:
        assert s.stop() == 0


def test_disconnect_cancels(server):
    """A client that hangs up mid-stream frees its sequence: nothing keeps running."""
    for stream in (True, False):
        sock = socket.create_connection(("127.0.0.1", server.port))
        body = json.dumps({"prompt": [5, 6, 7], "max_tokens": 400, "stream": stream, "ignore_eos": True,
                           "model": "kjv"})
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        if stream:
            got = b""
            while b"data: {" not in got:
                got += sock.recv(4096)
        else:
            assert wait_until(lambda: server.metrics()[("nibble_num_requests_running", ())] >= 1, 10)
        sock.close()
        assert wait_until(lambda: server.metrics()[("nibble_num_requests_running", ())] == 0, 10)
    m = server.metrics()
    assert m[("nibble_requests_total", (("status", "abort"),))] >= 2
    assert m[("nibble_kv_blocks_used", ())] == 0


def test_metrics(server, client):
    client.completions.create(model="kjv", prompt="In the beginning", max_tokens=4)
    m = server.metrics()
    for name in ("nibble_time_to_first_token_seconds_count", "nibble_time_per_output_token_seconds_count",
                 "nibble_e2e_request_latency_seconds_count", "nibble_prompt_tokens_total",
                 "nibble_generation_tokens_total"):
        assert m[(name, ())] > 0, name
    assert m[("nibble_requests_total", (("status", "length"),))] >= 1
    assert m[("nibble_kv_blocks_total", ())] > 0
    assert ("nibble_prefix_cache_hit_rate", ()) in m
    assert m[("nibble_adapter_requests_total", (("adapter", "kjv"),))] >= 1
    assert m[("nibble_adapter_generation_tokens_total", (("adapter", "kjv"),))] >= 4
    assert sum(m[("nibble_adapter_residency", (("adapter", "kjv"), ("residency", r)))] for r in ("gpu", "cpu", "disk")) == 1
    assert ("nibble_adapter_loads_total", (("adapter", "devil"),)) in m
    assert ("nibble_adapter_evictions_total", (("adapter", "devil"),)) in m
    assert m[("nibble_http_responses_total", (("code", "200"), ("route", "/v1/completions")))] >= 1


def test_web_page_is_served(server):
    status, text, headers = server.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in text and "getReader" in text and "http://" not in text


def test_sigterm_drains_running_requests():
    s = Server(default_server_args())
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(s.post_json, "/v1/completions",
                               {"model": m, "prompt": "In the beginning", "max_tokens": 200, "ignore_eos": True})
                   for m in ("demo", "kjv", "devil")]
        assert wait_until(lambda: s.metrics()[("nibble_num_requests_running", ())] == 3, 20)
        code = s.stop()
        results = [f.result() for f in futures]
    assert code == 0, s.output()
    for status, body in results:
        assert status == 200 and body["choices"][0]["finish_reason"] == "length", body
        assert body["usage"]["completion_tokens"] == 200
    assert "draining" in s.output()
