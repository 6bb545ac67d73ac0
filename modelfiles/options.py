"""The model options Ollama accepts, in a Modelfile's PARAMETER lines and in a request's `options`.

The table follows Ollama's `api.Options` (predict options) and `api.Runner` (options fixed when a model
is loaded). Text values (Modelfile, `/set parameter`) are typed like Go's strconv functions; JSON values
(request `options`) like Ollama's `Options.FromMap`.
"""

from __future__ import annotations

import json
import math
import re

__all__ = [
    "OPTION_TYPES",
    "RUNNER_OPTIONS",
    "DEPRECATED_OPTIONS",
    "DEFAULT_OPTIONS",
    "OptionError",
    "parse_parameter",
    "validate_options",
    "format_parameter",
]

# Options that must be set when the model is loaded (Ollama's api.Runner); changing one needs a reload.
RUNNER_OPTIONS: frozenset[str] = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"}
)

OPTION_TYPES: dict[str, type] = {
    # predict options
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
    # lm's own (not Ollama's): speculative decoding's draft source, "ngram" (runner/engine/speculative.py)
    "draft_type": str,
    # runner (load-time) options
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
}

# Parameters Ollama's Modelfile parser still recognises but ignores with a warning. Anywhere else (request
# options, `/set parameter`) they are simply unknown names.
DEPRECATED_OPTIONS: frozenset[str] = frozenset(
    {
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
    }
)

# The types the deprecated options had in Ollama's api.Options: a request's value is still checked against
# them (a wrong type is a 400, as for every option), then ignored.
DEPRECATED_TYPES: dict[str, type] = {
    "penalize_newline": bool, "low_vram": bool, "f16_kv": bool, "logits_all": bool, "vocab_only": bool,
    "use_mlock": bool, "mirostat": int, "mirostat_tau": float, "mirostat_eta": float,
}
assert set(DEPRECATED_TYPES) == DEPRECATED_OPTIONS

# Ollama's api.DefaultOptions(), except num_ctx (Ollama picks it from OLLAMA_CONTEXT_LENGTH or the VRAM
# size) and main_gpu/use_mmap (unset: the runtime decides). draft_num_predict is forced to 0 by Ollama
# when the model has no draft model and neither the model nor the request sets it.
DEFAULT_OPTIONS: dict[str, object] = {
    "num_keep": 4,
    "seed": -1,
    "num_predict": -1,
    "top_k": 40,
    "top_p": 0.9,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "temperature": 0.8,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "num_batch": 512,
    "num_gpu": -1,
    "num_thread": 0,
    "draft_num_predict": 4,
}

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "string", list: "string"}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT32_MAX = 3.4028234663852886e38

# Go strconv.ParseInt(s, 10, 64): optional sign, decimal digits, nothing else.
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# Go strconv.ParseFloat decimal and hexadecimal forms (digit-separating underscores, which some Go
# versions take, are refused).
_DEC_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_HEX_FLOAT_RE = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+(?:\.[0-9a-fA-F]*)?|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+\Z")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class OptionError(ValueError):
    """An unknown parameter, or a value of the wrong type."""


def _q(s: str) -> str:
    """Quote like Go's %q for the plain names used here."""
    return json.dumps(s, ensure_ascii=False)


def _parse_int(raw: str) -> int | None:
    if not _INT_RE.match(raw):
        return None
    value = int(raw)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_float(raw: str) -> float | None:
    if _DEC_FLOAT_RE.match(raw):
        value = float(raw)
    elif _HEX_FLOAT_RE.match(raw):
        sign = -1.0 if raw.startswith("-") else 1.0
        value = sign * float.fromhex(raw.lstrip("+-"))
    else:
        # Go also accepts inf/infinity/nan; a non-finite sampling parameter is never meaningful, so these
        # are refused (a deliberate difference from Ollama).
        return None
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        return None  # Go: ParseFloat(s, 32) reports "value out of range"
    return value


def _parse_bool(raw: str) -> bool | None:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    return None


def parse_parameter(name: str, raw: str) -> object:
    """Type one PARAMETER value given as text (a Modelfile line, `/set parameter name value`).

    `stop` gives a one-item list; the caller accumulates repeats. Deprecated names are unknown here: the
    Modelfile parser skips them (with a warning) before calling this.
    """
    kind = OPTION_TYPES.get(name)
    if kind is None:
        raise OptionError(f"unknown parameter '{name}'")
    if kind is list:
        return [raw]
    if kind is str:
        return raw
    if kind is int:
        value = _parse_int(raw)
    elif kind is float:
        value = _parse_float(raw)
    else:
        value = _parse_bool(raw)
    if value is None:
        raise OptionError(f"invalid {_TYPE_NAMES[kind]} value '{raw}' for parameter '{name}'")
    return value


def format_parameter(name: str, value: object) -> list[str]:
    """The text form(s) of a typed parameter value, one per PARAMETER line (several for `stop`).

    parse_parameter(name, text) gives the value back.
    """
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, float):
        return [repr(value)]
    return [str(value)]


def _coerce(name: str, kind: type, value: object) -> object:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {_q(name)} must be of type integer")
        if isinstance(value, float):
            # JSON numbers are floats to Go; Ollama truncates them toward zero (3.0 -> 3, 3.7 -> 3).
            if not math.isfinite(value):
                raise OptionError(f"option {_q(name)} must be of type integer")
            value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OptionError(f"option {_q(name)} must be of type integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {_q(name)} must be of type float32")
        try:
            value = float(value)
        except OverflowError:
            raise OptionError(f"option {_q(name)} must be of type float32") from None
        if not math.isfinite(value):
            raise OptionError(f"option {_q(name)} must be a finite number")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(f"option {_q(name)} must be of type boolean")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise OptionError(f"option {_q(name)} must be of type string")
        return value
    # list of strings (stop). A single string is taken as a one-item list (Ollama's native API refuses it
    # with "must be of type array"; its OpenAI layer and most clients send either form).
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise OptionError(f"option {_q(name)} must be of type array")
    if not all(isinstance(v, str) for v in value):
        raise OptionError(f"option {_q(name)} must be of an array of strings")
    return list(value)


def validate_options(options: dict | None) -> tuple[dict, list[str]]:
    """Type a request's JSON `options`.

    Returns (typed options, unknown names). Unknown names (deprecated ones included) are left out of
    the typed options, for the caller to warn about. Options set to null are skipped, as Ollama does.
    Raises OptionError for a known option with a value of the wrong type.
    """
    if options is None:
        return {}, []
    if not isinstance(options, dict):
        raise OptionError("options must be an object")
    typed: dict = {}
    unknown: list[str] = []
    for name, value in options.items():
        kind = OPTION_TYPES.get(name)
        if kind is None:
            if name in DEPRECATED_TYPES and value is not None:
                _coerce(name, DEPRECATED_TYPES[name], value)  # typed as it was, though it does nothing now
            unknown.append(name)
            continue
        if value is None:
            continue
        typed[name] = _coerce(name, kind, value)
    return typed, unknown
