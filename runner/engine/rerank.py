"""A rerank pair's tokens: the query and one document joined as llama-server joins them.

llama.cpp's format_prompt_rerank (tools/server/server-common.cpp), for a model without a "rerank"
chat template (BERT-family cross-encoders):

    [BOS if add_bos] query [EOS if add_eos] [SEP if add_sep] document [EOS if add_eos]

with SEP standing in for a missing EOS, and both texts tokenized without special tokens (but with
special-token text such as "[SEP]" parsed). For a BERT GGUF (BOS = [CLS], EOS = [SEP], add_sep off)
this is [CLS] query [SEP] document [SEP], the pair BERT's tokenizer makes.

A pair longer than the context loses the end of its document (`truncate`, the default), as
/api/embed truncates; the query is never cut.
"""

from __future__ import annotations

import llama_cpp as ll

from runner.engine.embed import InputTooLong


class PairLayout:
    """The special tokens around a pair, read once from the model's vocabulary."""

    def __init__(self, vocab) -> None:
        eos = ll.llama_vocab_eos(vocab)
        if eos == ll.LLAMA_TOKEN_NULL:
            eos = ll.llama_vocab_sep(vocab)
        add_eos = ll.llama_vocab_get_add_eos(vocab) and eos != ll.LLAMA_TOKEN_NULL
        self.head = [ll.llama_vocab_bos(vocab)] if ll.llama_vocab_get_add_bos(vocab) else []
        self.middle = ([eos] if add_eos else []) + (
            [ll.llama_vocab_sep(vocab)] if ll.llama_vocab_get_add_sep(vocab) else [])
        self.tail = [eos] if add_eos else []

    def join(self, query: list[int], document: list[int], limit: int, truncate: bool = True) -> list[int]:
        """The pair's tokens, at most `limit` of them; InputTooLong when it cannot fit."""
        fixed = len(self.head) + len(query) + len(self.middle) + len(self.tail)
        room = limit - fixed
        if len(document) > room:
            if not truncate:
                raise InputTooLong("the input length exceeds the context length")
            if room < 0:
                raise InputTooLong("the query is longer than the context length")
            document = document[:room]
        return self.head + query + self.middle + document + self.tail


def pair_tokens(model, query: str, documents: list[str], limit: int, truncate: bool = True) -> list[list[int]]:
    """Every (query, document) pair of a request as token lists, in the documents' order."""
    layout = PairLayout(model.vocab)
    q = model.tokenize(query, add_special=False)
    return [layout.join(q, model.tokenize(d, add_special=False), limit, truncate) for d in documents]
