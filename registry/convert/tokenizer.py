"""A decoder model's tokenizer (tokenizer.json, tokenizer_config.json, tokenizer.model) as GGUF metadata.

Two kinds of vocabulary are written, the two that llama.cpp's decoders use:
- byte-level BPE (GPT-2 style: Llama 3, Qwen2, SmolLM) -> `tokenizer.ggml.model` "gpt2" with the
  merges and a `tokenizer.ggml.pre` naming llama.cpp's pre-tokenizer regex. llama.cpp's own converter
  picks that name by hashing a tokenization done with `transformers`; we read the pre-tokenizer that
  tokenizer.json declares instead and accept only those whose regex llama.cpp reproduces exactly:
  an unknown one is an error, not a model that silently tokenizes differently.
- SentencePiece BPE (Llama 2, Mistral, Gemma) -> "llama" with a score per token. llama.cpp merges
  the adjacent pair whose *result* scores highest, so scores come from tokenizer.model when it is
  there; else they are derived from tokenizer.json's merge ranks (the first merge producing a token
  gives its score), which is exact when every token that two others concatenate to has a merge, as
  in tokenizers converted from SentencePiece; otherwise the conversion stops with an error.
Special tokens are "control" (llama.cpp never produces them from plain text), other added tokens
"user defined"; the vocabulary is padded with unused tokens up to the embedding's rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .base import (
    TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_USER_DEFINED, ConvertError,
    read_json,
)
from .gguf_writer import T_FLOAT32, T_INT32, T_STRING, GGUFFile
from .sentencepiece_model import MODEL_BPE, read_sentencepiece_model

# The Split regexes of tokenizer.json that llama.cpp implements, by tokenizer.ggml.pre value: Llama 3's
# splits digits in threes, Qwen2's one by one.
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLIT_PRE = {
    _WORDS + r"\p{N}{1,3}" + _REST: "llama-bpe",
    _WORDS + r"\p{N}" + _REST: "qwen2",
}
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_ROLES = ("bos", "eos", "unk", "pad")
_ID_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


@dataclass
class Tokenizer:
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # role -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def write(self, f: GGUFFile) -> None:
        f.add_string("tokenizer.ggml.model", self.model)
        if self.pre:
            f.add_string("tokenizer.ggml.pre", self.pre)
        f.add_array("tokenizer.ggml.tokens", T_STRING, self.tokens)
        if self.scores is not None:
            f.add_array("tokenizer.ggml.scores", T_FLOAT32, self.scores)
        f.add_array("tokenizer.ggml.token_type", T_INT32, self.types)
        if self.merges is not None:
            f.add_array("tokenizer.ggml.merges", T_STRING, self.merges)
        for role in _ROLES:
            if role in self.special_ids:
                f.add_uint32(f"tokenizer.ggml.{_ID_KEYS[role]}", self.special_ids[role])
        f.add_bool("tokenizer.ggml.add_bos_token", self.add_bos)
        f.add_bool("tokenizer.ggml.add_eos_token", self.add_eos)
        if self.add_space_prefix is not None:
            f.add_bool("tokenizer.ggml.add_space_prefix", self.add_space_prefix)
        if self.chat_template:
            f.add_string("tokenizer.chat_template", self.chat_template)


def read_tokenizer(directory: Path, config: dict, n_vocab: int | None) -> Tokenizer:
    """The tokenizer of a checkpoint directory; `n_vocab` is the embedding's row count (or None)."""
    tok_json = _optional(directory / "tokenizer.json")
    spm_path = directory / "tokenizer.model"
    spm = read_sentencepiece_model(spm_path.read_bytes()) if spm_path.is_file() else None
    if isinstance(tok_json, dict):
        tok = _from_tokenizer_json(tok_json, spm)
    elif spm is not None:
        tok = _from_sentencepiece(spm)
    else:
        raise ConvertError("no tokenizer found (tokenizer.json or tokenizer.model)")
    if n_vocab is not None:
        if len(tok.tokens) > n_vocab:
            raise ConvertError(f"the tokenizer has {len(tok.tokens)} tokens but the model embeds only {n_vocab}")
        for i in range(len(tok.tokens), n_vocab):  # rows the tokenizer never produces
            tok.tokens.append(f"[PAD{i}]")
            tok.types.append(TOKEN_UNUSED)
            if tok.scores is not None:
                tok.scores.append(-1e9)
    tok_config = _optional(directory / "tokenizer_config.json") or {}
    if not isinstance(tok_config, dict):
        raise ConvertError("tokenizer_config.json must hold a JSON object")
    _special_ids(tok, tok_json if isinstance(tok_json, dict) else {}, tok_config, config)
    tok.chat_template = _chat_template(directory, tok_config)
    return tok


