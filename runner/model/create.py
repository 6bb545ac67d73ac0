"""Building a model in the store from /api/create's JSON form (what `lm create -f Modelfile` sends).

Every layer is written as a blob first, the manifest last: a failure at any step leaves no model
under the new name and no half-written file (blobs are written atomically by the store).

`files` is either one GGUF, or a safetensors checkpoint (`model*.safetensors` with its JSON files,
keyed by their paths relative to the model directory, as Ollama's CLI sends them): the checkpoint is
converted to GGUF here (`registry.convert`). `quantize` re-encodes an F16/F32 model with llama.cpp.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from modelfiles import OptionError, TemplateError, load_named_template, named_template_for, parse_template, validate_options
from registry import (
    MEDIA_ADAPTER, MEDIA_CONFIG, MEDIA_LICENSE, MEDIA_MESSAGES, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM,
    MEDIA_TEMPLATE, InvalidDigest, InvalidGGUF, Layer, Manifest, ModelName, Store, normalize_digest,
    read_gguf_info,
)
from registry.convert import ConvertError, QuantizeError, convert_directory, quantize_file, quantize_type
from registry.convert.lora import AdapterError, check_gguf_adapter, check_peft_adapter, convert_peft_adapter
from registry.gguf_info import GGUFInfo, is_gguf
from registry.convert.quantize import QUANTIZABLE_SOURCES
from registry.store import temp_name

from runner.model.create_checks import Refused, check_requires, check_unsupported

Progress = Callable[[str], None]
_ROLES = {"system", "user", "assistant", "tool"}


class CreateError(ValueError):
    """Bad input to create (HTTP 400)."""


class SourceNotFound(LookupError):
    """The `from` model is not in the store (HTTP 404)."""


@dataclass
class CreateRequest:
    model: ModelName
    from_: str | None
    files: dict
    adapters: dict
    template: str | None
    system: str | None
    parameters: dict | None
    messages: list | None
    license: list[str] | None
    quantize: str | None
    requires: str | None = None  # REQUIRES: the oldest Ollama the model works with (see create_checks)


def parse_create_request(body: dict) -> CreateRequest:
    from registry import InvalidName

    try:
        model = ModelName.parse(str(body.get("model") or body.get("name") or ""))
    except InvalidName as exc:
        raise CreateError(str(exc)) from None
    license_ = body.get("license")
    if isinstance(license_, str):
        license_ = [license_]
    for key, kind in (("files", dict), ("adapters", dict), ("parameters", dict), ("messages", list),
                      ("template", str), ("system", str), ("from", str), ("quantize", str)):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise CreateError(f"invalid value for {key}: expected {kind.__name__}")
    if license_ is not None and not all(isinstance(x, str) for x in license_):
        raise CreateError("invalid value for license: expected a string or a list of strings")
    req = CreateRequest(model, body.get("from"), body.get("files") or {}, body.get("adapters") or {},
                        body.get("template"), body.get("system"), body.get("parameters"), body.get("messages"),
                        license_, body.get("quantize"))
    if not req.from_ and not req.files:
        raise CreateError("neither 'from' nor 'files' was specified")
    try:
        check_unsupported(body)
        req.requires = check_requires(body.get("requires"))
    except Refused as exc:
        raise CreateError(str(exc)) from None
    return req


def _check_messages(messages: list) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content", ""), str) or m.get("role") not in _ROLES:
            raise CreateError("invalid message: each needs a role (system, user, assistant, tool) and content")
        out.append({"role": m["role"], "content": m.get("content", "")})
    return out


def _config_blob(info) -> dict:
    return {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.details()["parameter_size"],
        "file_type": info.file_type,
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
        "os": platform.system().lower(),
        "rootfs": {"type": "layers", "diff_ids": []},
    }


def create_model(store: Store, req: CreateRequest, progress: Progress, *, noprune: bool = False) -> None:
    """Creates `req.model`; raises CreateError / SourceNotFound for bad input. The layers of a model it
    replaces that nothing else uses are removed at once (as Ollama does), unless `noprune`."""
    # Through a hold: no concurrent delete or overwrite removes a blob this create found or wrote before
    # its manifest names it.
    with store.hold() as held:
        replaced = _create(held, req, progress)
    if replaced is not None and not noprune:
        store.remove_unused(replaced.digests(), f"replaced by {req.model.display}")
    progress("success")


def _create(store: Store, req: CreateRequest, progress: Progress) -> Manifest | None:
    progress("parsing model")
    quantize = None
    if req.quantize:
        try:
            quantize = quantize_type(req.quantize)
        except ValueError as exc:
            raise CreateError(str(exc)) from None
    layers: dict[str, list[Layer]] = {}  # media type -> layers, in manifest order
    base_params: dict = {}

    if req.from_ and not req.files:
        try:
            source_name = ModelName.parse(req.from_)
        except ValueError as exc:
            raise CreateError(str(exc)) from None
        source = store.find(source_name)
        if source is None:
            raise SourceNotFound(f"model '{req.from_}' not found")
        for layer in source.manifest.layers:
            layers.setdefault(layer.media_type, []).append(layer)
            if layer.media_type == MEDIA_PARAMS:
                base_params = json.loads(store.read_blob_bytes(layer.digest))
        config = json.loads(store.read_blob_bytes(source.manifest.config.digest))
        progress(f"using existing layers of {source.name.display}")
        if quantize:  # refused before anything is written
            _check_quantizable(_model_layer_info(store, layers, "quantization"), quantize)
        adapters = []
        if req.adapters:
            adapters = _check_adapters(store, req.adapters, _model_layer_info(store, layers, "adapters"), progress)
    else:
        path, digest = _model_file(store, req.files, quantize, progress)
        try:
            info = read_gguf_info(path)
        except InvalidGGUF as exc:
            raise CreateError(f"invalid model file: {exc}") from None
        if quantize:  # refused before anything is written
            _check_quantizable(info, quantize)
        # Adapters are checked against the base before any other layer is written: a mismatch leaves nothing.
        adapters = _check_adapters(store, req.adapters, info, progress)
        layers[MEDIA_MODEL] = [Layer(MEDIA_MODEL, digest, path.stat().st_size)]
        config = _config_blob(info)
        if req.template is None and info.chat_template:
            # As Ollama: a GGUF whose Jinja template is a known one gets the matching Go template.
            named = named_template_for(info.chat_template)
            if named:
                template_text, template_params = load_named_template(named)
                layers[MEDIA_TEMPLATE] = [_text_layer(store, MEDIA_TEMPLATE, template_text, progress)]
                base_params = dict(template_params)
    if quantize:
        model_layers = layers.get(MEDIA_MODEL) or []
        if len(model_layers) != 1:
            raise CreateError("quantization needs exactly one model layer")
        layer, info = _quantize(store, model_layers[0], quantize, progress)
        layers[MEDIA_MODEL] = [layer]
        config = {**config, "file_type": info.file_type}

    if adapters:
        layers.setdefault(MEDIA_ADAPTER, []).extend(_write_adapters(store, adapters, progress))
    if req.template is not None:
        try:
            parse_template(req.template)
        except TemplateError as exc:
            raise CreateError(f"template error: {exc}") from None
        layers[MEDIA_TEMPLATE] = [_text_layer(store, MEDIA_TEMPLATE, req.template, progress)]
    if req.system is not None:
        layers[MEDIA_SYSTEM] = [_text_layer(store, MEDIA_SYSTEM, req.system, progress)]
    if req.license is not None:
        layers[MEDIA_LICENSE] = [_text_layer(store, MEDIA_LICENSE, text, progress) for text in req.license]
    if req.messages is not None:
        messages = _check_messages(req.messages)
        layers[MEDIA_MESSAGES] = [_json_layer(store, MEDIA_MESSAGES, messages, progress)]
    if req.parameters is not None:
        try:
            params, unknown = validate_options(req.parameters)
        except OptionError as exc:
            raise CreateError(str(exc)) from None
        if unknown:
            raise CreateError(f"unknown parameter '{unknown[0]}'")
        merged = {**base_params, **params}
    else:
        merged = base_params
    if merged:
        layers[MEDIA_PARAMS] = [_json_layer(store, MEDIA_PARAMS, merged, progress)]
    elif MEDIA_PARAMS in layers:
        del layers[MEDIA_PARAMS]

    order = [MEDIA_MODEL, MEDIA_ADAPTER, MEDIA_TEMPLATE, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_MESSAGES, MEDIA_LICENSE]
    ordered = [layer for media in order for layer in layers.get(media, [])]
    ordered += [layer for media, ls in layers.items() if media not in order for layer in ls]
    if req.requires:
        config = {**config, "requires": req.requires}
    config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = [layer.digest for layer in ordered]
    config_digest, config_size = store.add_json_blob(config)
    progress("writing manifest")
    return store.write_manifest(req.model, Manifest(config=Layer(MEDIA_CONFIG, config_digest, config_size),
                                                    layers=ordered))


@dataclass
class _Adapter:
    """One adapter of the request: a GGUF LoRA blob used as it is, or a PEFT adapter's files to convert."""

    label: str
    base: GGUFInfo
    digest: str | None = None  # the GGUF LoRA's blob
    group: PurePosixPath | None = None  # else the PEFT adapter's directory in the request...
    peft_config: Path | None = None  # ...and its files' blobs
    peft_weights: list[Path] | None = None


