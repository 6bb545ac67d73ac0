"""TextStream: streamed token bytes to text, never splitting a character, holding back stop strings."""

from __future__ import annotations

import itertools

import pytest

from runner.engine.text import TextStream


def _run(pieces: list[bytes], stops: list[str]) -> tuple[str, bool]:
    s = TextStream(stops)
    out = "".join(s.push(p) for p in pieces)
    return out + s.flush(), s.stopped


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "emoji 🙂🚀 end", "a\u200db"])
def test_multibyte_characters_split_anywhere(text):
    data = text.encode()
    for cut in range(1, len(data)):
        s = TextStream()
        first = s.push(data[:cut])
        assert "\ufffd" not in first  # never emits half a character
        assert first + s.push(data[cut:]) + s.flush() == text


def test_every_byte_alone():
    data = "Grüße 🙂".encode()
    s = TextStream()
    assert "".join(s.push(bytes([b])) for b in data) + s.flush() == "Grüße 🙂"


@pytest.mark.parametrize("stop", ["END", "<|im_end|>", "\n\n", "é!"])
def test_stop_string_across_pieces_is_not_emitted(stop):
    text = f"before {stop} after"
    data = text.encode()
    for a, b in itertools.combinations(range(1, len(data)), 2):
        out, stopped = _run([data[:a], data[a:b], data[b:]], [stop])
        assert stopped and out == "before "


def test_held_prefix_released_when_it_does_not_complete():
    s = TextStream(["STOP"])
    assert s.push(b"ab ST") == "ab "
    assert s.push(b"AR") == "STAR"
    assert s.push(b" STO") == " "
    assert s.flush() == "STO"


def test_earliest_of_several_stops_wins():
    out, stopped = _run([b"x <b> y <a> z"], ["<a>", "<b>"])
    assert stopped and out == "x "


def test_nothing_after_stop():
    s = TextStream(["!"])
    assert s.push(b"hi!") == "hi"
    assert s.push(b"more") == "" and s.flush() == ""
