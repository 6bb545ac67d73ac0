"""How the OpenAI and Anthropic dialects ask for thinking, as Ollama's think value.

The thinking text itself comes back in each dialect's own field: `reasoning` on an OpenAI chat message
or delta (Ollama's name), a `reasoning` output item in the Responses API, `thinking` content blocks in
Anthropic's Messages API.
"""

from __future__ import annotations


class ReasoningError(ValueError):
    """A reasoning setting of the wrong kind (a 400 in the dialect's own error shape)."""


def think_from_effort(effort) -> bool | str | None:
    """OpenAI's reasoning effort as Ollama's think (its thinkFromReasoningEffort): None leaves thinking at the
    model's default; OpenAI's tiers beyond Ollama's are brought to the nearest one rather than refused."""
    if effort is None or effort == "":
        return None
    if not isinstance(effort, str):
        raise ReasoningError("reasoning effort must be a string")
    mapping = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
               "xhigh": "max", "ultra": "max"}
    if effort not in mapping:
        raise ReasoningError(f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                             '"xhigh", "ultra", "max", or "none")')
    return mapping[effort]


def openai_effort(body: dict):
    """The effort a chat or Responses request names: `reasoning.effort`, else `reasoning_effort`."""
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise ReasoningError("reasoning must be an object")
        return reasoning.get("effort")
    return body.get("reasoning_effort")


def think_from_anthropic(body: dict) -> bool | str | None:
    """Anthropic's `thinking: {"type": "enabled" | "disabled", "budget_tokens"}`, else `output_config.effort`
    (as Ollama reads them). A budget has no counterpart: the model thinks until it closes the block."""
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise ReasoningError('thinking: type must be "enabled", "disabled" or "adaptive"')
        if thinking["type"] == "enabled":
            return True
        if thinking["type"] == "disabled":
            return False
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if isinstance(effort, str):
        effort = {"xhigh": "high"}.get(effort.strip().lower(), effort.strip().lower())
        if effort in ("high", "medium", "low", "max"):
            return effort
    return None