def _model_layer_info(store: Store, layers: dict, purpose: str) -> GGUFInfo:
    """The GGUF header of the one model layer that quantizing or adapting (`purpose`) works on."""
    models = layers.get(MEDIA_MODEL) or []
    if len(models) != 1:
        raise CreateError(f"{purpose}: the model must have exactly one model layer")
    try:
        return read_gguf_info(store.blob_path(models[0].digest))
    except InvalidGGUF as exc:
        raise CreateError(f"invalid model file: {exc}") from None


def _check_adapters(store: Store, adapters: dict, base: GGUFInfo, progress: Progress) -> list[_Adapter]:
    """The request's adapters, checked against `base`; nothing is written. Each GGUF file is one
    adapter; other files are grouped by directory, each group a PEFT adapter (adapter_config.json
    and adapter_model*.safetensors: Ollama's CLI sends one adapter's files under their bare names;
    ours prefixes a directory per adapter when it sends several)."""
    found: list[_Adapter] = []
    groups: dict[PurePosixPath, dict[str, Path]] = {}
    for name, value in adapters.items():
        rel = _safe_relative(name)
        digest, blob = _uploaded_blob(store, value, f"adapter blob {{digest}} ({name})")
        if is_gguf(blob):
            found.append(_Adapter(f"adapter {name}", base, digest=digest))
            continue
        if rel.parent not in groups:
            groups[rel.parent] = {}
            where = "" if str(rel.parent) == "." else f" {rel.parent}"
            found.append(_Adapter(f"adapter{where}", base, group=rel.parent))
        groups[rel.parent][rel.name] = blob
    for adapter in found:
        if adapter.group is not None:
            files = groups[adapter.group]
            adapter.peft_config = files.get("adapter_config.json")
            adapter.peft_weights = [blob for fname, blob in sorted(files.items()) if fname.endswith(".safetensors")]
            if adapter.peft_config is None or not adapter.peft_weights:
                raise CreateError(f"{adapter.label}: expected a GGUF LoRA file, or a PEFT adapter "
                                  f"(adapter_config.json and adapter_model.safetensors); got {', '.join(sorted(files))}")
    if found:
        progress("checking adapters against the base model")
    try:
        for adapter in found:
            if adapter.digest is not None:
                check_gguf_adapter(store.blob_path(adapter.digest), base, adapter.label)
            else:
                check_peft_adapter(adapter.peft_config, adapter.peft_weights, base, adapter.label)
    except AdapterError as exc:
        raise CreateError(str(exc)) from None
    return found


