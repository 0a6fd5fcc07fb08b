"""Chat templates against Hugging Face's own renderer; tool-call parsing and tool checking.

The rendering reference is ``transformers.utils.chat_template_utils.render_jinja_template``
(what ``apply_chat_template`` calls), run on the real Qwen2.5 template from the GGUF and on
Llama-3 / Mistral / ChatML templates written out below in their public formats.
"""

from __future__ import annotations

import copy
import json
import os
import random
from typing import Any

import pytest

from nlm_native.api.tools import ToolCall, check_tools, parse_tool_calls
from nlm_native.text.chat import ChatTemplate, ChatTemplateError, normalize_messages

# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------

# Meta-Llama-3-8B-Instruct, verbatim.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3.1-Instruct style, with tools in the first user message and ipython tool results.
LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
            + message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Mistral-7B-Instruct-v0.1 / v0.2, verbatim.
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# ChatML with Hermes-style tools (as in Hermes-2-Pro / OpenHermes, shortened).
CHATML_TOOLS = """{{- bos_token }}
{%- if tools %}
{{- '<|im_start|>system\\nYou are a function calling AI model. ' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags. ' }}
{{- 'Here are the available tools: <tools> ' }}
{{- tools | tojson }}
{{- ' </tools>' }}
{%- if messages[0].role == 'system' %}{{- '\\n' + messages[0].content }}{%- endif %}
{{- '<|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
  {%- if message.role == 'system' and loop.first %}
  {%- elif message.role == 'assistant' and message.tool_calls is defined and message.tool_calls %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if message.content %}{{- message.content + '\\n' }}{%- endif %}
    {%- for tc in message.tool_calls %}
      {{- '<tool_call>\\n' }}
      {{- {'name': tc.function.name, 'arguments': tc.function.arguments} | tojson }}
      {{- '\\n</tool_call>\\n' }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
  {%- elif message.role == 'tool' %}
    {{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}
  {%- else %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
  {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# Plain ChatML (no tools), for exact-string checks that need no model file.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
LLAMA_SPECIAL = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


@pytest.fixture(scope="module")
def qwen_template() -> str:
    try:
        from nlm_native.core.fetch import fetch
        from nlm_native.core.gguf import read

        path = fetch()
    except Exception as e:  # no network and no cache
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Qwen2.5 GGUF not available: {e}")
    return read(path).metadata["tokenizer.chat_template"]


# --------------------------------------------------------------------------------------------
# Conversations (OpenAI shape: tool-call arguments are JSON strings)
# --------------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city (温度 in °C).",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

SYS_USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}]
USER_ONLY = [{"role": "user", "content": "What is 2+2?"}]
MULTI_TURN = [
    {"role": "system", "content": "Be helpful."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
    {"role": "user", "content": "Why?"},
]
ALTERNATING = [m for m in MULTI_TURN if m["role"] != "system"]
NON_ASCII = [
    {"role": "system", "content": "你是一个乐于助人的助手。🤖"},
    {"role": "user", "content": "東京の天気は？ 🌧️ naïve café — «ok»"},
    {"role": "assistant", "content": "晴れです ☀️"},
    {"role": "user", "content": "Спасибо! 👍🏽"},
]
TOOL_CALL_ONE = [
    {"role": "system", "content": "You can check the weather."},
    {"role": "user", "content": "Weather in Paris and in 東京?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21, "sky": "clear"}'},
]
TOOL_CALL_TWO = [
    {"role": "user", "content": "Weather in Paris and in 東京?"},
    {
        "role": "assistant",
        "content": "Let me check both.",
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "東京", "unit": "c"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21°C, clear"},
    {"role": "tool", "tool_call_id": "call_2", "content": "18°C, 雨 🌧️"},
    {"role": "assistant", "content": "Paris: 21°C; 東京: 18°C with rain."},
    {"role": "user", "content": "Thanks"},
]


def hf_form(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation as Hugging Face expects it: tool-call arguments as objects."""
    out = copy.deepcopy(messages)
    for m in out:
        for tc in m.get("tool_calls") or []:
            if isinstance(tc["function"]["arguments"], str):
                tc["function"]["arguments"] = json.loads(tc["function"]["arguments"])
    return out


