"""Embeddings: a llama.cpp context of their own, fed several sequences per `llama_encode`/`llama_decode`.

Pooling is what the model declares (`<arch>.pooling_type`: mean, CLS or last token, applied inside
llama.cpp's graph). A generative model declares none; it is pooled on its last token (the hidden
state after the final norm), as Ollama's llama.cpp runner did (`GetEmbeddingsIth` on the last token).
Vectors come back raw: normalising is the daemon's business (/api/embed normalises, the legacy
/api/embeddings does not). A reranker declares rank pooling: its "vector" is the classifier's output
for the pair in the sequence (`rerank.py` lays the pairs out), one value per label.

Batching: every sequence of every waiting request is packed into batches of at most `n_batch`
tokens and `n_seq` sequences. An encoder (BERT: non-causal attention, no KV cache) needs each
sequence whole inside one batch, so `n_batch` is at least the longest input allowed. A causal model
may split a long input over consecutive batches: its KV cache carries the earlier chunks and the
pooled vector is read after the last one.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import llama_cpp as ll
import numpy as np

from runner.engine.batch_buffer import BatchBuffer

# Tokens per llama_encode for encoder models. Attention spans the whole batch (other sequences are
# masked out, not skipped), so its cost grows with the batch: on a CPU, 512-token batches embedded
# 50 inputs of 300 tokens 1.7x faster than 2048-token ones; on an H100, 2048 was as good as any
# (measured with all-MiniLM and BERT-base shapes). An input never spans batches.
_ENCODER_BATCH_GPU = 2048
_ENCODER_BATCH_CPU = 512
_DECODER_BATCH = 512  # tokens per llama_decode for generative models (all positions are outputs)


class EmbedUnsupported(RuntimeError):
    """This model cannot produce embeddings."""


class InputTooLong(ValueError):
    pass


@dataclass
class EmbedJob:
    """One /embed call: its token lists in, its vectors out (`done` called from the engine thread)."""

    inputs: list[list[int]]
    done: Callable[["EmbedJob"], None]
    vectors: np.ndarray | None = None
    error: str | None = None
    remaining: int = 0
    cancelled: bool = False  # set by the caller; its inputs not yet started are dropped
    t_submit: float = field(default_factory=time.perf_counter)
    t_done: float = 0.0


class _Seq:
    __slots__ = ("job", "index", "tokens", "pos", "seq_id")

    def __init__(self, job: EmbedJob, index: int, tokens: list[int]):
        self.job, self.index, self.tokens, self.pos, self.seq_id = job, index, tokens, 0, -1


def model_pooling(model) -> int:
    """The pooling type the GGUF declares (LLAMA_POOLING_TYPE_*), NONE when it declares none."""
    buf = ctypes.create_string_buffer(256)
    if ll.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf)) < 0:
        return ll.LLAMA_POOLING_TYPE_NONE
    key = buf.value + b".pooling_type"
    if ll.llama_model_meta_val_str(model, key, buf, len(buf)) < 0:
        return ll.LLAMA_POOLING_TYPE_NONE
    try:
        return int(buf.value)
    except ValueError:
        return ll.LLAMA_POOLING_TYPE_NONE


class EmbedEngine:
    """Owns the embedding context and the thread that runs it."""

    def __init__(self, loaded, *, n_ctx_per_seq: int, n_threads: int, n_seq: int = 64,
                 flash_attn: int = -1):
        self.loaded = loaded
        model = loaded.model
        n_train = ll.llama_model_n_ctx_train(model)
        self.max_tokens = max(min(n_ctx_per_seq, n_train) if n_train > 0 else n_ctx_per_seq, 1)
        self.declared_pooling = model_pooling(model)
        self.causal = not _is_encoder(model)
        pooling = self.declared_pooling
        if pooling in (ll.LLAMA_POOLING_TYPE_NONE, ll.LLAMA_POOLING_TYPE_UNSPECIFIED):
            pooling = ll.LLAMA_POOLING_TYPE_LAST if self.causal else ll.LLAMA_POOLING_TYPE_MEAN
        self.pooling = pooling
        # A reranker: one score per label (llama.cpp's n_cls_out), not an embedding, comes out of the graph.
        self.rank = pooling == ll.LLAMA_POOLING_TYPE_RANK
        if self.rank:
            self.n_embd = max(ll.llama_model_n_cls_out(model), 1)
        else:
            self.n_embd = ll.llama_model_n_embd_out(model) or ll.llama_model_n_embd(model)
        if self.causal:
            self.n_batch = min(_DECODER_BATCH, self.max_tokens)
            n_ctx = self.max_tokens + self.n_batch  # one long input in flight plus a batch of others
        else:
            on_gpu = getattr(loaded.cfg, "n_gpu_layers", 0) > 0
            self.n_batch = max(_ENCODER_BATCH_GPU if on_gpu else _ENCODER_BATCH_CPU, self.max_tokens)
            n_ctx = self.n_batch
        # (llama.cpp reserves one output per sequence: never more sequences than batch positions)
        self.n_seq = max(1, min(n_seq, ll.llama_max_parallel_sequences(), self.n_batch))
        cp = ll.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = self.n_seq
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.embeddings = True
        cp.pooling_type = pooling
        cp.kv_unified = True
        cp.flash_attn_type = flash_attn
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create an embedding context (out of memory?)")
        loaded.apply_adapters(self.ctx)  # a fine-tuned model embeds as fine-tuned
        self.memory = ll.llama_get_memory(self.ctx)  # NULL for encoders: nothing to clear between batches
        self.buffer = BatchBuffer(self.n_batch)
        self._waiting: deque[_Seq] = deque()
        self._lock = threading.Condition()
        self._stop = False
        self._current: list[_Seq] = []
        self.fatal_error: str | None = None
        self.thread = threading.Thread(target=self._run, name="embed", daemon=True)
        self.thread.start()

    # -- called from other threads ---------------------------------------------------------------
    def prepare(self, tokens: list[int], truncate: bool) -> list[int]:
        """Fits one input into the context (Ollama's rule: keep the special tokens at both ends)."""
        limit = self.max_tokens
        if len(tokens) <= limit:
            return tokens
        if not truncate:
            raise InputTooLong("the input length exceeds the context length")
        vocab = self.loaded.vocab
        head = 1 if ll.llama_vocab_get_add_bos(vocab) and tokens[0] == ll.llama_vocab_bos(vocab) else 0
        tail = 1 if ll.llama_vocab_get_add_eos(vocab) and tokens[-1] in (
            ll.llama_vocab_eos(vocab), ll.llama_vocab_sep(vocab)) else 0
        keep = limit - head - tail
        if keep <= 0:
            raise InputTooLong("input after truncation exceeds maximum context length")
        return tokens[:head + keep] + (tokens[-tail:] if tail else [])

    def submit(self, job: EmbedJob) -> None:
        job.remaining = len(job.inputs)
        job.vectors = np.zeros((len(job.inputs), self.n_embd), dtype=np.float32)
        with self._lock:
            if self.fatal_error:
                job.error = self.fatal_error
                job.done(job)
                return
            if not job.inputs:
                job.done(job)
                return
            self._waiting.extend(_Seq(job, i, t) for i, t in enumerate(job.inputs))
            self._lock.notify()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self.thread.join(timeout=10)

    def close(self) -> None:
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None

    # -- the embed thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stop and not self._waiting:
                        self._lock.wait()
                    if self._stop:
                        return
                self._step()
        except Exception as exc:  # never leave a client waiting on a broken engine
            self.fatal_error = str(exc) if isinstance(exc, EmbedUnsupported) else f"embedding failure: {exc}"
            with self._lock:
                seqs, self._waiting = self._current + list(self._waiting), deque()
            for job in {id(s.job): s.job for s in seqs}.values():
                if job.error is None and job.remaining > 0:
                    job.error = self.fatal_error
                    job.done(job)
            raise

    def _take(self) -> list[tuple[_Seq, int]]:
        """This batch's work: (sequence, number of its tokens) pairs, in arrival order."""
        plan: list[tuple[_Seq, int]] = []
        room = self.n_batch
        with self._lock:
            while self._waiting and len(plan) < self.n_seq and room > 0:
                seq = self._waiting[0]
                if seq.job.cancelled and seq.pos == 0:
                    self._waiting.popleft()
                    continue
                left = len(seq.tokens) - seq.pos
                if left > room:
                    if not self.causal:
                        if not plan:  # cannot happen after prepare(); never loop on it
                            self._waiting.popleft()
                            self._fail(seq.job, "the input length exceeds the context length")
                            continue
                        break  # an encoder needs the whole input in one batch
                    if plan and left <= self.n_batch:
                        break  # a short input waits for the next batch rather than being split
                n = min(left, room)
                plan.append((seq, n))
                room -= n
                if n < left:
                    break  # a causal input continues in the next batch, first in line
                self._waiting.popleft()
        return plan

    def _fail(self, job: EmbedJob, message: str) -> None:
        if job.error is None:
            job.error = message
            self._waiting = deque(s for s in self._waiting if s.job is not job)
            job.done(job)

    def _step(self) -> None:
        plan = self._take()
        self._current = [seq for seq, _ in plan]  # failed with the rest if this step breaks
        if not plan:
            return
        buf = self.buffer
        buf.clear()
        used = {seq.seq_id for seq, _ in plan if seq.seq_id >= 0}  # a long input continuing
        free = (i for i in range(self.n_seq) if i not in used)
        for seq, n in plan:
            if seq.seq_id < 0:
                seq.seq_id = next(free)
            buf.add(seq.tokens[seq.pos:seq.pos + n], seq.pos, seq.seq_id, True)
            buf.logits[buf.n - n:buf.n] = 1  # embeddings need every position as an output
            seq.pos += n
        # No KV cache (BERT and kin): llama_encode; a model with one: llama_decode.
        run = ll.llama_decode if self.memory else ll.llama_encode
        rc = run(self.ctx, buf.as_llama_batch())
        if rc != 0:
            raise RuntimeError(f"{run.__name__} returned {rc}")
        finished: list[EmbedJob] = []
        for seq, _ in plan:
            if seq.pos < len(seq.tokens):
                continue  # its next chunk comes first in the next batch, under the same seq_id
            ptr = ll.llama_get_embeddings_seq(self.ctx, seq.seq_id)
            if not ptr:
                raise EmbedUnsupported("this model does not support embeddings")
            if seq.job.error is None:
                seq.job.vectors[seq.index] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
            if self.memory:
                ll.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
            seq.job.remaining -= 1
            if seq.job.remaining == 0 and seq.job.error is None:
                finished.append(seq.job)
        now = time.perf_counter()
        for job in finished:
            job.t_done = now
            job.done(job)


def new_embed_engine(loaded) -> EmbedEngine:
    """The embedding engine for a loaded model, sized from its context settings."""
    cfg = loaded.cfg
    flash = {"auto": -1, "off": 0, "on": 1}.get(cfg.flash_attn, -1)
    return EmbedEngine(loaded, n_ctx_per_seq=cfg.num_ctx, n_threads=cfg.num_thread or os.cpu_count() or 1,
                       flash_attn=flash)


def _is_encoder(model) -> bool:
    """Non-causal attention (BERT and kin): each input whole inside one batch."""
    buf = ctypes.create_string_buffer(256)
    if ll.llama_model_meta_val_str(model, b"general.architecture", buf, len(buf)) >= 0:
        arch = buf.value
        if ll.llama_model_meta_val_str(model, arch + b".attention.causal", buf, len(buf)) >= 0:
            return buf.value.lower() in (b"false", b"0")
        if arch in (b"bert", b"nomic-bert", b"nomic-bert-moe", b"jina-bert-v2", b"jina-bert-v3", b"modern-bert",
                    b"neo-bert", b"eurobert"):
            return True
    return False
