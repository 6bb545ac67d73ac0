"""The prompt text for a request: the model's Go TEMPLATE, else its GGUF Jinja template, else plain."""

from __future__ import annotations

from modelfiles import TemplateError, render, render_jinja

from runner.model.config import ModelConfig


class PromptError(ValueError):
    pass


def _with_model_messages(cfg: ModelConfig, messages: list[dict], system: str | None) -> list[dict]:
    """The Modelfile's MESSAGEs come first; its SYSTEM applies unless the request brings its own."""
    msgs = list(cfg.messages) + list(messages)
    if system is not None:
        msgs = [m for m in msgs if m.get("role") != "system"]
        return [{"role": "system", "content": system}] + msgs if system else msgs
    if cfg.system and not any(m.get("role") == "system" for m in msgs):
        msgs = [{"role": "system", "content": cfg.system}] + msgs
    return msgs


def chat_prompt(cfg: ModelConfig, messages: list[dict], *, template: str | None = None, system: str | None = None,
                tools: list | None = None, think=None, suffix: str | None = None) -> str:
    msgs = _with_model_messages(cfg, messages, system)
    tmpl = template if template is not None else cfg.template
    try:
        if tmpl:
            return render(tmpl, messages=msgs, tools=tools, think=think, suffix=suffix)
        if cfg.gguf.chat_template:
            return render_jinja(cfg.gguf.chat_template, messages=msgs, tools=tools, add_generation_prompt=True,
                                bos_token="", eos_token="")
    except TemplateError as exc:
        raise PromptError(f"template error: {exc}") from None
    return "\n\n".join(m.get("content", "") for m in msgs)
