"""A loaded llama.cpp model and its context, through llama-cpp-python's low-level bindings."""

from __future__ import annotations

import ctypes
import os
import sys
import llama_cpp as ll

from runner.engine.protocol import LaunchConfig

_backend_ready = False


def _init_backend() -> None:
    # llama.cpp logs to stderr, which the daemon reads (shown with LM_DEBUG, the tail kept for errors).
    # No Python log callback of our own: one crashed CUDA model loading on an H100.
    global _backend_ready
    if not _backend_ready:
        ll.llama_backend_init()
        _backend_ready = True


class ModelLoadError(RuntimeError):
    pass


_KV_TYPES = {"f16": ll.GGML_TYPE_F16, "f32": ll.GGML_TYPE_F32, "q8_0": ll.GGML_TYPE_Q8_0, "q4_0": ll.GGML_TYPE_Q4_0}
_FLASH = {"auto": ll.LLAMA_FLASH_ATTN_TYPE_AUTO, "off": ll.LLAMA_FLASH_ATTN_TYPE_DISABLED,
          "on": ll.LLAMA_FLASH_ATTN_TYPE_ENABLED}
_SPLIT = {"none": ll.LLAMA_SPLIT_MODE_NONE, "layer": ll.LLAMA_SPLIT_MODE_LAYER, "row": ll.LLAMA_SPLIT_MODE_ROW}


def _model_params(cfg: LaunchConfig):
    """llama_model_params for `cfg`, and the float array its tensor_split points to (keep it alive
    while the model loads: the struct only borrows it)."""
    if cfg.split_mode not in _SPLIT:
        raise ModelLoadError(f"unknown split mode {cfg.split_mode!r}")
    mparams = ll.llama_model_default_params()
    mparams.n_gpu_layers = cfg.gpu_layers
    mparams.split_mode = _SPLIT[cfg.split_mode]
    mparams.main_gpu = cfg.main_gpu
    if not cfg.use_mmap:  # the struct has no use_mmap any more: load_mode says it
        mparams.load_mode = ll.LLAMA_LOAD_MODE_NONE
    mparams.use_extra_bufts = cfg.repack
    split = None
    if cfg.tensor_split:
        # llama.cpp reads llama_max_devices() floats from this pointer, whatever the GPU count
        n = ll.llama_max_devices()
        if len(cfg.tensor_split) > n:
            raise ModelLoadError(f"tensor split for {len(cfg.tensor_split)} GPUs; llama.cpp supports {n}")
        split = (ctypes.c_float * n)(*cfg.tensor_split)
        mparams.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
    if cfg.rpc_workers:
        from runner.ggml.backend import offload_devices

        try:
            chosen, array = offload_devices(list(cfg.rpc_workers))
        except RuntimeError as exc:
            raise ModelLoadError(str(exc)) from None
        mparams.devices = ctypes.cast(array, ctypes.c_void_p)
        print("offload devices: " + ", ".join(f"{i}: {d.name} ({d.description})" for i, d in enumerate(chosen)),
              file=sys.stderr, flush=True)
        split = (split, array)  # both must outlive the load
    return mparams, split


