"""A tiny BERT cross-encoder (BertForSequenceClassification, one label) for tests, and its numpy forward pass.

`write_cross_encoder(directory)` writes config.json, vocab.txt, tokenizer_config.json and model.safetensors
(random weights: hidden 32, 4 heads, 2 layers, a pooler and a one-label classifier) as the Hub's
cross-encoders (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2) lay them out.

`CrossEncoder(directory).score(query, document)` is the reference: WordPiece pair tokens
[CLS] query [SEP] document [SEP], BERT's encoder, the pooler tanh(dense(h[CLS])) and the classifier,
in float64 numpy straight from the safetensors file. Segment ids: llama.cpp gives every token segment 0
(it has no token-type input; transformers gives the document segment 1), so the reference does the
same by default; `segments=True` computes transformers' version.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.bert_reference import NumpyBertEncoder, wordpiece
from tests.safetensors_writer import write_safetensors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an is are do does what where who how which cat cats dog dogs sat sit on in at mat fish swim "
         "sea bird birds fly sky red blue green car road run jump eat food water tree house big small "
         "? . , ! ##s ##ing ##ed ##er").split()
HIDDEN, HEADS, LAYERS, FF, POSITIONS = 32, 4, 2, 64, 128


def write_cross_encoder(directory: Path, *, seed: int = 0, labels: int = 1, pooler: bool = True) -> Path:
    """The checkpoint in `directory` (created). `labels` and `pooler` make broken variants for error tests."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS
    config = {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": FF,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "vocab_size": len(vocab),
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "position_embedding_type": "absolute",
        "id2label": {str(i): f"LABEL_{i}" for i in range(labels)},
        "label2id": {f"LABEL_{i}": i for i in range(labels)},
        "pad_token_id": 0, "torch_dtype": "float32", "_name_or_path": "tiny-cross-encoder",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
        "pad_token": "[PAD]", "mask_token": "[MASK]", "tokenizer_class": "BertTokenizer"}))
    rng = np.random.default_rng(seed)

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    def vec(n, mean=0.0, scale=0.1):
        return (mean + rng.standard_normal(n) * scale).astype(np.float32)

    w = {
        "bert.embeddings.word_embeddings.weight": mat(len(vocab), HIDDEN, np.sqrt(HIDDEN)),
        "bert.embeddings.position_embeddings.weight": mat(POSITIONS, HIDDEN, 0.5 * np.sqrt(HIDDEN)),
        "bert.embeddings.token_type_embeddings.weight": mat(2, HIDDEN, 0.5 * np.sqrt(HIDDEN)),
        "bert.embeddings.LayerNorm.weight": vec(HIDDEN, 1.0), "bert.embeddings.LayerNorm.bias": vec(HIDDEN),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name, rows, cols in (("attention.self.query", HIDDEN, HIDDEN), ("attention.self.key", HIDDEN, HIDDEN),
                                 ("attention.self.value", HIDDEN, HIDDEN), ("attention.output.dense", HIDDEN, HIDDEN),
                                 ("intermediate.dense", FF, HIDDEN), ("output.dense", HIDDEN, FF)):
            w[p + name + ".weight"] = mat(rows, cols, 2.0 if name.endswith(("query", "key")) else 1.0)
            w[p + name + ".bias"] = vec(rows)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + norm + ".weight"], w[p + norm + ".bias"] = vec(HIDDEN, 1.0), vec(HIDDEN)
    if pooler:
        w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"] = mat(HIDDEN, HIDDEN, 2.0), vec(HIDDEN)
    w["classifier.weight"], w["classifier.bias"] = mat(labels, HIDDEN, 3.0), vec(labels, scale=0.5)
    write_safetensors(directory / "model.safetensors", w)
    return directory


class CrossEncoder(NumpyBertEncoder):
    """The checkpoint's forward pass in float64 numpy: the reference scores."""

    def __init__(self, directory: Path):
        super().__init__(directory)
        lines = (Path(directory) / "vocab.txt").read_text().splitlines()
        self.vocab = {t: i for i, t in enumerate(lines)}

    def pair(self, query: str, document: str) -> tuple[list[int], list[int]]:
        """(token ids, transformers' segment ids) of the pair."""
        v = self.vocab
        q, d = wordpiece(query, v), wordpiece(document, v)
        ids = [v["[CLS]"], *q, v["[SEP]"], *d, v["[SEP]"]]
        return ids, [0] * (len(q) + 2) + [1] * (len(d) + 1)

    def score(self, query: str, document: str, *, segments: bool = False) -> float:
        ids, types = self.pair(query, document)
        return self.score_ids(ids, types if segments else None)

    def score_ids(self, ids: list[int], types: list[int] | None = None) -> float:
        """The score of a pair given as token ids (segment 0 throughout unless `types` are given)."""
        pooled = np.tanh(self._lin(self.hidden(ids, types)[0], "pooler.dense"))
        return float(self._lin(pooled, "classifier")[0])