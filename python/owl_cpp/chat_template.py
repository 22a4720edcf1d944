"""A GGUF's `tokenizer.chat_template` (a Jinja template, as in HF's tokenizer_config.json) rendered in Python.

Rendering follows what HF transformers' apply_chat_template and llama-cpp-python do: a sandboxed Jinja
environment (ImmutableSandboxedEnvironment: a template can read its arguments but not change or escape
them) with trim_blocks / lstrip_blocks and the loop controls ({% break %}, {% continue %}); the variables
`messages`, `add_generation_prompt`, `bos_token`, `eos_token` (token text from the vocabulary) and the
functions `raise_exception(message)` (how templates refuse a conversation, e.g. a system message the model
was not trained with) and `strftime_now(format)`; `tojson` writes non-ASCII as is and leaves < > & alone,
as transformers' does.

The rendered text goes to the tokenizer with control tokens parsed and nothing added: a template writes
bos_token itself where the model wants it. Only when the vocabulary asks for BOS (tokenizer.ggml.add_bos_token)
and the rendering does not start with it is BOS put first: the ids then start with exactly one BOS either way,
as llama.cpp's server ends up with (it strips a leading BOS text and lets the tokenizer add it).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Optional, Sequence

TEMPLATE_KEY = "tokenizer.chat_template"


class TemplateRefusal(Exception):
    """What raise_exception(message) raises inside a template: the template's own message."""


def _raise_exception(message):
    raise TemplateRefusal(str(message))


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template. `where` names it in error messages (the model file)."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", where: str = "the model"):
        try:
            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:                                  # a runtime dependency (pyproject.toml)
            raise ImportError("rendering a GGUF's chat template needs jinja2 (pip install jinja2)") from None
        self.source = source
        self.bos_token, self.eos_token, self.where = bos_token, eos_token, where
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ValueError(f"{where}: its chat template ({TEMPLATE_KEY}) does not compile: "
                             f"{type(e).__name__}: {e}") from e

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as text. messages: {"role", "content"} dicts (other keys are left out)."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return self._template.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateRefusal as e:
            raise ValueError(f"{self.where}: the chat template refuses this conversation: {e}") from None
        except Exception as e:     # jinja2's errors, and what a template's expressions raise (TypeError, ...)
            raise ValueError(f"{self.where}: the chat template ({TEMPLATE_KEY}) cannot be rendered: "
                             f"{type(e).__name__}: {e}") from e


def token_text(tokenizer, token_id: Optional[int]) -> str:
    """A token's text as a template writes it ("" for no token)."""
    if token_id is None:
        return ""
    return tokenizer.decode([int(token_id)], True)
