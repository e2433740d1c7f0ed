"""The OpenAI API's request bodies (validated strictly: wrong types and unknown parameters are refused,
parameters this server does not implement are refused by name) and its error shape
(``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import JSONResponse


class APIError(Exception):
    """A request the server answers with an OpenAI error object and ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None, headers: dict[str, str] | None = None, counted: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.counted = counted  # already counted in the metrics
        self.kind = kind or _KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_KINDS = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable_error"}


class _Body(BaseModel):
    # strict: "0.5" is not a number, 1.5 is not an integer, "true" is not a boolean; unknown keys are errors
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


#: parameters of OpenAI's API this server does not implement, and the value each may take (its default:
#: sending the default is allowed, anything else is a 400 that names the parameter)
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "suffix": (None, ""), "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, False), "response_format": (None, {"type": "text"}), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "reasoning_effort": (None,), "web_search_options": (None,),
    "service_tier": (None, "auto", "default"), "store": (None, False), "metadata": (None,),
}


class _Generation(_Body):
    """What both endpoints share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    # vLLM's extensions
    top_k: int | None = None
    ignore_eos: bool = False
    # accepted only at their defaults (UNSUPPORTED)
    n: Any = None
    best_of: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    service_tier: Any = None
    store: Any = None
    metadata: Any = None

    def refuse_unsupported(self) -> None:
        for name, allowed in UNSUPPORTED.items():
            if name in type(self).model_fields:
                value = getattr(self, name)
                if not _is_default(value, allowed):
                    raise APIError(400, f"`{name}` {json.dumps(value)[:80]} is not supported by this server "
                                   f"(only {_allowed(allowed)})", name, "unsupported_parameter")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "`stream_options` needs `stream` true", "stream_options")


def _is_default(value: Any, allowed: tuple[Any, ...]) -> bool:
    for each in allowed:
        if each is None or value is None:
            if value is each:
                return True
        elif isinstance(value, bool) == isinstance(each, bool) and value == each:
            return True
    return False


def _allowed(values: tuple[Any, ...]) -> str:
    shown = [json.dumps(v) for v in values if v is not None]
    return "omitted" + (f" or {' / '.join(shown)}" if shown else "")


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int]
    echo: Any = None
    suffix: Any = None


class ChatRequest(_Generation):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


def parse_body(raw: bytes, model: type[_Body]) -> Any:
    """The request body as ``model``, or an ``APIError`` 400 naming what is wrong with it."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON ({error})", None, "invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error) from None


def _validation_error(error: ValidationError) -> APIError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    # a union reports each alternative; the parameter is the path without the alternatives' type names
    path = [part for part in loc if not _is_type_name(part)]
    param = ".".join(path) or None
    kind = first["type"]
    if kind == "missing":
        message = f"missing required parameter `{param}`"
    elif kind == "extra_forbidden":
        message = f"unrecognized parameter `{param}`"
        return APIError(400, message, param, "unsupported_parameter")
    else:
        message = f"`{param}`: {first['msg']}"
    return APIError(400, message, param, "invalid_type" if kind != "missing" else "missing_parameter")


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "list[str]", "list[int]", "list[TextPart]", "TextPart",
                    "function-after[...]"} or part.startswith(("list[", "function-", "literal["))
