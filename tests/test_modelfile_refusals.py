"""Modelfile lines and options that used to be accepted and then silently ignored, through the real daemon
and the real CLI: use_mmap reaches the runner; REQUIRES is checked and recorded; RENDERER, PARSER, DRAFT
and a second FROM are refused at create; options and Responses fields of the wrong type are 400s."""

from __future__ import annotations

import openai
import pytest

from runner.model.create_checks import OLLAMA_COMPAT_VERSION
from tests.test_faults import runner_pids


def runner_cmdlines(d) -> list[bytes]:
    out = []
    for pid in runner_pids(d.proc.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out.append(f.read())
    return out


def generate(d, model: str, **options):
    return d.post("/api/generate", {"model": model, "prompt": "hi", "stream": False,
                                    "options": {"num_predict": 2, "temperature": 0, **options}})


def test_use_mmap_reaches_the_runner(make_daemon, tiny_gguf, tmp_path):
    d = make_daemon()
    d.create_from_gguf("mapped", tiny_gguf)
    assert generate(d, "mapped")[0] == 200
    assert [b"--no-use-mmap" in c for c in runner_cmdlines(d)] == [False]
    # The request's use_mmap false reloads the model with its weights read into memory
    assert generate(d, "mapped", use_mmap=False)[0] == 200
    assert [b"--no-use-mmap" in c for c in runner_cmdlines(d)] == [True]
    # ... and so does a Modelfile's PARAMETER
    assert d.post("/api/generate", {"model": "mapped", "keep_alive": 0})[0] == 200  # unloaded
    assert runner_cmdlines(d) == []
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {tiny_gguf}\nPARAMETER use_mmap false\n")
    assert d.cli("create", "unmapped", "-f", str(mf)).returncode == 0
    assert generate(d, "unmapped")[0] == 200
    assert [b"--no-use-mmap" in c for c in runner_cmdlines(d)] == [True]


def create_cli(d, tmp_path, name: str, text: str):
    mf = tmp_path / f"{name}.Modelfile"
    mf.write_text(text)
    return d.cli("create", name, "-f", str(mf))


def one_line_error(result, words: str) -> None:
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and words in result.stderr, result.stderr


def test_requires_is_checked_and_recorded(daemon, tiny_gguf, tmp_path):
    ok = create_cli(daemon, tmp_path, "needs-old", f"FROM {tiny_gguf}\nREQUIRES 0.14.0\n")
    assert ok.returncode == 0, ok.stderr
    assert daemon.post("/api/show", {"model": "needs-old"})[1]["requires"] == "0.14.0"
    newer = create_cli(daemon, tmp_path, "needs-new", f"FROM {tiny_gguf}\nREQUIRES 99.1.0\n")
    one_line_error(newer, f"this model requires Ollama 99.1.0 or newer; lm follows Ollama {OLLAMA_COMPAT_VERSION}")
    assert daemon.post("/api/show", {"model": "needs-new"})[0] == 404
    digest = daemon.upload_blob(tiny_gguf)
    status, body = daemon.post("/api/create", {"model": "bad-requires", "files": {"m.gguf": digest},
                                               "requires": "soon", "stream": False})
    assert (status, body) == (400, {"error": "requires must be a valid semver (e.g. 0.14.0)"})


@pytest.mark.parametrize("line,words", [
    ("RENDERER qwen3-coder", "RENDERER is not supported"),
    ("PARSER qwen3-coder", "PARSER is not supported"),
    ("DRAFT ./draft.gguf", "DRAFT is not supported yet"),
    ("FROM ./projector.gguf", "a second FROM (such as a vision projector) is not supported yet"),
])
def test_unsupported_lines_are_refused_at_create(daemon, tiny_gguf, tmp_path, line, words):
    (tmp_path / "projector.gguf").write_bytes(tiny_gguf.read_bytes())
    result = create_cli(daemon, tmp_path, "refused", f"FROM {tiny_gguf}\n{line}\n")
    one_line_error(result, words)
    assert daemon.post("/api/show", {"model": "refused"})[0] == 404


def test_unsupported_fields_are_refused_by_the_api(daemon, tiny_gguf):
    digest = daemon.upload_blob(tiny_gguf)
    for extra, words in (({"renderer": "x"}, "RENDERER is not supported"), ({"parser": "x"}, "PARSER is not supported"),
                         ({"draft": "x"}, "DRAFT is not supported yet"),
                         ({"draft_files": {"d.gguf": digest}}, "DRAFT is not supported yet")):
        status, body = daemon.post("/api/create", {"model": "refused-api", "files": {"m.gguf": digest}, "stream": False,
                                                   **extra})
        assert status == 400 and words in body["error"], extra
    status, body = daemon.post("/api/create", {"model": "refused-api", "stream": False,
                                               "files": {"m.gguf": digest, "mmproj.gguf": digest}})
    assert status == 400 and "a second FROM, such as a vision projector, is not supported yet" in body["error"]
    assert daemon.post("/api/show", {"model": "refused-api"})[0] == 404


def test_deprecated_options_are_still_typed(daemon, tiny):
    for options, error in (({"mirostat_tau": "x"}, 'option "mirostat_tau" must be of type float32'),
                           ({"penalize_newline": "yes"}, 'option "penalize_newline" must be of type boolean'),
                           ({"mirostat": "2"}, 'option "mirostat" must be of type integer')):
        for path, body in (("/api/generate", {"prompt": "hi"}),
                           ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]})):
            assert daemon.post(path, {"model": tiny, "options": options, **body}) == (400, {"error": error}), path
    # Well typed, they are accepted and ignored, as Ollama does
    status, body = generate(daemon, tiny, mirostat=2, mirostat_tau=5.0, penalize_newline=True)
    assert status == 200 and body["done"]


def test_responses_fields_of_the_wrong_type(daemon, smollm2):
    oai = openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused")
    for extra, message, param in (
            ({"instructions": 5}, "Invalid type for 'instructions': expected a string, but got an integer instead.",
             "instructions"),
            ({"tool_choice": 5}, "Invalid type for 'tool_choice': expected a string or an object, but got an integer "
                                 "instead.", "tool_choice"),
            ({"previous_response_id": "resp_nope"}, "Previous response with id 'resp_nope' not found.",
             "previous_response_id")):
        with pytest.raises(openai.BadRequestError) as exc:
            oai.responses.create(model=smollm2, input="hi", max_output_tokens=2, extra_body=extra)
        assert (exc.value.body["message"], exc.value.body["param"]) == (message, param)
