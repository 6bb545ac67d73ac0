"""What /api/create refuses, or records, of the Modelfile lines lm reads but does not act on.

Ollama's newer Modelfile lines, as its CLI sends them in /api/create's body:
- REQUIRES <semver>: the oldest Ollama the model works with. Ollama checks only that it is a version,
  and records it (config `requires`, shown by /api/show). lm compares it with OLLAMA_COMPAT_VERSION, the
  Ollama release whose API and Modelfile lm follows: a model needing a later one is refused at create,
  for it most likely needs an architecture, renderer or parser lm does not have.
- RENDERER / PARSER: Ollama's built-in prompt renderers and output parsers, in Go; lm renders with the
  model's TEMPLATE and parses thinking and tool calls from it. Refused, rather than silently ignored.
- DRAFT (a draft model for speculative decoding) and a second FROM (a vision projector): refused until
  lm runs them.
"""

from __future__ import annotations

import re

# The Ollama release lm follows: the newest whose features lm carries (think "max" came in 0.22.0).
OLLAMA_COMPAT_VERSION = "0.22.0"

_SEMVER = re.compile(r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?\Z")


class Refused(ValueError):
    """A create request asking for something lm cannot do (HTTP 400)."""


def _version(text: str) -> tuple[int, int, int] | None:
    m = _SEMVER.match(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def check_requires(value) -> str | None:
    """The request's `requires` without a leading v (as Ollama stores it), or None when there is none."""
    if value is None or value == "":
        return None
    version = _version(value) if isinstance(value, str) else None
    if version is None:
        raise Refused("requires must be a valid semver (e.g. 0.14.0)")
    if version > _version(OLLAMA_COMPAT_VERSION):
        raise Refused(f"this model requires Ollama {value.lstrip('v')} or newer; lm follows Ollama "
                      f"{OLLAMA_COMPAT_VERSION}")
    return value.lstrip("v")


DRAFT_REFUSAL = "DRAFT is not supported yet: lm has no draft models (draft_type ngram needs none)"


def check_unsupported(body: dict) -> None:
    """RENDERER, PARSER, DRAFT: a clear refusal where Ollama would act on them."""
    for key, line in (("renderer", "RENDERER"), ("parser", "PARSER")):
        if body.get(key):
            raise Refused(f"{line} is not supported: lm renders prompts with the model's TEMPLATE and reads "
                          "thinking and tool calls from it")
    if body.get("draft") or body.get("draft_files"):
        raise Refused(DRAFT_REFUSAL)
