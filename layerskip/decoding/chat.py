"""Chat prompts with the tokenizer's own template (``tokenizer.apply_chat_template``).

The template writes every special token the model expects (BOS included, where it wants one), so
the rendered text is tokenized with ``add_special_tokens=False``: the tokenizer must not add a
second BOS in front of the template's.
"""

from __future__ import annotations

from typing import Any

from layerskip.errors import LayerskipError

Message = dict[str, str]


def require_chat_template(tokenizer: Any) -> None:
    """One clear line when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise LayerskipError(f"the tokenizer of {name} has no chat template; drop `chat` / `apply_chat_template`")


def encode_chat(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of ``messages`` rendered by the template, ending with the assistant's generation prompt."""
    require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Conversation:
    """A chat that carries on: each user turn is answered and the answer joins the history.

    ``ask(text)`` appends a user turn and returns the prompt ids for the whole conversation so far;
    ``answer(text)`` appends the model's reply as the assistant turn.
    """

    def __init__(self, tokenizer: Any, system: str | None = None) -> None:
        require_chat_template(tokenizer)
        self.tokenizer = tokenizer
        self.messages: list[Message] = [{"role": "system", "content": system}] if system else []

    def ask(self, text: str) -> list[int]:
        self.messages.append({"role": "user", "content": text})
        return encode_chat(self.tokenizer, self.messages)

    def answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


def single_turn(tokenizer: Any, text: str, system: str | None = None) -> list[int]:
    """Prompt ids of ``text`` as the one user turn of a new conversation."""
    return Conversation(tokenizer, system).ask(text)
