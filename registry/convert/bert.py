"""BERT (e.g. sentence-transformers' all-MiniLM-L6-v2) to llama.cpp's `bert` architecture.

What llama.cpp needs beyond the weights:
- hyperparameters under `bert.*`, non-causal attention, and the pooling the sentence-transformers
  config declares (`modules.json` -> the Pooling module's `config.json`): mean, CLS or last token;
- a WordPiece vocabulary (`tokenizer.ggml.model` "bert") in llama.cpp's spelling: a word-initial
  piece carries a leading U+2581 ("phantom space"), a continuation piece ("##ing") loses its "##",
  bracketed special tokens stay as they are;
- the special ids: [CLS] as BOS and [SEP] as EOS (both added around every input), [UNK], [PAD],
  [MASK], and the number of token types (segment embeddings); no second separator between the two
  texts of a pair (`add_sep_token` false), so that a rerank pair is [CLS] query [SEP] document [SEP]
  as BERT's tokenizer makes it.

A cross-encoder (BertForSequenceClassification with one label, e.g. cross-encoder/ms-marco-MiniLM)
keeps its head and declares rank pooling, as llama.cpp's rerankers do: the pooler
(`bert.pooler.dense`) becomes `cls.weight`/`cls.bias` and the classifier `cls.output.weight`/`.bias`,
so llama.cpp's graph computes classifier(tanh(pooler(h[CLS]))), the relevance score of the pair.
"""

from __future__ import annotations

import re

from .base import (
    TOKEN_CONTROL, TOKEN_NORMAL, ConvertError, Converter,
)
from .gguf_writer import F32, T_INT32, T_STRING, GGUFFile, TensorType

POOLING_NONE, POOLING_MEAN, POOLING_CLS, POOLING_LAST, POOLING_RANK = 0, 1, 2, 3, 4
CROSS_ENCODER = "BertForSequenceClassification"