def _write_adapters(store: Store, adapters: list[_Adapter], progress: Progress) -> list[Layer]:
    """Adapter layers for checked adapters: a GGUF LoRA as it is, a PEFT adapter converted to one."""
    out = []
    for adapter in adapters:
        digest = adapter.digest
        if digest is None:
            progress(f"converting {adapter.label}")
            try:
                with store.blob_writer() as writer:  # straight into the store, hashed on the way
                    convert_peft_adapter(adapter.peft_config, adapter.peft_weights, adapter.base, writer,
                                         adapter.label)
                    digest, _size = writer.commit()
            except AdapterError as exc:
                raise CreateError(str(exc)) from None
            progress(f"creating new layer {digest}")
        else:
            progress(f"using existing layer {digest}")
        out.append(Layer(MEDIA_ADAPTER, digest, store.blob_path(digest).stat().st_size))
    return out


def _model_file(store: Store, files: dict, quantize: str | None, progress: Progress) -> tuple[Path, str]:
    """The GGUF blob for `files`: the one GGUF given, or the safetensors checkpoint converted (and
    then quantized as asked, so that the unquantized conversion never lands in the store)."""
    if any(str(name).endswith(".safetensors") for name in files):
        return _convert(store, files, quantize, progress)
    if len(files) != 1:
        raise CreateError("exactly one model file is supported in 'files' (a second FROM, such as a vision "
                          "projector, is not supported yet)")
    _safe_relative(next(iter(files)))  # the name is unused, but a path outside the model is refused (as Ollama)
    digest, path = _uploaded_blob(store, next(iter(files.values())), "blob {digest}")
    progress(f"using existing layer {digest}")
    return path, digest


