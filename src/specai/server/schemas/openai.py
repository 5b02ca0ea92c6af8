"""The OpenAI-compatible API: `GET /v1/models[/{id}]`, `POST /v1/chat/completions` and OpenAI's error body.

The request decodes every field of OpenAI's chat completion request that specai either honours or must refuse
(the route checks the refused ones and answers 400 naming them); fields it does not know are ignored, as
OpenAI-compatible servers (vLLM, Ollama, LiteLLM) do, so a newer SDK does not break an older server.
"""

from __future__ import annotations

from typing import Any

import msgspec


class FunctionCallIn(msgspec.Struct):
    """The function an assistant turn called: its name and arguments (a JSON text, as OpenAI sends them)."""

    name: str
    arguments: str = "{}"


class ToolCallIn(msgspec.Struct):
    """One tool call of an earlier assistant turn, in OpenAI's shape."""

    id: str
    function: FunctionCallIn
    type: str = "function"


class ChatMessageIn(msgspec.Struct):
    """One OpenAI chat message: system, developer, user, assistant (maybe with tool calls) or tool (a result)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptionsIn(msgspec.Struct):
    """`stream_options`: only `include_usage` changes anything."""

    include_usage: bool = False


class JsonSchemaIn(msgspec.Struct, omit_defaults=True):
    """`response_format.json_schema`: the schema the answer must follow (passed on without the fields not given)."""

    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormatIn(msgspec.Struct):
    """`response_format`: `text` (the default), `json_object` or `json_schema`."""

    type: str
    json_schema: JsonSchemaIn | None = None


class FunctionIn(msgspec.Struct):
    """A client-side function the model may call."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(msgspec.Struct):
    """One of the client's tools (`type` must be `function`)."""

    type: str
    function: FunctionIn


class ChatCompletionIn(msgspec.Struct):
    """OpenAI's chat completion request: the fields specai honours, the harmless ones it ignores, and those it must
    refuse (decoded only so that the route can name them in a 400); unknown fields are ignored."""

    model: str
    messages: list[ChatMessageIn]
    stream: bool = False
    stream_options: StreamOptionsIn | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormatIn | None = None
    tools: list[ToolIn] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # accepted and ignored (see routes/openai.py IGNORED)
    user: str | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    # refused unless harmless (see routes/openai.py REFUSED)
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None


class ModelOut(msgspec.Struct):
    """An available agent, as an OpenAI model."""

    id: str
    object: str
    created: int
    owned_by: str


class ModelListOut(msgspec.Struct):
    """`GET /v1/models`."""

    object: str
    data: list[ModelOut]


class FunctionCallOut(msgspec.Struct):
    """The function the model wants called, its arguments as a JSON text (OpenAI's shape)."""

    name: str
    arguments: str


class ToolCallOut(msgspec.Struct):
    """A call of one of the client's tools."""

    id: str
    type: str
    function: FunctionCallOut


class AssistantMessage(msgspec.Struct, omit_defaults=True):
    """The reply of a completion: text (null when the model only called tools) and the client tools it called."""

    role: str
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChoiceOut(msgspec.Struct):
    """The one choice specai gives."""

    index: int
    message: AssistantMessage
    finish_reason: str


class UsageOut(msgspec.Struct):
    """Token counts, summed over the run's model calls, as the vendor reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(msgspec.Struct):
    """`POST /v1/chat/completions` without `stream`; `usage` is null when the vendor reported no counts."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut | None


class OpenAIError(msgspec.Struct):
    """OpenAI's error object: a message, a type by status, the request parameter at fault, specai's stable code."""

    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorBody(msgspec.Struct):
    """`{"error": {"message", "type", "param", "code"}}`: every error on `/v1/*`, so the OpenAI SDKs show it."""

    error: OpenAIError
