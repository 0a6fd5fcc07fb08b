"""``nlm serve`` on loopback with the official ``openai`` client: completions and chat, streaming equal to
the whole answer, logprobs, n, stop, JSON schema output, cached tokens; every documented error in
OpenAI's shape; health, metrics, memory; disconnecting clients free their blocks."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import uvicorn
from pool_helpers import assert_pool_free

from nlm_native import LLM
from nlm_native.server import ServerConfig, ServerConfigError, create_app
from nlm_native.server.auth import hash_password, read_users

KEY, KEY2 = "sk-test-one", "sk-test-two"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Live:
    """A uvicorn server in a thread, stopped (and drained) on exit."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Live:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def llm(tiny_chat_path: Path) -> Iterator[LLM]:
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, model_name="tiny", max_waiting=64) as m:
        yield m


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("auth") / "users"
    p.write_text(f"# user:salt:hash\nalice:{hash_password('wonderland')}\n")
    return p


@pytest.fixture(scope="module")
def live(llm: LLM, users_file: Path) -> Iterator[Live]:
    cfg = ServerConfig(api_keys=[KEY, KEY2], basic_users_file=str(users_file), max_body_bytes=64 << 10,
                       metrics_store="off")
    with Live(create_app(cfg, llm)) as s:
        yield s


@pytest.fixture
def client(live: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_completions_and_streaming_equal_the_whole_answer(client: openai.OpenAI, llm: LLM) -> None:
    r = client.completions.create(model="tiny", prompt="the rain in spain", max_tokens=12, temperature=0.8, seed=5)
    text = r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens == 12 and text
    parts = client.completions.create(model="tiny", prompt="the rain in spain", max_tokens=12, temperature=0.8,
                                      seed=5, stream=True, stream_options={"include_usage": True})
    chunks = list(parts)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    direct = llm.create_completion("the rain in spain", max_tokens=12, temperature=0.8, seed=5)
    assert direct["choices"][0]["text"] == text  # the server adds nothing of its own


def test_chat_logprobs_n_stop_and_cached_tokens(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "say something about cats and mats " * 6}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=2, n=2)
    assert len(r.choices) == 2 and r.choices[0].logprobs is not None
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2
    again = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens >= 8  # the repeated prefix came from the cache
    streamed = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        again.choices[0].message.content
    first = again.choices[0].message.content or ""
    if len(first) > 3:
        cut = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0,
                                             stop=[first[2:4]])
        assert cut.choices[0].finish_reason == "stop" and first[2:4] not in (cut.choices[0].message.content or "")


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}},
              "required": ["name", "n"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "a name and a number"}], max_tokens=64, temperature=0.7,
        seed=1, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)


def test_models_tokenize_health_metrics_memory(live: Live, client: openai.OpenAI, llm: LLM) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    h = httpx.get(live.url + "/health")  # open: no key
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"] == "tiny"
    assert {"running", "waiting", "prefilling"} <= set(h.json()["queue"]) and h.json()["uptime_s"] >= 0
    auth = {"Authorization": f"Bearer {KEY}"}
    t = httpx.post(live.url + "/tokenize", json={"content": "hello there"}, headers=auth).json()
    assert t["tokens"] == llm.tokenize("hello there", special=True)
    d = httpx.post(live.url + "/detokenize", json={"tokens": t["tokens"]}, headers=auth).json()
    assert d["content"] == llm.detokenize(t["tokens"])
    client.completions.create(model="tiny", prompt="count me", max_tokens=3)
    m = httpx.get(live.url + "/metrics", headers=auth)
    assert m.status_code == 200
    for name in ("nlm_requests_total", "nlm_prompt_tokens_total", "nlm_completion_tokens_total",
                 "nlm_cached_tokens_total", "nlm_time_to_first_token_seconds_bucket", "nlm_request_latency_seconds",
                 "nlm_queue_depth", "nlm_kv_blocks_used", "nlm_kv_blocks_free", "nlm_kv_blocks_cached",
                 "nlm_prefix_cache_hits", "nlm_preemptions", "nlm_running"):
        assert name in m.text, name
    assert 'nlm_requests_total{endpoint="completions",status="200"}' in m.text
    mem = httpx.get(live.url + "/admin/memory", headers=auth).json()
    assert mem["rss_bytes"] > 0 and mem["weights_mapped_bytes"] > 0 and "ram_bytes" in mem["tiers"]
    assert mem["kv_pool_bytes"] >= mem["kv_used_bytes"] + 0 and mem["kv_free_bytes"] >= 0


