"""A BERT encoder's forward pass in float64 numpy, from a safetensors checkpoint: the reference the
converters' and rerank tests compare llama.cpp's output with."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np

from registry.convert import Checkpoint


def wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased tokenization (basic split, then greedy longest-match WordPiece), no special tokens."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words, word = [], ""
    for c in text:
        if c.isspace():
            words, word = words + ([word] if word else []), ""
        elif unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            words, word = words + ([word] if word else []) + [c], ""
        else:
            word += c
    words += [word] if word else []
    ids = []
    for w in words:
        start, pieces = 0, []
        while start < len(w):
            end = len(w)
            while end > start and (("##" if start else "") + w[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[("##" if start else "") + w[start:end]])
            start = end
        ids += pieces
    return ids


class NumpyBertEncoder:
    """The checkpoint's weights (without the "bert." prefix) and its encoder's final hidden states."""

    def __init__(self, directory: Path):
        directory = Path(directory)
        self.cfg = json.loads((directory / "config.json").read_text())
        with Checkpoint([directory / "model.safetensors"]) as ckpt:
            self.w = {n.removeprefix("bert."): np.array(ckpt.array(n), dtype=np.float64) for n in ckpt.names()}

    def _ln(self, x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.cfg["layer_norm_eps"]) * self.w[p + ".weight"] + self.w[p + ".bias"]

    def _lin(self, x, p):
        return x @ self.w[p + ".weight"].T + self.w[p + ".bias"]

    def hidden(self, ids: list[int], types: list[int] | None = None) -> np.ndarray:
        """The last layer's states of `ids` (segment 0 throughout unless `types` are given)."""
        types = types or [0] * len(ids)
        n, heads, w = len(ids), self.cfg["num_attention_heads"], self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[1]
        hd = d // heads
        erf = np.vectorize(math.erf)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (self._lin(x, p + f"attention.self.{m}").reshape(n, heads, hd).transpose(1, 0, 2)
                       for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, d)
            x = self._ln(x + self._lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = self._lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            x = self._ln(x + self._lin(h, p + "output.dense"), p + "output.LayerNorm")
        return x