def hf_render(source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
              add_generation_prompt: bool = True, **kwargs: Any) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([hf_form(messages)], tools=tools, chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


def ours(source: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
         add_generation_prompt: bool = True, special: dict[str, str] | None = None, **kwargs: Any) -> str:
    return ChatTemplate(source, **(special or {})).render(messages, tools=tools,
                                                          add_generation_prompt=add_generation_prompt, **kwargs)


# (conversation, tools, extra template variables)
QWEN_CASES = {
    "sys_user": (SYS_USER, None, {}),
    "default_system": (USER_ONLY, None, {}),
    "multi_turn": (MULTI_TURN, None, {}),
    "non_ascii": (NON_ASCII, None, {}),
    "tools_default_system": (USER_ONLY, [WEATHER_TOOL, TIME_TOOL], {}),
    "tools_with_system": (SYS_USER, [WEATHER_TOOL], {}),
    "tool_call_and_result": (TOOL_CALL_ONE, [WEATHER_TOOL], {}),
    "two_calls_two_results": (TOOL_CALL_TWO, [WEATHER_TOOL, TIME_TOOL], {}),
    "tool_history_without_tools": (TOOL_CALL_TWO, None, {}),
}
OTHER_CASES = {
    "llama3-sys_user": (LLAMA3, LLAMA_SPECIAL, SYS_USER, None, {}),
    "llama3-multi_turn": (LLAMA3, LLAMA_SPECIAL, MULTI_TURN, None, {}),
    "llama3-non_ascii": (LLAMA3, LLAMA_SPECIAL, NON_ASCII, None, {}),
    "llama31-sys_user": (LLAMA31, LLAMA_SPECIAL, SYS_USER, None, {}),
    "llama31-no_system_date": (LLAMA31, LLAMA_SPECIAL, USER_ONLY, None, {"date_string": "01 Jan 2025"}),
    "llama31-tools": (LLAMA31, LLAMA_SPECIAL, SYS_USER, [WEATHER_TOOL, TIME_TOOL], {}),
    "llama31-tool_call_and_result": (LLAMA31, LLAMA_SPECIAL, TOOL_CALL_ONE, [WEATHER_TOOL], {}),
    "mistral-user_only": (MISTRAL, SPECIAL, USER_ONLY, None, {}),
    "mistral-alternating": (MISTRAL, SPECIAL, ALTERNATING, None, {}),
    "mistral-non_ascii": (MISTRAL, SPECIAL, [m for m in NON_ASCII if m["role"] != "system"], None, {}),
    "chatml-sys_user": (CHATML_TOOLS, SPECIAL, SYS_USER, None, {}),
    "chatml-multi_turn": (CHATML_TOOLS, SPECIAL, MULTI_TURN, None, {}),
    "chatml-tools": (CHATML_TOOLS, SPECIAL, SYS_USER, [WEATHER_TOOL, TIME_TOOL], {}),
    "chatml-two_calls": (CHATML_TOOLS, SPECIAL, TOOL_CALL_TWO, [WEATHER_TOOL], {}),
    "chatml-non_ascii": (CHATML_TOOLS, SPECIAL, NON_ASCII, [WEATHER_TOOL], {}),
}


# --------------------------------------------------------------------------------------------
# 1. Rendering equals Hugging Face's
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agp", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("case", list(QWEN_CASES))
def test_qwen_template_matches_hf(qwen_template: str, case: str, agp: bool) -> None:
    messages, tools, extra = QWEN_CASES[case]
    before = copy.deepcopy(messages)
    got = ours(qwen_template, messages, tools, agp, {"eos_token": "<|im_end|>"}, **extra)
    want = hf_render(qwen_template, messages, tools, agp, eos_token="<|im_end|>", **extra)
    assert got == want
    assert messages == before  # the caller's messages are not modified
    assert got.endswith("<|im_start|>assistant\n") == agp


@pytest.mark.parametrize("agp", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("case", list(OTHER_CASES))
def test_inline_templates_match_hf(case: str, agp: bool) -> None:
    source, special, messages, tools, extra = OTHER_CASES[case]
    got = ours(source, messages, tools, agp, special, **extra)
    want = hf_render(source, messages, tools, agp, **special, **extra)
    assert got == want
    assert got  # a template that rendered nothing would make the comparison vacuous


def test_llama3_exact_string() -> None:
    got = ours(LLAMA3, SYS_USER, special=LLAMA_SPECIAL)
    assert got == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_mistral_exact_string() -> None:
    got = ours(MISTRAL, ALTERNATING[:3], special=SPECIAL, add_generation_prompt=False)
    assert got == "<s>[INST] Hi [/INST]Hello! How can I help?</s>[INST] Tell me a joke. [/INST]"


NO_TOOLS_CHECK = "{% if tools is not none %}[tools: {{ tools | length }}]{% endif %}{{ messages[0].content }}"


def test_tools_not_given_is_none_like_hf() -> None:
    assert ours(NO_TOOLS_CHECK, USER_ONLY) == hf_render(NO_TOOLS_CHECK, USER_ONLY) == "What is 2+2?"


def test_tools_given_to_is_not_none_template_matches_hf() -> None:
    got = ours(NO_TOOLS_CHECK, USER_ONLY, [WEATHER_TOOL])
    assert got == hf_render(NO_TOOLS_CHECK, USER_ONLY, [WEATHER_TOOL]) == "[tools: 1]What is 2+2?"


# --------------------------------------------------------------------------------------------
# 2. Qwen specifics, normalisation, errors, sandbox
# --------------------------------------------------------------------------------------------


def test_qwen_tools_block(qwen_template: str) -> None:
    t = ChatTemplate(qwen_template)
    assert t.hermes_tool_calls
    got = t.render(USER_ONLY, tools=[WEATHER_TOOL, TIME_TOOL])
    tools_json = "\n".join(json.dumps(x, ensure_ascii=False) for x in (WEATHER_TOOL, TIME_TOOL))
    assert got == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + tools_json
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "温度 in °C" in got  # tojson keeps non-ASCII text


def test_qwen_tool_call_history(qwen_template: str) -> None:
    got = ChatTemplate(qwen_template).render(TOOL_CALL_TWO[:4], add_generation_prompt=False)
    assert got.endswith(
        "<|im_start|>assistant\nLet me check both.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京", "unit": "c"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21°C, clear\n</tool_response>\n"
        "<tool_response>\n18°C, 雨 🌧️\n</tool_response><|im_end|>\n"
    )


def test_hermes_tool_calls_flag() -> None:
    assert ChatTemplate(CHATML_TOOLS).hermes_tool_calls
    assert not ChatTemplate(LLAMA31).hermes_tool_calls
    assert not ChatTemplate(CHATML).hermes_tool_calls


def test_developer_role_is_system() -> None:
    t = ChatTemplate(CHATML)
    dev = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    assert t.render(dev) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_developer_role_in_qwen_gives_no_default_system(qwen_template: str) -> None:
    dev = [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    sys_ = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]
    got = ChatTemplate(qwen_template).render(dev)
    assert got == hf_render(qwen_template, sys_)
    assert "You are Qwen" not in got


def test_text_parts_are_joined() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "世界 🌍"}]}]
    got = ChatTemplate(CHATML).render(msgs, add_generation_prompt=False)
    assert got == "<|im_start|>user\nHello, 世界 🌍<|im_end|>\n"