def shape(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_documented_errors(live: Live, users_file: Path) -> None:
    url = live.url
    post = lambda path, **kw: httpx.post(url + path, **kw)  # noqa: E731
    ok = {"Authorization": f"Bearer {KEY}"}
    assert shape(post("/v1/completions", json={"prompt": "x"}), 401)["code"] == "invalid_api_key"
    shape(post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-wrong"}), 401)
    assert post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                headers={"Authorization": f"Bearer {KEY2}"}).status_code == 200
    basic = base64.b64encode(b"alice:wonderland").decode()
    assert post("/v1/completions", json={"prompt": "x", "max_tokens": 1},
                headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong = base64.b64encode(b"alice:looking-glass").decode()
    shape(post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": f"Basic {wrong}"}), 401)
    e = shape(post("/v1/completions", content=b"{not json", headers=ok | {"Content-Type": "application/json"}), 400)
    assert e["code"] == "invalid_json"
    e = shape(post("/v1/completions", json={"prompt": "x", "frobnicate": 1}, headers=ok), 400)
    assert "frobnicate" in e["message"] and e["param"] == "frobnicate"
    e = shape(post("/v1/completions", json={"prompt": "x", "temperature": "hot"}, headers=ok), 400)
    e = shape(post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}, headers=ok), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"
    shape(httpx.get(url + "/v1/nothing-here", headers=ok), 404)
    e = shape(post("/v1/completions", content=b"{" + b" " * (70 << 10) + b"}",
                   headers=ok | {"Content-Type": "application/json"}), 413)
    assert e["code"] == "request_too_large"
    shape(post("/v1/chat/completions", json={"model": "tiny"}, headers=ok), 400)
    shape(post("/v1/completions", json={"prompt": "x", "priority": "urgent"}, headers=ok), 400)
    # the official client raises its typed errors for these
    c = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-9", prompt="x")
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt="x", extra_body={"frobnicate": 1})


def test_rate_limit_and_full_queue(llm: LLM) -> None:
    cfg = ServerConfig(api_keys=[KEY], requests_per_minute=2, metrics_store="off")
    with Live(create_app(cfg, llm)) as s:
        ok = {"Authorization": f"Bearer {KEY}"}
        codes = [httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=ok).status_code
                 for _ in range(3)]
        assert codes == [200, 200, 429]
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers=ok)
        assert shape(r, 429)["code"] == "rate_limit_exceeded" and int(r.headers["Retry-After"]) >= 1
        m = httpx.get(s.url + "/metrics", headers=ok).text  # refusals are counted too
        assert 'nlm_requests_total{endpoint="completions",status="429"} 2.0' in m
    with LLM(llm.model.path, n_ctx=256, block_tokens=8, max_waiting=1, max_seqs=1, model_name="tiny") as small, \
            Live(create_app(ServerConfig(metrics_store="off"), small)) as s:
        body = {"prompt": "the rain in spain " * 4, "max_tokens": 200, "ignore_eos": True}
        results: list[int] = []

        def one() -> None:
            results.append(httpx.post(s.url + "/v1/completions", json=body, timeout=120).status_code)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 200 in results and 503 in results and set(results) <= {200, 503}
        r = httpx.post(s.url + "/v1/completions", json=body | {"max_tokens": 1})  # idle again: admitted
        assert r.status_code == 200


def test_request_timeouts_the_servers_and_a_requests_own(llm: LLM, live: Live) -> None:
    ok = {"Authorization": f"Bearer {KEY}"}
    long = {"prompt": "a long story " * 10, "max_tokens": 900, "ignore_eos": True}
    e = shape(httpx.post(live.url + "/v1/completions", json=long | {"timeout": 0.05}, headers=ok, timeout=60), 504)
    assert e["code"] == "timeout"
    with Live(create_app(ServerConfig(metrics_store="off", request_timeout=0.05), llm)) as s:
        for own in ({}, {"timeout": None}, {"timeout": 600}):  # the server's timeout is also the most one gets
            shape(httpx.post(s.url + "/v1/completions", json=long | own, timeout=60), 504)
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
    deadline = time.monotonic() + 10
    while llm.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert_pool_free(llm)  # the requests that timed out gave their blocks back


