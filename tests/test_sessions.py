"""Named sessions: a conversation continued by id in this process, in another process sharing the stores,
and as chat history; bad ids, other models' sessions and damaged records refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_servers import postgres, s3_server

from nlm_native import LLM, SamplingParams, SessionError

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
WORDS = "the rain in spain stays mainly on the plain while a cat sat on a mat and sang".split()


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def stores(tmp: Path) -> dict[str, str]:
    return {"kv_store": f"sqlite:///{tmp / 'kv.db'}", "blob_store": f"file://{tmp / 'blobs'}"}


def run(llm: LLM, prompt: str | list[int], **kw: object) -> tuple[list[int], int]:
    s = llm.submit(prompt, GREEDY, **kw)  # type: ignore[arg-type]
    out = [t for c in s for t in c.token_ids]
    assert s.metrics is not None
    return out, s.metrics.cached_tokens


def test_a_session_continues_in_this_process(tiny_chat_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, prefix_cache=True) as llm, \
            LLM(tiny_chat_path, n_ctx=512, block_tokens=8, prefix_cache=False) as plain:
        first, _ = run(llm, text(0, 20), session_id="s1")
        p1 = llm.tokenize(text(0, 20), special=True)
        assert llm.load_session("s1").tokens == p1 + first
        second, cached = run(llm, " and then " + text(3, 6), session_id="s1")
        whole = p1 + first + llm.tokenize(" and then " + text(3, 6), add_special=False, special=True)
        assert second == plain.generate(whole, GREEDY)[0].token_ids  # type: ignore[union-attr]
        assert cached >= (len(p1) + len(first) - 1) // 8 * 8  # the first turn's prompt and answer, reused
        assert llm.load_session("s1").tokens == whole + second
        out = llm.generate(" ok", GREEDY, session_id="s2")  # generate() takes one prompt with a session
        assert llm.load_session("s2").tokens[-len(out[0].token_ids):] == out[0].token_ids  # type: ignore[union-attr]


@pytest.fixture(params=["sqlite+dir", "postgres+s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The stores two processes share: SQLite and a directory, or a real PostgreSQL and S3 (moto)."""
    if request.param == "sqlite+dir":
        yield stores(tmp_path)
        return
    with postgres() as pg, s3_server() as s3:
        yield {"kv_store": pg, "blob_store": f"s3://nlm/sessions-test?endpoint_url={s3}"}


def test_a_session_continues_in_another_process(tiny_chat_path: Path, shared: dict[str, str]) -> None:
    script = textwrap.dedent(f"""
        import os
        os.environ.update({ {k: v for k, v in os.environ.items() if k.startswith("AWS_")}!r})
        from nlm_native import LLM, SamplingParams
        llm = LLM({str(tiny_chat_path)!r}, n_ctx=512, block_tokens=8, **{shared!r})
        s = llm.submit({text(1, 40)!r}, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
                       session_id="conv-1")
        print([t for c in s for t in c.token_ids])
        # no save_session, no close: the write-behind thread is flushed at exit
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **shared) as b, \
            LLM(tiny_chat_path, n_ctx=512, block_tokens=8, prefix_cache=False) as plain:
        s = b.load_session("conv-1")
        prompt = b.tokenize(text(1, 40), special=True)
        assert s.tokens == prompt + answer
        got, cached = run(b, " next", session_id="conv-1")
        whole = prompt + answer + b.tokenize(" next", add_special=False, special=True)
        assert got == plain.generate(whole, GREEDY)[0].token_ids  # type: ignore[union-attr]
        assert cached >= (len(prompt) + len(answer) - 1) // 8 * 8 > 0  # restored from the stores
        b.save_session("conv-1")
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **shared) as c:
        assert c.load_session("conv-1").tokens == whole + got


def test_chat_sessions_keep_the_history(tiny_chat_path: Path, tmp_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, **stores(tmp_path)) as llm:
        r1 = llm.create_chat_completion([{"role": "user", "content": "hello"}], session_id="chat", max_tokens=8,
                                        temperature=0)
        chunks = list(llm.create_chat_completion([{"role": "user", "content": "and then?"}], session_id="chat",
                                                 max_tokens=8, temperature=0, stream=True))
        streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        s = llm.save_session("chat")
        assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
        assert s.messages[1]["content"] == r1["choices"][0]["message"]["content"]
        assert s.messages[3]["content"] == streamed
        # the second call saw the whole history: the same as asking with it in full
        full = llm.create_chat_completion(s.messages[:3], max_tokens=8, temperature=0)
        assert full["choices"][0]["message"]["content"] == streamed
        assert s.tokens == llm.tokenize(llm.apply_chat_template(s.messages, add_generation_prompt=False), special=True)
    with LLM(tiny_chat_path, n_ctx=1024, block_tokens=8, **stores(tmp_path)) as again:
        assert again.load_session("chat").messages == s.messages


def test_bad_sessions_are_refused(tiny_chat_path: Path, tiny_chat32_path: Path, tmp_path: Path) -> None:
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as llm:
        for bad in ("", "x" * 129, "tab\there", 7):
            with pytest.raises(SessionError, match="session_id must be"):
                llm.submit("hi", GREEDY, session_id=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="n and best_of must be 1"):
            llm.submit("hi", SamplingParams(n=2, max_tokens=2), session_id="a")
        with pytest.raises(ValueError, match="one prompt"):
            llm.generate(["a", "b"], GREEDY, session_id="a")
        with pytest.raises(SessionError, match="no session 'nope'"):
            llm.load_session("nope")
        with pytest.raises(SessionError, match="no session"):
            llm.save_session("nope")
        run(llm, "hello there", session_id="mine")
        llm.save_session("mine")
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, kv_codec="f32", **stores(tmp_path)) as other:
        with pytest.raises(SessionError, match="another model or KV layout"):
            other.load_session("mine")
    blob = next((tmp_path / "blobs").rglob("sessions/*/*"))
    blob.write_bytes(blob.read_bytes()[:-5])
    with LLM(tiny_chat_path, n_ctx=512, block_tokens=8, **stores(tmp_path)) as again:
        with pytest.raises(SessionError, match="damaged"):
            again.load_session("mine")
