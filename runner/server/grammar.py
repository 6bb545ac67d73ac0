"""`format` ("json" or a JSON schema) as a GBNF grammar for llama.cpp's grammar sampler."""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from runner.server.http import bad_request


def grammar_for_format(fmt) -> str | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        try:
            grammar = json_schema_to_gbnf(json.dumps(fmt))
        except Exception as exc:  # the converter raises assorted errors on schemas it cannot express
            raise bad_request(f"invalid JSON schema in format: {exc}") from None
        # The converter lets raw control characters into strings (a newline, seen with smollm2);
        # JSON forbids them, so the string character class excludes them as llama.cpp's own does.
        return grammar.replace(r'char ::= [^"\\]', r'char ::= [^"\\\x7F\x00-\x1F]')
    raise bad_request('invalid format: expected "json" or a JSON schema object')
