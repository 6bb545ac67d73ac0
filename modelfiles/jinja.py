"""GGUF chat templates (Jinja) and Ollama's named templates.

``render_jinja`` renders a Hugging Face style chat template the way transformers'
``apply_chat_template`` does: Jinja2's immutable sandbox with trim_blocks and lstrip_blocks,
loop controls, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text,
and a ``{% generation %}`` block that just renders its body.

``named_template_for`` maps a GGUF's Jinja template to one of Ollama's named Go templates the
way Ollama's template.Named does: the entry of templates/index.json at the smallest Levenshtein
distance (over characters, the first one on ties), if that distance is below 100.
``load_named_template`` reads that Go template and its parameters from modelfiles/templates/.
"""

from __future__ import annotations

import datetime
import functools
import json
from pathlib import Path
from typing import Any

from .gotemplate import TemplateError

TEMPLATES_DIR = Path(__file__).parent / "templates"
MAX_DISTANCE = 100  # Ollama's threshold for a named-template match

__all__ = ["TEMPLATES_DIR", "levenshtein", "load_named_template", "named_template_for", "render_jinja"]


# ----------------------------------------------------------------------------- Jinja rendering
def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """{% generation %}...{% endgeneration %} (marks assistant text in HF templates)."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, GenerationBlock],
                                        undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def _compile(source: str):
    import jinja2
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template: {e}") from None


def render_jinja(template: str, *, messages: list[dict], bos_token: str = "", eos_token: str = "",
                 add_generation_prompt: bool = True, tools: list[dict] | None = None, **extra: Any) -> str:
    """Renders a Jinja chat template; errors (syntax, raise_exception) raise TemplateError.
    ``extra`` goes into the template's context too (e.g. enable_thinking=False)."""
    import jinja2
    t = _compile(template)
    try:
        return t.render(messages=messages, tools=tools, bos_token=bos_token, eos_token=eos_token,
                        add_generation_prompt=add_generation_prompt, **extra)
    except TemplateError:
        raise
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template: {e}") from None
    except Exception as e:  # errors of the template's own logic (TypeError and the like)
        raise TemplateError(f"chat template: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- named templates
def levenshtein(a: str, b: str) -> int:
    """Edit distance over characters (bit-parallel, Myers/Hyyrö)."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    full = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


@functools.lru_cache(maxsize=1)
def _index() -> list[dict]:
    return json.loads((TEMPLATES_DIR / "index.json").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=128)
def named_template_for(jinja_src: str) -> str | None:
    """The name of Ollama's named template matching a GGUF chat template, or None."""
    if not jinja_src:
        return None
    best, name = MAX_DISTANCE, None
    for entry in _index():
        # the distance is at least the difference in length: entries that cannot come under
        # the threshold (or the best so far) need no computing; the answer is the same
        if abs(len(jinja_src) - len(entry["template"])) >= best:
            continue
        d = levenshtein(jinja_src, entry["template"])
        if d < best:
            best, name = d, entry["name"]
    return name


def load_named_template(name: str) -> tuple[str, dict]:
    """(Go template text, parameters: {"stop": [...]} where the template has stop words) of a
    named template; KeyError for an unknown name."""
    if not name or "/" in name or name.startswith(".") or not (TEMPLATES_DIR / f"{name}.gotmpl").is_file():
        raise KeyError(f"no named template {name!r}")
    text = (TEMPLATES_DIR / f"{name}.gotmpl").read_text(encoding="utf-8").replace("\r\n", "\n")
    params_path = TEMPLATES_DIR / f"{name}.json"
    params: dict = {}
    if params_path.is_file():
        # Ollama reads only "stop" from these files (gemma3-instruct's temperature is not applied)
        stop = json.loads(params_path.read_text(encoding="utf-8")).get("stop")
        if stop is not None:
            params["stop"] = list(stop)
    return text, params
