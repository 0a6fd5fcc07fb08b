"""Request bodies as pydantic models: the OpenAPI document's schemas, and the first check of every body.

A body is checked here for shape and types (an unknown field, a string where a number goes, a value
out of its documented range); the engine then checks what needs the model (token ids in the
vocabulary, a prompt that fits the context, a grammar that compiles). The server passes the body
on as it came, so a field's meaning is the engine's alone."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from .errors import ApiError

MAX_N = 128  # OpenAI's limit on n (and here on best_of)

def _integral(v: Any) -> Any:
    """JSON Schema's integers include 2.0: read it as 2 (and leave 2.5 to fail)."""
    return int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**63 else v


_INTEGRAL = BeforeValidator(_integral)  # after the bounds, or they leave the JSON schema
Int = Annotated[int, _INTEGRAL]
NonNegInt = Annotated[int, Field(ge=0), _INTEGRAL]
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}$")]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Bias = Annotated[float, Field(ge=-100, le=100)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class _Body(BaseModel):
    """A request body: unknown fields are refused, ints are not read from strings or bools, no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Part(BaseModel):
    """A nested object: fields beyond the named ones pass through to the engine (OpenAI adds some often)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool | None = None


class _Sampling(_Body):
    model: str | None = Field(None, description="the served model's id (from /v1/models); other ids answer 404")
    max_tokens: NonNegInt | None = Field(None, description="most tokens to generate (default: to the context's end "
                                                           "for chat, 16 for completions)")
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1), _INTEGRAL] | None = Field(None, description="0 or -1: off")
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N), _INTEGRAL] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repeat_penalty: Annotated[float, Field(gt=0)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1), _INTEGRAL] | None = None
    logit_bias: dict[TokenIdKey, Bias] | None = Field(None, description="token id (as a string) to a bias")
    seed: Int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[NonNegInt] | None = None
    ignore_eos: bool | None = None
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    priority: Literal["high", "normal", "low"] | None = Field(
        None, description="scheduling priority (also from X-Priority), capped at what the caller may ask for")
    timeout: Annotated[float, Field(gt=0)] | None = Field(None, description="seconds before the request ends (504)")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: NonEmptyStr | Annotated[list[NonEmptyStr], Field(min_length=1)] \
        | Annotated[list[NonNegInt], Field(min_length=1)] \
        | Annotated[list[Annotated[list[NonNegInt], Field(min_length=1)]], Field(min_length=1)] = Field(
        description="text, texts, token ids, or lists of token ids (ids below the vocabulary's size)")
    best_of: Annotated[int, Field(ge=1, le=MAX_N), _INTEGRAL] | None = None
    logprobs: Annotated[int, Field(ge=0, le=5), _INTEGRAL] | None = None
    echo: bool | None = None
    suffix: str | None = None


class TextPart(_Part):
    type: Literal["text"]
    text: str


class FunctionCall(_Part):
    name: str
    arguments: str | dict[str, Any]


class ToolCall(_Part):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


Content = str | list[TextPart]


class SystemMessage(_Part):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Part):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Part):
    role: Literal["assistant"]
    content: Content | None = Field(None, description="may be absent when tool_calls are given")
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = Field(None, description="legacy: one call")

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls and self.function_call is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Part):
    role: Literal["tool"]
    content: Content
    tool_call_id: str | None = None


class FunctionMessage(_Part):
    role: Literal["function"]
    content: Content
    name: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
                    Field(discriminator="role")]


class FunctionDef(_Part):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema object")
    strict: bool | None = None


class Tool(_Part):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Part):
    name: str


class NamedToolChoice(_Part):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaSpec(_Part):
    name: str
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="a JSON Schema object")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {name, schema}")
        return self


class GrammarSpec(_Part):
    type: Literal["lark", "gbnf", "regex"]
    value: str


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = Field(None, description="legacy: tools without the wrapper")
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(None, description="legacy tool_choice")
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), _INTEGRAL] | None = None
    max_completion_tokens: NonNegInt | None = None
    chat_template: NonEmptyStr | None = Field(None, description="a Jinja2 chat template in place of the model's own")
    grammar: str | GrammarSpec | None = Field(None, description="a Lark or GBNF grammar the answer must follow")
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        None, description="continue a stored conversation: messages are its new turns")


class TokenizeRequest(_Body):
    """``POST /tokenize``: ``content`` (or ``prompt``) to token ids."""

    content: str | None = None
    prompt: str | None = None
    add_special: bool = True

    @model_validator(mode="after")
    def _text_given(self) -> TokenizeRequest:
        if self.content is None and self.prompt is None:
            raise ValueError("content is required")
        return self


class DetokenizeRequest(_Body):
    """``POST /detokenize``: token ids to text."""

    tokens: list[NonNegInt]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def checked(model: type[_Body], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as ``model`` reads them (the fields given, integral floats where integers go, nested
    objects' extra fields kept), or a 400 naming the first field it refuses."""
    try:
        return model.model_validate(fields).model_dump(exclude_unset=True, by_alias=True)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        err = max(errs, key=lambda x: len(x["loc"]))  # the most specific (of a union's branches: the deepest)
        loc = _where(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the message's role
            loc += "." + str(err.get("ctx", {}).get("discriminator", "role")).strip("'")
        if err["type"] == "extra_forbidden":
            raise ApiError(400, f"unsupported field {loc!r}; supported: {', '.join(sorted(_names(model)))}",
                           param=loc, code="unsupported_field") from None
        if err["type"] == "missing":
            raise ApiError(400, f"{loc} is required", param=loc, code="missing_field") from None
        raise ApiError(400, f"{loc or 'the body'}: {err['msg']}", param=loc or None, code="invalid_field") from None


def _names(model: type[_Body]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path, ``messages[0].content`` (union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _branch(part):
            out += ("." if out else "") + part
    return out


def _branch(part: str) -> bool:
    """Pydantic names the union member it tried in a location ('str', 'list[int]', 'Message', 'literal[...]')."""
    return part in _TAGS or "[" in part or part[:1].isupper() or part.startswith(("literal", "function-"))


_TAGS = {"str", "int", "float", "bool", "dict", "system", "developer", "user", "assistant", "tool", "function"}


def body_schemas() -> dict[str, type[BaseModel]]:
    """The models the OpenAPI document names, by path."""
    return {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest,
            "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest}