def test_image_part_raises_naming_the_message() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    ]
    with pytest.raises(ValueError, match=r"messages\[1\]\.content\[1\].*image_url"):
        ChatTemplate(CHATML).render(msgs)


@pytest.mark.parametrize("messages, pattern", [
    ([{"role": "robot", "content": "beep"}], r"messages\[0\]\.role"),
    ([{"role": "user", "content": "a"}, {"content": "no role"}], r"messages\[1\]\.role"),
    ([{"role": "user", "content": "a"}, "not a dict"], r"messages\[1\] is not an object"),
    ([{"role": "user"}], r"messages\[0\]\.content is missing"),
    ([{"role": "user", "content": 42}], r"messages\[0\]\.content must be"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], r"messages\[1\].*content or tool_calls"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "tool_calls": []}],
     r"messages\[1\].*content or tool_calls"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]}],
     r"messages\[0\].*function\.name"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     r"messages\[0\].*'f'.*not JSON"),
    ([], r"non-empty"),
    ("hello", r"non-empty"),
])
def test_bad_messages_raise(messages: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ChatTemplate(CHATML).render(messages)


def test_normalize_messages_shapes() -> None:
    msgs = [
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": "é"}'}}]},
        {"role": "assistant", "content": None, "function_call": {"name": "g", "arguments": ""}},
        {"role": "function", "name": "g", "content": "ok"},
    ]
    before = copy.deepcopy(msgs)
    out = normalize_messages(msgs)
    assert msgs == before
    assert out[0] == {"role": "system", "content": "ab"}
    assert out[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": "é"}}
    assert out[1]["tool_calls"][0]["id"] == "c1"
    assert out[2]["tool_calls"][0]["function"] == {"name": "g", "arguments": {}}
    assert "function_call" not in out[2]
    assert out[3]["role"] == "tool" and out[3]["content"] == "ok"


def test_raise_exception_is_chat_template_error() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="must alternate"):  # the reference refuses it too
        hf_render(MISTRAL, msgs)
    with pytest.raises(ChatTemplateError, match="must alternate"):
        ours(MISTRAL, msgs, special=SPECIAL)
    with pytest.raises(ChatTemplateError, match="Only user and assistant roles"):
        ours(MISTRAL, [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], special=SPECIAL)


@pytest.mark.parametrize("source", ["{{ x", "{% for %}", "{% if messages %}no end", "{{ messages | nosuchfilter }}",
                                    "", "   \n"])
def test_bad_template_does_not_compile(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source)


@pytest.mark.parametrize("source", [
    "{{ nosuchvar.attr }}",
    "{{ messages[7].content }}",
    "{{ '%s %s' % (1,) }}",
    "{{ messages[0].content + 1 }}",
])
def test_render_failures_are_chat_template_errors(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ours(source, USER_ONLY)


@pytest.mark.parametrize("source", [
    "{{ 1 / 0 }}",
    "{{ range(10000000) | length }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
])
def test_other_render_failures_are_chat_template_errors(source: str) -> None:
    with pytest.raises(ChatTemplateError):
        ours(source, USER_ONLY)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ dict.mro() }}",
    "{{ messages.append(1) }}",
    "{{ messages.pop() }}",
    "{{ messages[0].update({'role': 'system'}) }}",
    "{{ (messages | first).clear() }}",
])
def test_sandbox_blocks_unsafe_access(source: str) -> None:
    msgs = copy.deepcopy(USER_ONLY)
    with pytest.raises(ChatTemplateError, match="unsafe|undefined|has no attribute"):
        ChatTemplate(source).render(msgs)
    assert msgs == USER_ONLY


