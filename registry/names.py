"""Model names as Ollama spells them: ``[host/][namespace/]model[:tag]``.

Validation follows Ollama's ``types/model/name.go``: every part starts with a letter, digit or
underscore, so no part can be ``..`` or empty, which is what keeps names safe to use as paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# ASCII only, as Ollama checks bytes; "." is not allowed in a namespace, ":" only in a host (port).
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG_RE = _MODEL_RE


class InvalidName(ValueError):
    """A model name that Ollama would reject; the message is meant for users."""

    def __init__(self, text: object):
        super().__init__(f"invalid model name: {text!r}")
        self.text = text


def _valid_parts(host: str, namespace: str, model: str, tag: str) -> bool:
    checks = ((_HOST_RE, host), (_NAMESPACE_RE, namespace), (_MODEL_RE, model), (_TAG_RE, tag))
    return all(isinstance(part, str) and regex.fullmatch(part) for regex, part in checks)


def _cut_last(text: str, sep: str, original: str) -> tuple[str, str] | None:
    """Split at the last ``sep``; a separator with nothing on either side is an error."""
    before, found, after = text.rpartition(sep)
    if not found:
        return None
    if not before or not after:
        raise InvalidName(original)
    return before, after


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        if not isinstance(text, str) or not text:
            raise InvalidName(text)
        rest = text
        tag = DEFAULT_TAG
        # "/" cannot occur in a tag, so a ":" after the last "/" starts the tag (a host's port
        # always comes before a "/").
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = _cut_last(rest, ":", text)
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        cut = _cut_last(rest, "/", text)
        if cut is None:
            model = rest
        else:
            rest, model = cut
            cut = _cut_last(rest, "/", text)
            if cut is None:
                namespace = rest
            else:
                host, namespace = cut
                # Ollama accepts "scheme://host/..."; the scheme only picks http or https for a
                # pull, which our callers choose with `insecure`, so it is dropped here.
                _scheme, sep, bare = host.partition("://")
                if sep:
                    host = bare
        if not _valid_parts(host, namespace, model, tag):
            raise InvalidName(text)
        return cls(host, namespace, model, tag)

    @classmethod
    def from_parts(cls, host: str, namespace: str, model: str, tag: str) -> "ModelName":
        """Build from the four path components of a manifest, validating each."""
        if not _valid_parts(host, namespace, model, tag):
            raise InvalidName("/".join((host, namespace, model, tag)))
        return cls(host, namespace, model, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The shortest form, as Ollama lists models (its ``DisplayShortest``)."""
        if self.host.lower() != DEFAULT_HOST:
            return str(self)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The four path components of the manifest, host first."""
        return (self.host, self.namespace, self.model, self.tag)

    def matches(self, other: "ModelName") -> bool:
        return tuple(p.lower() for p in self.parts) == tuple(p.lower() for p in other.parts)