class LoadedModel:
    """Owns the llama_model, the llama_context and token <-> text helpers."""

    def __init__(self, cfg: LaunchConfig):
        """Loads `cfg.model` with `cfg.adapters`, and a context per `cfg.contexts` (none for an
        embedding model); the rest of `cfg` (the socket, the engine's switches) is not read here."""
        _init_backend()
        path = cfg.model
        self.cfg = cfg
        mparams, self._tensor_split = _model_params(cfg)
        self.model = ll.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load the model file {path}")
        if cfg.rpc_workers:
            from runner.ggml.backend import harden_rpc_sockets

            # libggml-rpc holds one connection per worker while the model's buffers live there
            hardened = harden_rpc_sockets(list(cfg.rpc_workers))
            print(f"keepalive on {hardened} RPC worker connection(s)", file=sys.stderr, flush=True)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = ll.llama_model_n_ctx_train(self.model)
        self.add_bos = ll.llama_vocab_get_add_bos(self.vocab)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._max_token_bytes: int | None = None
        # LoRA adapters belong to the model (llama.cpp frees them with it); each context applies them.
        self.adapters = [self._load_adapter(p) for p in cfg.adapters]
        self.ctx = self.memory = None
        self.contexts: list[tuple] = []  # (llama_context, its memory) per slot group; ctx is the first
        self.n_batch = cfg.num_batch
        if not cfg.embedding_only:
            n = cfg.contexts if cfg.contexts > 1 and cfg.parallel % cfg.contexts == 0 else 1
            for _ in range(n):
                self._init_context(cfg, cfg.parallel // n)
            self.ctx, self.memory = self.contexts[0]

    def _init_context(self, cfg: LaunchConfig, n_seq: int) -> None:
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cfg.num_ctx * n_seq
        # A decode step carries a token of every slot: the batch is never smaller than the slot count.
        cparams.n_batch = cparams.n_ubatch = max(cfg.num_batch, n_seq)
        cparams.n_seq_max = n_seq
        threads = cfg.num_thread or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        # A stream of num_ctx cells per slot, not one pool shared by all: it lays each sequence's
        # KV out exactly as if it ran alone (softmax sums see the same layout, so outputs do not depend on
        # other requests), and with many slots it is faster: each token attends over its own sequence's
        # cells, and llama.cpp builds the attention mask per stream (H100, 8B, 64 slots: 4,000 vs 3,100
        # tok/s in steady decode). The engine's batches are laid out for it (planner.py, FillerEntry).
        cparams.kv_unified = False
        # One output (the last token's) per sequence per step is all the engine asks for; saying so lets
        # llama.cpp's backend samplers with per-sequence history (repetition penalties) run on the GPU.
        cparams.n_outputs_max_per_seq = 1
        if cfg.kv_type not in _KV_TYPES or cfg.flash_attn not in _FLASH:
            self.close()
            raise ModelLoadError(f"unknown KV cache type {cfg.kv_type!r} or flash attention mode {cfg.flash_attn!r}")
        cparams.flash_attn_type = _FLASH[cfg.flash_attn]
        cparams.type_k = cparams.type_v = _KV_TYPES[cfg.kv_type]
        cparams.no_perf = True
        ctx = ll.llama_init_from_model(self.model, cparams)
        if not ctx:
            self.close()
            raise ModelLoadError("llama.cpp could not create a context (out of memory?)")
        self.contexts.append((ctx, ll.llama_get_memory(ctx)))
        self.n_batch = ll.llama_n_batch(ctx)
        self.apply_adapters(ctx)

    def _load_adapter(self, path: str):
        adapter = ll.llama_adapter_lora_init(self.model, path.encode())
        if not adapter:
            ll.llama_model_free(self.model)  # with the adapters loaded so far
            self.model = None
            raise ModelLoadError(f"llama.cpp could not load the LoRA adapter {path}")
        return adapter

    def apply_adapters(self, ctx) -> None:
        """Puts the model's LoRA adapters on `ctx`, each at scale 1.0: llama.cpp itself scales each
        by its adapter.lora.alpha over its rank, as PEFT does."""
        if not self.adapters:
            return
        n = len(self.adapters)
        adapters = (ll.llama_adapter_lora_p_ctypes * n)(*self.adapters)
        scales = (ctypes.c_float * n)(*([1.0] * n))
        if ll.llama_set_adapters_lora(ctx, adapters, n, scales) != 0:
            raise ModelLoadError("llama.cpp could not apply the LoRA adapters to the context")

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        n = ll.llama_token_to_piece(self.vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def max_token_bytes(self) -> int:
        """The longest text (in UTF-8 bytes) that one token of the vocabulary stands for, special tokens
        as written in a prompt included: a text of n bytes has at least n / this many tokens. Computed
        on first use (a pass over the vocabulary), then kept."""
        if self._max_token_bytes is None:
            buf = ctypes.create_string_buffer(1024)
            longest = 1
            for token in range(self.n_vocab):
                n = ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
                longest = max(longest, n if n >= 0 else -n)  # negative: the size it needs
            self._max_token_bytes = longest
        return self._max_token_bytes

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return ll.llama_vocab_is_eog(self.vocab, token)

    def close(self) -> None:
        for ctx, _memory in self.contexts:
            ll.llama_free(ctx)
        self.contexts = []
        self.ctx = self.memory = None
        if self.model:
            ll.llama_model_free(self.model)
            self.model = None