@pytest.mark.parametrize("source", ["{{ ''.__class__ }}", "{{ lipsum.__globals__ }}", "{{ messages.__class__ }}",
                                    "{{ messages[0].content.format.__globals__ }}"])
def test_sandbox_hides_dunder_attributes(source: str) -> None:
    assert ours(source, USER_ONLY) == hf_render(source, USER_ONLY) == ""


def test_strftime_now_and_tojson_options() -> None:
    src = "{{ strftime_now('%Y') | length }}|{{ {'b': 'é', 'a': [1, 2]} | tojson(sort_keys=True) }}|{{ 'x' | tojson }}"
    assert ours(src, USER_ONLY) == hf_render(src, USER_ONLY) == '4|{"a": [1, 2], "b": "é"}|"x"'


# --------------------------------------------------------------------------------------------
# 3. parse_tool_calls
# --------------------------------------------------------------------------------------------

NAMES = {"get_weather", "get_time"}


def calls(text: str, names: set[str] | None = NAMES) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
    content, found = parse_tool_calls(text, names)
    out = []
    for c in found:
        assert isinstance(c, ToolCall)
        assert isinstance(c.arguments, str)
        out.append((c.name, json.loads(c.arguments)))
    return content, out


PARIS = ("get_weather", {"city": "Paris"})
TOKYO = ("get_weather", {"city": "東京", "unit": "c"})
TIME = ("get_time", {})

