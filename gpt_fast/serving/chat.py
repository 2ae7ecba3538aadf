"""The chat template: messages -> one prompt string. GPT-1 was never trained on chat and has no template of its
own, so the default is a plain transcript ("role: content" lines, then "assistant:"); --chat-template FILE takes a
Jinja2 template over `messages` (each with .role and .content) and `add_generation_prompt`, as transformers' chat
templates are written, rendered in Jinja2's sandbox.
"""

from __future__ import annotations

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gpt_fast.serving.errors import BadRequest

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message.role }}: {{ message.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class ChatTemplate:
    def __init__(self, source: str = DEFAULT_CHAT_TEMPLATE):
        try:
            self.template = ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(source)
        except TemplateError as error:
            raise ValueError(f"the chat template does not parse: {error}") from None

    @classmethod
    def from_file(cls, path) -> "ChatTemplate":
        with open(path, encoding="utf-8") as handle:
            return cls(handle.read())

    def render(self, messages: list[dict]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True)
        except TemplateError as error:
            raise BadRequest(f"the chat template failed on these messages: {error}", "messages") from None