def test_a_client_that_disconnects_frees_its_blocks(live: Live, llm: LLM) -> None:
    ok = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "a long story " * 10, "max_tokens": 900, "ignore_eos": True, "stream": True}
    finished = llm.engine.stats().finished
    with httpx.stream("POST", live.url + "/v1/completions", json=body, headers=ok, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(g.startswith("data: {") for g in got)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = llm.engine.stats()
        if st.running == 0 and st.waiting == 0 and st.prefilling == 0:
            break
        time.sleep(0.05)
    st = llm.engine.stats()
    assert st.running == 0 and st.finished == finished + 1, "the abandoned request still runs"
    assert st.recent[-1].completion_tokens < 900  # it was cut short, not run to its end
    kept = set(llm.prefix_cache.sequences()) if llm.prefix_cache is not None else set()
    assert set(llm.model.sequences()) <= kept  # only the prefix cache holds blocks


def test_cors_is_off_by_default_and_answers_preflights_when_on(llm: LLM, live: Live) -> None:
    origin = "https://app.example"
    pre = {"Origin": origin, "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(live.url + "/v1/completions", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    with Live(create_app(ServerConfig(api_keys=[KEY], cors_origins=[origin], metrics_store="off"), llm)) as s:
        r = httpx.options(s.url + "/v1/completions", headers=pre)  # a preflight carries no key
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1},
                       headers={"Origin": origin, "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        r = httpx.options(s.url + "/v1/completions", headers=pre | {"Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x"}, headers={"Origin": origin})
        assert r.status_code == 401  # CORS lets a browser ask; the key is still needed


def test_an_unexpected_failure_is_a_500_that_leaks_nothing(llm: LLM, live: Live,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("segment table at /opt/secret/path corrupted")

    monkeypatch.setattr(llm, "create_completion", broken)
    r = httpx.post(live.url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    err = shape(r, 500)
    assert "secret" not in r.text and "RuntimeError" not in r.text and r.headers["x-request-id"] in err["message"]
    assert err["type"] == "server_error"

    def breaks_midway(*a: Any, **kw: Any) -> Any:
        yield {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "a"}]}
        raise RuntimeError("segment table at /opt/secret/path corrupted")

    monkeypatch.setattr(llm, "create_completion", breaks_midway)
    with httpx.stream("POST", live.url + "/v1/completions", json={"prompt": "x", "stream": True},
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["text"] == "a" and events[-1] == "[DONE]"
    err = json.loads(events[1])["error"]
    assert err["type"] == "server_error" and "secret" not in err["message"]


def test_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="port"):
        ServerConfig(port=0).check()
    with pytest.raises(ServerConfigError, match="not a file"):
        ServerConfig(model=str(tmp_path / "none.gguf")).check()
    with pytest.raises(ServerConfigError, match="kv_codec"):
        ServerConfig(kv_codec="int3").check()
    with pytest.raises(ServerConfigError, match="NLM_PORT"):
        ServerConfig.from_env({"NLM_PORT": "eighty"})
    c = ServerConfig.from_env({"NLM_API_KEYS": "a, b", "NLM_PORT": "9000", "NLM_KV_CODEC": "int8",
                               "NLM_MAX_PRIORITY": "normal", "NLM_REQUEST_TIMEOUT": "2.5", "NLM_MAX_SEQS": "8"})
    assert c.api_keys == ["a", "b"] and c.port == 9000 and c.kv_codec == "int8"
    assert c.max_priority == "normal" and c.request_timeout == 2.5 and c.max_seqs == 8
    with pytest.raises(ServerConfigError, match="max_priority"):
        ServerConfig.from_env({"NLM_MAX_PRIORITY": "top"}).check()
    with pytest.raises(ServerConfigError, match="max_seqs"):
        ServerConfig(max_seqs=0).check()
    # per-key policies: in a keys file, a flag or the environment; errors name where, never the key
    keys = tmp_path / "keys"
    keys.write_text("# key options\nsk-a max_priority=low requests_per_minute=10\nsk-b\nsk-c tokens_per_minute=5e3\n")
    c = ServerConfig.from_env({"NLM_API_KEYS_FILE": str(keys)})
    assert [(k, p.max_priority, p.requests_per_minute, p.tokens_per_minute) for k, p in c.check().keys()] == [
        ("sk-a", "low", 10.0, None), ("sk-b", None, None, None), ("sk-c", None, None, 5000.0)]
    keys.write_text("sk-a\nsk-secret max_priority=urgent\n")
    with pytest.raises(ServerConfigError, match=r"keys:2: max_priority must be one of") as e:
        ServerConfig.from_env({"NLM_API_KEYS_FILE": str(keys)})
    assert "sk-secret" not in str(e.value)
    for bad, match in (("sk-x rpm=5", "unknown option 'rpm'"), ("sk-x requests_per_minute=0", "positive"),
                       ("sk-x tokens_per_minute=lots", "positive")):
        with pytest.raises(ServerConfigError, match=match) as e:
            ServerConfig(api_keys=[bad]).check()
        assert "sk-x" not in str(e.value)
    users = tmp_path / "users"
    users.write_text(f"bob:{hash_password('pw')} max_priority=bogus\n")
    with pytest.raises(ServerConfigError, match="users:1: max_priority"):
        read_users(str(users))


def test_per_key_priority_and_rate_limits(tiny_chat_path: Path, tmp_path: Path) -> None:
    """A key capped at ``low`` asking for ``high`` waits behind a ``normal`` request; a key's own request
    limit applies to it alone; a Basic user's options work as a key's."""
    users = tmp_path / "users"
    users.write_text(f"carol:{hash_password('pw')} requests_per_minute=1\n")
    capped, slow = "sk-capped", "sk-slow"
    cfg = ServerConfig(api_keys=[KEY, f"{capped} max_priority=low", f"{slow} requests_per_minute=1"],
                       basic_users_file=str(users), metrics_store="off")
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, max_seqs=1, model_name="tiny") as small, \
            Live(create_app(cfg, small)) as s:
        order: list[str] = []

        def send(name: str, key: str, priority: str | None, tokens: int) -> None:
            body = {"prompt": f"{name} went to town", "max_tokens": tokens, "ignore_eos": True}
            headers = {"Authorization": f"Bearer {key}"} | ({"X-Priority": priority} if priority else {})
            r = httpx.post(s.url + "/v1/completions", json=body, headers=headers, timeout=120)
            assert r.status_code == 200, r.text
            order.append(name)

        first = threading.Thread(target=send, args=("first", KEY, None, 900))
        first.start()
        while small.engine.stats().running == 0:  # the one running slot is taken
            time.sleep(0.005)
        late = [threading.Thread(target=send, args=("capped", capped, "high", 4)),
                threading.Thread(target=send, args=("normal", KEY, "normal", 4))]
        for t in late:
            t.start()
            deadline = time.monotonic() + 5
            while small.engine.stats().waiting < late.index(t) + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
        for t in [first, *late]:
            t.join()
        assert order == ["first", "normal", "capped"], order
        ok = {"prompt": "x", "max_tokens": 1}
        slow_auth = {"Authorization": f"Bearer {slow}"}
        assert httpx.post(s.url + "/v1/completions", json=ok, headers=slow_auth).status_code == 200
        assert httpx.post(s.url + "/v1/completions", json=ok, headers=slow_auth).status_code == 429
        assert httpx.post(s.url + "/v1/completions", json=ok, headers={"Authorization": f"Bearer {KEY}"}
                          ).status_code == 200  # no limit of its own, none server-wide
        basic = {"Authorization": "Basic " + base64.b64encode(b"carol:pw").decode()}
        codes = [httpx.post(s.url + "/v1/completions", json=ok, headers=basic).status_code for _ in range(2)]
        assert codes == [200, 429]


def test_nlm_serve_starts_answers_and_stops_on_sigterm(tiny_chat_path: Path) -> None:
    import signal
    import subprocess
    import sys

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "nlm_native", "serve", "--model", str(tiny_chat_path), "--port",
                          str(port), "--api-key", KEY, "--ctx", "512", "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True},
                       headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal once it has shut down
        logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert {"event": "shutdown", "unfinished": 0, "closed_model": True}.items() <= logs[-1].items()
        assert any(entry.get("path") == "/v1/completions" and entry.get("status") == 200 for entry in logs)
        assert KEY not in err  # keys never in a log line
    finally:
        if p.poll() is None:
            p.kill()


def test_request_metrics_rows_go_to_sql_in_batches(llm: LLM, tmp_path: Path) -> None:
    import sqlite3

    from nlm_native.server.auth import key_id

    db = tmp_path / "metrics.db"
    with Live(create_app(ServerConfig(api_keys=[KEY], metrics_store=f"sqlite:///{db}"), llm)) as s:
        ok = {"Authorization": f"Bearer {KEY}"}
        r0 = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3, "ignore_eos": True},
                        headers=ok)
        assert r0.status_code == 200
        with httpx.stream("POST", s.url + "/v1/completions", headers=ok,
                          json={"prompt": "y", "max_tokens": 4, "stream": True, "ignore_eos": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and all('"usage"' not in e for e in events)  # not asked for: not sent
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "bogus": 1}, headers=ok).status_code == 400
        assert not db.exists() or sqlite3.connect(db).execute(
            "SELECT COUNT(*) FROM INFERENCE_METRICS").fetchone()[0] == 0  # batched: not yet written
    rows = sqlite3.connect(db).execute(
        "SELECT KEY_ID, MODEL, ENDPOINT, STATUS, PROMPT_TOKENS, COMPLETION_TOKENS, TTFT_MS, LATENCY_MS "
        "FROM INFERENCE_METRICS ORDER BY TIME").fetchall()
    assert [r[3] for r in rows] == [200, 200, 400]
    assert all(r[0] == key_id(KEY) and KEY not in str(r) and r[1] == "tiny" and r[7] > 0 for r in rows)
    assert rows[0][5] == 3 and rows[1][5] == 4 and rows[1][6] is not None  # the stream's usage, counted


def test_a_metrics_store_that_is_down_never_fails_a_request(llm: LLM) -> None:
    dead = "postgresql+psycopg2://nlm:pw@127.0.0.1:9/metrics"
    app = create_app(ServerConfig(metrics_store=dead), llm)
    with Live(app) as s:
        for _ in range(3):
            assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
    sink = app.state.nlm.sink
    assert sink.errors >= 1 and sink.written == 0