GOOD = {
    "hermes_one": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', None, [PARIS]),
    "hermes_two": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                   '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', None, [PARIS, TIME]),
    "hermes_text_before": ("Let me look that up.\n\n<tool_call>\n"
                           '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                           "Let me look that up.", [PARIS]),
    "hermes_unclosed_at_end": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n', None, [PARIS]),
    "hermes_second_unclosed": ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
                               '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',
                               None, [TIME, PARIS]),
    "hermes_whitespace": ('  \n<tool_call>   \n\n\t{"name" :  "get_weather",\n "arguments":\n {"city": "Paris"}\n}\n \n'
                          "</tool_call>\n\n", None, [PARIS]),
    "hermes_non_ascii": ('<tool_call>{"name": "get_weather", "arguments": {"city": "東京", "unit": "c"}}</tool_call>',
                         None, [TOKYO]),
    "hermes_escaped_non_ascii": ('<tool_call>{"name": "get_weather", "arguments": {"city": "\\u6771\\u4eac", '
                                 '"unit": "c"}}</tool_call>', None, [TOKYO]),
    "hermes_string_arguments": ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'
                                "</tool_call>", None, [PARIS]),
    "llama3_parameters": ('{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [PARIS]),
    "llama3_python_tag": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', None, [PARIS]),
    "llama3_semicolons": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                          '{"name": "get_time", "parameters": {}}', None, [PARIS, TIME]),
    "llama3_semicolons_no_tag": ('{"name": "get_weather", "parameters": {"city": "Paris"}};'
                                 '{"name": "get_weather", "parameters": {"city": "東京", "unit": "c"}};',
                                 None, [PARIS, TOKYO]),
    "plain_json": ('\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n', None, [PARIS]),
    "plain_no_arguments": ('{"name": "get_time"}', None, [TIME]),
    "json_list": ('[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
                  None, [PARIS, TIME]),
    "openai_shape": ('{"type": "function", "function": {"name": "get_weather", '
                     '"arguments": "{\\"city\\": \\"Paris\\"}"}}', None, [PARIS]),
    "openai_shape_list": ('[{"id": "x", "type": "function", "function": {"name": "get_time", "arguments": {}}}, '
                          '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京", '
                          '"unit": "c"}}}]', None, [TIME, TOKYO]),
    "json_fence": ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', None, [PARIS]),
    "bare_fence": ('```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n', None, [PARIS]),
    "fence_list": ('```json\n[{"name": "get_time", "arguments": {}}]\n```', None, [TIME]),
    "arguments_json_string": ('{"name": "get_weather", "arguments": "{\\"city\\": \\"東京\\", \\"unit\\": \\"c\\"}"}',
                              None, [TOKYO]),
    "semicolon_inside_string_single": ('{"name": "get_weather", "parameters": {"city": "a;b"}}', None,
                                       [("get_weather", {"city": "a;b"})]),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_parse_good(case: str) -> None:
    text, content, want = GOOD[case]
    assert calls(text) == (content, want)
    assert calls(text, None) == (content, want)  # no declared names: any name is accepted


def test_parse_non_ascii_arguments_kept_verbatim() -> None:
    _, found = parse_tool_calls('{"name": "get_weather", "arguments": {"city": "\\u6771\\u4eac 🌧️"}}', NAMES)
    assert len(found) == 1
    assert "東京 🌧️" in found[0].arguments  # not \u-escaped
    assert json.loads(found[0].arguments) == {"city": "東京 🌧️"}


def test_parse_nested_arguments_round_trip() -> None:
    args = {"city": "Paris", "opts": {"days": [1, 2, 3], "metric": True, "note": None, "ratio": 0.5}}
    text = "<tool_call>" + json.dumps({"name": "get_weather", "arguments": args}) + "</tool_call>"
    assert calls(text) == (None, [("get_weather", args)])