_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_BLOCK_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_TOP_TENSORS = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}
_SUFFIXES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}  # old TF-style names
_DROPPED = ("embeddings.position_ids", "pooler.", "cls.")
# A cross-encoder's head, in llama.cpp's names (read by build_pooling for LLAMA_POOLING_TYPE_RANK)
_HEAD_TENSORS = {"pooler.dense": "cls", "classifier": "cls.output"}
_SPECIALS = {"cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "pad": "[PAD]", "mask": "[MASK]"}


class BertConverter(Converter):
    architectures = ("BertModel", "BertForMaskedLM", "BertForPreTraining", CROSS_ENCODER)
    gguf_arch = "bert"

    @property
    def reranker(self) -> bool:
        """A cross-encoder: its pooler and classifier are kept, and it scores pairs (rank pooling)."""
        archs = self.config.get("architectures")
        return isinstance(archs, list) and CROSS_ENCODER in archs

    # -- tensors --------------------------------------------------------------------------------
    def tensor_name(self, name: str) -> str | None:
        for prefix in ("bert.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        base, _, suffix = name.rpartition(".")
        if self.reranker and base in _HEAD_TENSORS and suffix in ("weight", "bias"):
            return f"{_HEAD_TENSORS[base]}.{suffix}"
        if name.startswith(_DROPPED):
            return None
        if suffix not in _SUFFIXES:
            raise ConvertError(f"unexpected tensor {name} in a BERT checkpoint")
        if base in _TOP_TENSORS:
            return f"{_TOP_TENSORS[base]}.{_SUFFIXES[suffix]}"
        m = _BLOCK.fullmatch(base)
        if m and m.group(2) in _BLOCK_TENSORS:
            return f"blk.{m.group(1)}.{_BLOCK_TENSORS[m.group(2)]}.{_SUFFIXES[suffix]}"
        raise ConvertError(f"unexpected tensor {name} in a BERT checkpoint")

    def tensor_type(self, gguf_name: str, shape: tuple[int, ...], file_type: str) -> TensorType:
        # llama.cpp adds the token-type row to the F32 activations directly (no F16 there), and the
        # position table is tiny: both stay F32.
        if gguf_name.startswith(("token_types.", "position_embd.")):
            return F32
        return super().tensor_type(gguf_name, shape, file_type)

    def check(self, names: set[str]) -> None:
        needed = ["token_embd.weight", "position_embd.weight", "token_embd_norm.weight"]
        for i in range(int(self.hparam("num_hidden_layers", "n_layer"))):
            needed += [f"blk.{i}.{t}.weight" for t in _BLOCK_TENSORS.values()]
        missing = [n for n in needed if n not in names]
        if missing:
            raise ConvertError(f"the checkpoint lacks tensor {missing[0]}")
        if self.reranker:
            # Without the pooler llama.cpp would score the raw [CLS] state, not what the model was trained on.
            head = {"cls.weight": "bert.pooler.dense.weight", "cls.output.weight": "classifier.weight"}
            for gguf_name, source in head.items():
                if gguf_name not in names:
                    raise ConvertError(f"the cross-encoder lacks tensor {source}")

    def out_shape(self, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if gguf_name.startswith("cls.output.") and shape[0] != 1:
            # llama-server's rerank reads one score per pair; a classifier of several labels is no reranker.
            raise ConvertError(f"the classifier has {shape[0]} labels; a reranker has one (its relevance score)")
        return shape

    # -- metadata -------------------------------------------------------------------------------
    def metadata(self, f: GGUFFile) -> None:
        k = self.key
        f.add_uint32(k("context_length"), self.hparam("max_position_embeddings", "n_positions", "n_ctx"))
        f.add_uint32(k("embedding_length"), self.hparam("hidden_size", "n_embd"))
        f.add_uint32(k("feed_forward_length"), self.hparam("intermediate_size", "n_inner"))
        f.add_uint32(k("block_count"), self.hparam("num_hidden_layers", "n_layer"))
        f.add_uint32(k("attention.head_count"), self.hparam("num_attention_heads", "n_head"))
        f.add_float32(k("attention.layer_norm_epsilon"), self.hparam("layer_norm_eps", "layer_norm_epsilon",
                                                                     default=1e-12))
        f.add_bool(k("attention.causal"), False)
        if self.reranker:
            f.add_uint32(k("pooling_type"), POOLING_RANK)
            f.add_array(k("classifier.output_labels"), T_STRING, [self._label()])
        else:
            pooling, normalize = self.pooling()
            f.add_uint32(k("pooling_type"), pooling)
            f.add_bool(k("normalize_embeddings"), normalize)  # read by Ollama; llama.cpp ignores it
        act = self.config.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_python"):
            raise ConvertError(f"BERT with activation {act!r} is not supported (llama.cpp's bert uses GELU)")
        if self.config.get("position_embedding_type", "absolute") != "absolute":
            raise ConvertError("BERT with relative position embeddings is not supported")
        self.tokenizer(f)

    def _label(self) -> str:
        """The classifier's one label (config.json's id2label; transformers' default name otherwise)."""
        labels = self.config.get("id2label")
        if isinstance(labels, dict) and len(labels) > 1:
            raise ConvertError(f"the classifier has {len(labels)} labels; a reranker has one (its relevance score)")
        if isinstance(labels, dict) and labels:
            return str(next(iter(labels.values())))
        return "LABEL_0"

    def pooling(self) -> tuple[int, bool]:
        """(pooling type, normalised output) from sentence-transformers' modules.json; mean if absent."""
        modules = self.optional_json("modules.json")
        if not isinstance(modules, list):
            return POOLING_MEAN, False
        pooling_dir, normalize = None, False
        for m in modules:
            if not isinstance(m, dict):
                continue
            kind = str(m.get("type", ""))
            if kind.endswith(".Pooling"):
                pooling_dir = str(m.get("path", ""))
            elif kind.endswith(".Normalize"):
                normalize = True
        if pooling_dir is None:
            return POOLING_MEAN, normalize
        cfg = self.optional_json(f"{pooling_dir}/config.json" if pooling_dir else "config_pooling.json") or {}
        if cfg.get("pooling_mode_cls_token"):
            return POOLING_CLS, normalize
        if cfg.get("pooling_mode_lasttoken"):
            return POOLING_LAST, normalize
        if cfg.get("pooling_mode_max_tokens") and not cfg.get("pooling_mode_mean_tokens"):
            raise ConvertError("max-token pooling is not supported by llama.cpp")
        return POOLING_MEAN, normalize

    def tokenizer(self, f: GGUFFile) -> None:
        vocab, special_ids = self._vocab()
        n_embd_vocab = self.config.get("vocab_size")
        if isinstance(n_embd_vocab, int) and len(vocab) < n_embd_vocab:
            # Pad to the embedding's rows (a few checkpoints list fewer tokens than they embed).
            vocab += [f"[PAD{i}]" for i in range(len(vocab), n_embd_vocab)]
        specials = self._special_tokens()
        ids = {}
        index = {tok: i for i, tok in enumerate(vocab)}
        for role, token in specials.items():
            if token in index:
                ids[role] = index[token]
        for role in ("cls", "sep", "unk"):
            if role not in ids:
                raise ConvertError(f"the tokenizer has no {specials.get(role, _SPECIALS[role])} token")
        control = set(special_ids) | set(ids.values())
        tokens, types = [], []
        for i, tok in enumerate(vocab):
            if i in control or (tok.startswith("[") and tok.endswith("]") and len(tok) > 2):
                tokens.append(tok)
                types.append(TOKEN_CONTROL if i in control else TOKEN_NORMAL)
            elif tok.startswith("##") and len(tok) > 2:
                tokens.append(tok[2:])
                types.append(TOKEN_NORMAL)
            else:
                tokens.append("\u2581" + tok)
                types.append(TOKEN_NORMAL)
        f.add_string("tokenizer.ggml.model", "bert")
        f.add_string("tokenizer.ggml.pre", "default")
        f.add_array("tokenizer.ggml.tokens", T_STRING, tokens)
        f.add_array("tokenizer.ggml.token_type", T_INT32, types)
        f.add_uint32("tokenizer.ggml.token_type_count", self.hparam("type_vocab_size", default=2))
        f.add_uint32("tokenizer.ggml.bos_token_id", ids["cls"])
        f.add_uint32("tokenizer.ggml.eos_token_id", ids["sep"])
        f.add_uint32("tokenizer.ggml.seperator_token_id", ids["sep"])  # sic: llama.cpp's spelling
        f.add_uint32("tokenizer.ggml.unknown_token_id", ids["unk"])
        if "pad" in ids:
            f.add_uint32("tokenizer.ggml.padding_token_id", ids["pad"])
        if "mask" in ids:
            f.add_uint32("tokenizer.ggml.mask_token_id", ids["mask"])
        f.add_bool("tokenizer.ggml.add_bos_token", True)
        f.add_bool("tokenizer.ggml.add_eos_token", True)
        f.add_bool("tokenizer.ggml.add_sep_token", False)  # a pair: [CLS] a [SEP] b [SEP], one SEP between

    def _vocab(self) -> tuple[list[str], list[int]]:
        """The WordPiece vocabulary in id order, and the ids of added special tokens."""
        tok = self.optional_json("tokenizer.json")
        special_ids: list[int] = []
        if isinstance(tok, dict) and isinstance(tok.get("model"), dict):
            model = tok["model"]
            if model.get("type") not in (None, "WordPiece"):
                raise ConvertError(f"a BERT tokenizer must be WordPiece, not {model.get('type')}")
            table = dict(model.get("vocab") or {})
            for added in tok.get("added_tokens") or []:
                if isinstance(added, dict) and isinstance(added.get("id"), int):
                    table.setdefault(added.get("content", ""), added["id"])
                    if added.get("special"):
                        special_ids.append(added["id"])
            if table:
                size = max(table.values()) + 1
                vocab = [f"[PAD{i}]" for i in range(size)]
                for text, i in table.items():
                    vocab[i] = text
                return vocab, special_ids
        path = self.dir / "vocab.txt"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            return [line.rstrip("\r") for line in lines], special_ids
        raise ConvertError("no tokenizer found (tokenizer.json or vocab.txt)")

    def _special_tokens(self) -> dict[str, str]:
        found = dict(_SPECIALS)
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            data = self.optional_json(name)
            if not isinstance(data, dict):
                continue
            for role in _SPECIALS:
                value = data.get(f"{role}_token")
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str) and value:
                    found[role] = value
        return found