def _optional(path: Path):
    return read_json(path) if path.is_file() else None


# -- tokenizer.json ---------------------------------------------------------------------------------------
def _from_tokenizer_json(data: dict, spm) -> Tokenizer:
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") not in (None, "BPE"):
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConvertError(f"unsupported tokenizer type {kind!r} in tokenizer.json (BPE is supported)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise ConvertError("tokenizer.json has no vocabulary")
    table: dict[int, str] = {}
    for text, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            raise ConvertError(f"tokenizer.json: bad id for token {text!r}")
        table[i] = text
    added: dict[int, bool] = {}  # id -> special
    for a in data.get("added_tokens") or []:
        if isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str):
            table[a["id"]] = a["content"]
            added[a["id"]] = bool(a.get("special"))
    size = max(table) + 1
    tokens = [table.get(i, f"[PAD{i}]") for i in range(size)]
    types = [TOKEN_NORMAL if i in table else TOKEN_UNUSED for i in range(size)]
    for i, special in added.items():
        types[i] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    merges = [_merge_pair(m) for m in model.get("merges") or []]

    if _is_byte_level(data):
        return Tokenizer("gpt2", tokens, types, merges=[f"{a} {b}" for a, b in merges], pre=_pre_name(data))
    if not model.get("byte_fallback") and spm is None:
        raise ConvertError("unsupported tokenizer: BPE that is neither byte-level nor SentencePiece-style "
                           "(byte_fallback)")
    unk = model.get("unk_token")
    for i, text in enumerate(tokens):
        if text == unk:  # often listed as an added special token too; llama.cpp wants it "unknown"
            types[i] = TOKEN_UNKNOWN
        elif i not in added and _BYTE_TOKEN.fullmatch(text):
            types[i] = TOKEN_BYTE
    if spm is not None:
        scores = _scores_from_model(spm, tokens)
    else:
        scores = _scores_from_merges(tokens, types, merges)
    return Tokenizer("llama", tokens, types, scores=scores, add_space_prefix=_adds_space_prefix(data))


def _merge_pair(m) -> tuple[str, str]:
    if isinstance(m, str):
        a, sep, b = m.partition(" ")
        if sep:
            return a, b
    elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
        if " " in m[0] or " " in m[1]:
            raise ConvertError(f"tokenizer.json: merge {m!r} holds a space, which GGUF merges cannot express")
        return m[0], m[1]
    raise ConvertError(f"tokenizer.json: bad merge {m!r}")