def test_tool_call_ids_and_openai_shape() -> None:
    _, found = parse_tool_calls('[{"name": "get_time"}, {"name": "get_time"}]', NAMES)
    a, b = found
    assert a.id.startswith("call_") and b.id.startswith("call_") and a.id != b.id
    assert a.openai() == {"id": a.id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    d = b.openai(index=1)
    assert list(d) == ["index", "id", "type", "function"]
    assert d == {"index": 1, "id": b.id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    assert ToolCall("f", "{}", id="call_fixed").openai(0)["id"] == "call_fixed"


BAD = {
    "bad_json": '{"name": "get_weather", "arguments": {"city": }',
    "bad_json_hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>',
    "hermes_not_json": "<tool_call>get_weather(city='Paris')</tool_call>",
    "hermes_second_bad": ('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n'
                          '<tool_call>{"name": "get_weather", "arguments": </tool_call>'),
    "mentions_tag": "You can wrap a call in <tool_call> tags, like <tool_call>this</tool_call>.",
    "mentions_open_tag_only": "I would use <tool_call> here but I have no tools.",
    "empty_hermes": "<tool_call></tool_call>",
    "missing_name": '{"arguments": {"city": "Paris"}}',
    "empty_name": '{"name": "", "arguments": {}}',
    "name_not_string": '{"name": 7, "arguments": {}}',
    "unknown_name": '{"name": "delete_everything", "arguments": {}}',
    "unknown_name_hermes": '<tool_call>{"name": "launch", "arguments": {}}</tool_call>',
    "one_unknown_in_list": '[{"name": "get_time", "arguments": {}}, {"name": "launch", "arguments": {}}]',
    "arguments_list": '{"name": "get_weather", "arguments": ["Paris"]}',
    "arguments_number": '{"name": "get_weather", "arguments": 5}',
    "arguments_null": '{"name": "get_weather", "arguments": null}',
    "arguments_string_not_json": '{"name": "get_weather", "arguments": "Paris"}',
    "arguments_string_list": '{"name": "get_weather", "arguments": "[1, 2]"}',
    "not_a_call_object": '{"name_of_person": "Ada"}',
    "person_object": '{"name": "Ada", "age": 36}',
    "json_scalar_list": "[1, 2, 3]",
    "empty_list": "[]",
    "empty_object": "{}",
    "json_then_text": '{"name": "get_weather", "arguments": {"city": "Paris"}}\nThat should do it.',
    "text_then_json": 'Here you go: {"name": "get_weather", "arguments": {"city": "Paris"}}',
    "plain_text": "The weather in Paris is sunny.",
    "empty": "",
    "python_tag_builtin": '<|python_tag|>brave_search.call(query="weather")',
    "semicolons_one_bad": '{"name": "get_time", "parameters": {}}; {"name": ',
    "unterminated_fence": '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "deep_nesting": "[" * 50_000,
}


@pytest.mark.parametrize("case", list(BAD))
def test_parse_malformed_is_plain_content(case: str) -> None:
    text = BAD[case]
    assert parse_tool_calls(text, NAMES) == (text, [])


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"n": ' + "1" * 5000 + "}}",
    '<tool_call>{"name": "get_weather", "arguments": {"n": ' + "9" * 4301 + "}}</tool_call>",
], ids=["plain", "hermes"])
def test_parse_huge_integer_never_raises(text: str) -> None:
    content, found = parse_tool_calls(text, NAMES)
    assert (content, found) == (text, []) or all(json.loads(c.arguments) for c in found)


def test_parse_llama3_semicolons_with_semicolon_in_argument() -> None:
    text = ('{"name": "get_weather", "parameters": {"city": "Paris; France"}}; '
            '{"name": "get_time", "parameters": {}}')
    assert calls(text) == (None, [("get_weather", {"city": "Paris; France"}), TIME])