def _uploaded_blob(store: Store, value, what: str) -> tuple[str, Path]:
    """The digest and stored file of a blob the request names; `what` ("blob {digest} (name)") says
    which one in the error when the client has not uploaded it."""
    digest = _digest(value)
    blob = store.blob_path(digest)
    if not store.has_blob(digest):  # (and held from now on, when `store` is a create's hold)
        raise CreateError(f"{what.format(digest=digest)} not found; upload it with POST /api/blobs/{digest} first")
    return digest, blob


def _safe_relative(name) -> PurePosixPath:
    """A file name from the request as a path inside the model directory (Ollama: fs.ValidPath, and no
    backslash). Ollama refuses a colon too; lm's CLI sends a file's own name, which may hold one."""
    text = str(name)
    parts = text.split("/")
    if not text or "\\" in text or "\0" in text or any(p in ("", ".", "..") for p in parts):
        raise CreateError(f"invalid file path: file path must be relative: {text}")
    return PurePosixPath(text)


def _temp_path(store: Store, what: str) -> Path:
    # In the blobs directory (same file system as the blobs; a crash's leftover is removed by the store)
    return store.blobs_dir / temp_name(what)


def _convert(store: Store, files: dict, quantize: str | None, progress: Progress) -> tuple[Path, str]:
    """Links the uploaded blobs under their names in a scratch directory and converts that to GGUF."""
    scratch = Path(tempfile.mkdtemp(prefix="lm-convert-"))
    temp = None
    try:
        for name, value in files.items():
            rel = _safe_relative(name)
            digest, blob = _uploaded_blob(store, value, f"blob {{digest}} ({name})")
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                raise CreateError(f"duplicate file path: {name}")
            os.symlink(blob, target)
        progress("converting model")
        try:
            if quantize is None:
                with store.blob_writer() as writer:  # straight into the store, hashed on the way
                    convert_directory(scratch, writer)
                    digest, _size = writer.commit()
            else:
                temp = _temp_path(store, "convert")
                with open(temp, "xb") as out:
                    convert_directory(scratch, out)
                digest, _size = _quantize_file(store, temp, quantize, progress) or store.add_blob_file(temp)
        except ConvertError as exc:
            raise CreateError(str(exc)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if temp is not None:
            _unlink(temp)
    progress(f"creating new layer {digest}")
    return store.blob_path(digest), digest


def _quantize_file(store: Store, src: Path, qtype: str, progress: Progress) -> tuple[str, int] | None:
    """`src` re-encoded as `qtype` by llama.cpp, as a new blob; None when it already is of that type.
    As Ollama, only unquantized sources (F16, BF16, F32) can be quantized."""
    try:
        info = read_gguf_info(src)
    except InvalidGGUF as exc:
        raise CreateError(f"invalid model file: {exc}") from None
    if info.file_type == qtype:
        return None
    _check_quantizable(info, qtype)
    progress(f"quantizing {info.file_type} model to {qtype}")
    out = _temp_path(store, "quantize")
    try:
        try:
            quantize_file(src, out, qtype)
        except QuantizeError as exc:
            raise CreateError(str(exc)) from None
        return store.add_blob_file(out)
    finally:
        _unlink(out)


def _check_quantizable(info, qtype: str) -> None:
    """As Ollama (its current message): only unquantized models are quantized; one already of `qtype` is kept."""
    if info.file_type != qtype and info.file_type not in QUANTIZABLE_SOURCES:
        raise CreateError("quantization is only supported for F16, BF16 and F32 models")


def _quantize(store: Store, layer: Layer, qtype: str, progress: Progress):
    """The model layer as `qtype` (itself when it already is), and its GGUF info."""
    done = _quantize_file(store, store.blob_path(layer.digest), qtype, progress)
    if done is None:
        return layer, read_gguf_info(store.blob_path(layer.digest))
    digest, size = done
    progress(f"creating new layer {digest}")
    return Layer(MEDIA_MODEL, digest, size), read_gguf_info(store.blob_path(digest))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _digest(value) -> str:
    try:
        return normalize_digest(str(value))
    except InvalidDigest as exc:
        raise CreateError(str(exc)) from None


def _text_layer(store: Store, media: str, text: str, progress: Progress) -> Layer:
    digest, size = store.add_blob_bytes(text.encode("utf-8"))
    progress(f"creating new layer {digest}")
    return Layer(media, digest, size)


def _json_layer(store: Store, media: str, obj, progress: Progress) -> Layer:
    digest, size = store.add_json_blob(obj)
    progress(f"creating new layer {digest}")
    return Layer(media, digest, size)