def _steps(node) -> list[dict]:
    """A normalizer / pre-tokenizer / decoder as a flat list of its steps."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        items = (node.get("pretokenizers") or node.get("normalizers") or node.get("decoders")
                 or node.get("processors") or [])
        return [s for item in items for s in _steps(item)]
    return [node]


def _is_byte_level(data: dict) -> bool:
    return any(s.get("type") == "ByteLevel" for s in _steps(data.get("pre_tokenizer")) + _steps(data.get("decoder")))


def _pre_name(data: dict) -> str:
    """tokenizer.ggml.pre for a byte-level BPE: the llama.cpp pre-tokenizer matching tokenizer.json's."""
    steps = _steps(data.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLIT_PRE:
            return _SPLIT_PRE[pattern]
        raise ConvertError(f"unsupported pre-tokenizer regex {pattern!r} in tokenizer.json "
                           "(llama.cpp would split the text differently)")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise ConvertError(f"unsupported pre-tokenizer {'+'.join(map(str, kinds)) or 'none'} in tokenizer.json "
                       "(llama.cpp would split the text differently)")


def _adds_space_prefix(data: dict) -> bool:
    """Whether the SentencePiece normalizer prepends "▁" to the text (Llama 2, Mistral: yes; Gemma: no)."""
    for s in _steps(data.get("normalizer")):
        if s.get("type") == "Prepend" and s.get("prepend") == "\u2581":
            return True
    for s in _steps(data.get("pre_tokenizer")):
        if s.get("type") == "Metaspace":
            scheme = s.get("prepend_scheme")
            return scheme in ("always", "first") if scheme is not None else bool(s.get("add_prefix_space", True))
    return False


def _scores_from_model(spm, tokens: list[str]) -> list[float]:
    n = len(spm.pieces)
    if tokens[:n] != spm.pieces[:len(tokens)]:
        raise ConvertError("tokenizer.model and tokenizer.json disagree on the vocabulary")
    return list(spm.scores) + [0.0] * (len(tokens) - n)


def _scores_from_merges(tokens: list[str], types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    index = {t: i for i, t in enumerate(tokens)}
    scores = [0.0] * len(tokens)
    produced: set[int] = set()
    for rank, (a, b) in enumerate(merges):
        i = index.get(a + b)
        if i is None:
            raise ConvertError(f"tokenizer.json: merge {a!r} {b!r} makes a token that is not in the vocabulary")
        if i not in produced:
            produced.add(i)
            scores[i] = -float(rank)
    # llama.cpp merges any two neighbours that concatenate to a token; Hugging Face only listed pairs.
    for i, text in enumerate(tokens):
        if types[i] != TOKEN_NORMAL or i in produced or len(text) < 2:
            continue
        for cut in range(1, len(text)):
            if text[:cut] in index and text[cut:] in index:
                raise ConvertError(
                    f"cannot derive SentencePiece scores from tokenizer.json: token {text!r} has no merge "
                    "although two tokens concatenate to it; add tokenizer.model to the directory")
    return scores


def _from_sentencepiece(spm) -> Tokenizer:
    if spm.model_type != MODEL_BPE:
        raise ConvertError("tokenizer.model is not a SentencePiece BPE model (llama.cpp's \"llama\" tokenizer)")
    return Tokenizer("llama", list(spm.pieces), list(spm.types), scores=list(spm.scores),
                     add_space_prefix=spm.add_dummy_prefix)


# -- special tokens, flags, chat template -------------------------------------------------------------------
def _special_ids(tok: Tokenizer, tok_json: dict, tok_config: dict, config: dict) -> None:
    index: dict[str, int] = {}
    for i, text in enumerate(tok.tokens):
        index.setdefault(text, i)
    for role in _ROLES:
        value = tok_config.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in index:
            tok.special_ids[role] = index[value]
            continue
        cid = config.get(f"{role}_token_id")
        if isinstance(cid, list) and cid:
            cid = cid[0]
        if isinstance(cid, int) and 0 <= cid < len(tok.tokens):
            tok.special_ids[role] = cid
    if tok.model == "llama" and "unk" not in tok.special_ids:
        unk = [i for i, t in enumerate(tok.types) if t == TOKEN_UNKNOWN]
        if unk:
            tok.special_ids["unk"] = unk[0]
    from_template = _post_processor_flags(tok_json.get("post_processor"))
    default_bos = tok.model == "llama"  # SentencePiece Llama tokenizers add <s> unless told otherwise
    add_bos = tok_config.get("add_bos_token")
    add_eos = tok_config.get("add_eos_token")
    tok.add_bos = add_bos if isinstance(add_bos, bool) else from_template.get("bos", default_bos)
    tok.add_eos = add_eos if isinstance(add_eos, bool) else from_template.get("eos", False)
    for role, flag in (("bos", tok.add_bos), ("eos", tok.add_eos)):
        if flag and role not in tok.special_ids:
            raise ConvertError(f"the tokenizer adds a {role.upper()} token but names none (tokenizer_config.json)")


def _post_processor_flags(node) -> dict[str, bool]:
    """Whether a TemplateProcessing post-processor puts a special token before / after the text."""
    for step in _steps(node):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            if single:
                return {"bos": "SpecialToken" in single[0], "eos": "SpecialToken" in single[-1]}
    return {}


def _chat_template(directory: Path, tok_config: dict) -> str | None:
    value = tok_config.get("chat_template")
    if isinstance(value, list):  # several named templates: the default one
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    if isinstance(value, str) and value:
        return value
    path = directory / "chat_template.jinja"  # newer checkpoints keep it in a file of its own
    if path.is_file():
        return path.read_text(encoding="utf-8")
    data = _optional(directory / "chat_template.json")
    if isinstance(data, dict) and isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    return None