def _strict_loads(s: str) -> Any:
    def bad(c: str) -> None:
        raise ValueError(f"not JSON: {c}")

    return json.loads(s, parse_constant=bad)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_parse_arguments_are_strict_json(literal: str) -> None:
    text = '{"name": "get_weather", "arguments": {"x": ' + literal + "}}"
    content, found = parse_tool_calls(text, NAMES)
    for c in found:
        _strict_loads(c.arguments)
    assert found == [] and content == text


def _seeds() -> list[str]:
    texts = [t for t, _, _ in GOOD.values()]
    texts += [json.dumps({"name": "get_weather", "arguments": {"city": "Zürich \"q\" \\ ;", "n": [1, {"k": None}]}},
                         ensure_ascii=False)]
    return texts


def _check_invariants(text: str, names: set[str] | None) -> None:
    content, found = parse_tool_calls(text, names)
    assert isinstance(found, list)
    if not found:
        assert content == text
        return
    assert content is None or (isinstance(content, str) and content)
    for c in found:
        assert isinstance(c, ToolCall) and isinstance(c.name, str) and c.name
        assert names is None or c.name in names
        assert isinstance(json.loads(c.arguments), dict)


def test_parse_fuzz_never_raises() -> None:
    rng = random.Random(20240601)
    alphabet = list('{}[]":,;\\ \n\t`<>/|_abcnpt0123456789東🌧') + ["<tool_call>", "</tool_call>", "<|python_tag|>",
                                                                   "```", "```json\n", "null", "true", '"name"',
                                                                   '"arguments"', '"parameters"', '"function"']
    n = 0
    for seed in _seeds():
        for cut in range(len(seed) + 1):  # every truncation and every suffix
            for names in (NAMES, None):
                _check_invariants(seed[:cut], names)
                _check_invariants(seed[cut:], names)
                n += 2
        for _ in range(150):  # random edits
            s = list(seed)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                pos = rng.randrange(len(s) + 1)
                if op < 0.4 and s:
                    del s[min(pos, len(s) - 1)]
                elif op < 0.8:
                    s.insert(pos, rng.choice(alphabet))
                elif s:
                    s[min(pos, len(s) - 1)] = rng.choice(alphabet)
            text = "".join(s)
            _check_invariants(text, rng.choice((NAMES, None)))
            n += 1
        doubled = seed + rng.choice(["", "\n", ";", " ", "\n\n"]) + seed  # concatenations
        _check_invariants(doubled, NAMES)
    assert n > 5000


# --------------------------------------------------------------------------------------------
# 4. check_tools
# --------------------------------------------------------------------------------------------


def test_check_tools_accepts_and_normalises() -> None:
    assert check_tools(None) == []
    assert check_tools([]) == []
    tools = [WEATHER_TOOL, {"function": {"name": "get_time"}}, (TIME_TOOL)]
    out = check_tools(tools)
    assert out == [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}, TIME_TOOL]
    assert check_tools(tuple(tools)) == out
    assert out[0] is not WEATHER_TOOL


@pytest.mark.parametrize("tools, pattern", [
    ("get_weather", r"tools must be a list"),
    (b"[]", r"tools must be a list"),
    ({"type": "function", "function": {"name": "f"}}, r"tools must be a list"),
    (42, r"tools must be a list"),
    (["get_weather"], r"tools\[0\] must be an object with type 'function'"),
    ([WEATHER_TOOL, {"type": "code_interpreter"}], r"tools\[1\] must be an object with type 'function'"),
    ([{"type": "function"}], r"tools\[0\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": "get_weather"}], r"tools\[0\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": {"description": "no name"}}], r"tools\[0\]\.function needs a name of 1-64"),
    ([WEATHER_TOOL, {"type": "function", "function": {"name": ""}}], r"tools\[1\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": {"name": 3}}], r"tools\[0\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": {"name": "get weather"}}], r"tools\[0\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": {"name": "x" * 65}}], r"tools\[0\]\.function needs a name of 1-64"),
    ([{"type": "function", "function": {"name": "f", "parameters": ["city"]}}],
     r"tools\[0\]\.function\.parameters must be a JSON Schema object"),
    ([{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
     r"tools\[0\]\.function\.parameters must be a JSON Schema object"),
])
def test_check_tools_rejects(tools: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        check_tools(tools)
