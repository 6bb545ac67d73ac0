"""Turning sampled token bytes into streamable text.

Tokens are byte pieces: one UTF-8 character may span several tokens, and a stop string may span
several pieces. `TextStream` holds back exactly what cannot be emitted yet (an incomplete character,
or a tail that could still grow into a stop string) and emits everything else at once.
"""

from __future__ import annotations


def _utf8_complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    n = len(data)
    # Look at most 3 bytes back for the lead byte of a character that has not finished yet.
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0b1100_0000 == 0b1000_0000:  # continuation byte: keep looking for its lead
            continue
        if byte & 0b1000_0000 == 0:  # ASCII: everything is complete
            return n
        need = 2 if byte & 0b1110_0000 == 0b1100_0000 else 3 if byte & 0b1111_0000 == 0b1110_0000 else 4
        return n if back >= need else n - back
    return n


def _longest_stop_prefix_tail(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class TextStream:
    """Accumulates token bytes; `push` returns the text that is safe to emit now."""

    def __init__(self, stops: list[str] | None = None):
        self.stops = [s for s in (stops or []) if s]
        self._bytes = b""  # undecoded tail (an unfinished UTF-8 character)
        self._held = ""  # decoded text held back because it may start a stop string
        self.stopped = False

    def push(self, piece: bytes) -> str:
        if self.stopped:
            return ""
        if not self.stops and not self._bytes:
            # The common case, per token: no stop strings, nothing held, a piece of whole characters.
            try:
                return piece.decode("utf-8")
            except UnicodeDecodeError:
                pass  # a character split across tokens, or invalid bytes: the general path below
        data = self._bytes + piece
        cut = _utf8_complete_prefix(data)
        self._bytes = data[cut:]
        text = self._held + data[:cut].decode("utf-8", errors="replace")
        if not self.stops:
            self._held = ""
            return text
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(pos for pos, _ in hits)]
        hold = _longest_stop_prefix_tail(text, self.stops)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """What is left when generation ends for another reason than a stop string."""
        if self.stopped:
            return ""
        text = self._held + self._bytes.decode("utf-8", errors="replace")
        self._held, self._bytes = "", b""
        return text
