"""Modelfile parsing and writing, and the option table (modelfiles.parser, modelfiles.options)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from modelfiles.options import (
    DEPRECATED_OPTIONS,
    OPTION_TYPES,
    RUNNER_OPTIONS,
    OptionError,
    format_parameter,
    parse_parameter,
    validate_options,
)
from modelfiles.parser import Modelfile, ModelfileError, format_modelfile, parse_modelfile

TEMPLATES_DIR = Path("/work/shared/compat/ollama-templates")
TEMPLATE_FILES = sorted(TEMPLATES_DIR.glob("*.gotmpl"))


def read_template(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def template_params(path: Path) -> dict:
    p = path.with_suffix(".json")
    return json.loads(p.read_text()) if p.exists() else {}


def parse_error(text: str | bytes) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        parse_modelfile(text)
    return info.value


# ------------------------------------------------------------------------------------------ options


class TestOptionTable:
    def test_all_ollama_options_present_with_types(self):
        expected = {
            "num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float,
            "min_p": float, "typical_p": float, "repeat_last_n": int, "temperature": float,
            "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
            "stop": list, "num_ctx": int, "num_batch": int, "num_gpu": int, "main_gpu": int,
            "use_mmap": bool, "num_thread": int, "draft_num_predict": int,
        }  # fmt: skip
        assert OPTION_TYPES == {**expected, "draft_type": str}  # lm's own: the speculative draft source

    def test_deprecated_and_removed_are_not_options(self):
        for name in DEPRECATED_OPTIONS | {"numa", "tfs_z", "num_gqa", "low_vram"}:
            assert name not in OPTION_TYPES

    def test_runner_options_are_options(self):
        assert RUNNER_OPTIONS <= OPTION_TYPES.keys()
        assert "num_ctx" in RUNNER_OPTIONS and "temperature" not in RUNNER_OPTIONS


class TestParseParameter:
    @pytest.mark.parametrize(
        "name,raw,value",
        [
            ("num_ctx", "4096", 4096),
            ("seed", "-1", -1),
            ("seed", "+7", 7),
            ("seed", "9223372036854775807", 2**63 - 1),
            ("main_gpu", "0", 0),
            ("temperature", "0.7", 0.7),
            ("temperature", "1", 1.0),
            ("top_p", ".5", 0.5),
            ("top_p", "5.", 5.0),
            ("min_p", "1e-5", 1e-5),
            ("min_p", "-2.5E+1", -25.0),
            ("repeat_penalty", "0x1p-2", 0.25),
            ("stop", "### User:", ["### User:"]),
            ("stop", "", [""]),
        ],
    )
    def test_values(self, name, raw, value):
        got = parse_parameter(name, raw)
        assert got == value and type(got) is type(value)

    @pytest.mark.parametrize("raw", ["1", "t", "T", "TRUE", "true", "True"])
    def test_bool_true_like_go(self, raw):
        assert parse_parameter("use_mmap", raw) is True

    @pytest.mark.parametrize("raw", ["0", "f", "F", "FALSE", "false", "False"])
    def test_bool_false_like_go(self, raw):
        assert parse_parameter("use_mmap", raw) is False

    @pytest.mark.parametrize(
        "name,raw,kind",
        [
            ("top_k", "1.5", "int"),
            ("top_k", "abc", "int"),
            ("top_k", "", "int"),
            ("top_k", "1e3", "int"),
            ("top_k", "1_000", "int"),
            ("seed", "9223372036854775808", "int"),
            ("temperature", "abc", "float"),
            ("temperature", "0.7.1", "float"),
            ("temperature", "inf", "float"),
            ("temperature", "nan", "float"),
            ("temperature", "1e39", "float"),  # beyond float32, as Go's ParseFloat(s, 32)
            ("temperature", "", "float"),
            ("use_mmap", "yes", "bool"),
            ("use_mmap", "tRuE", "bool"),
            ("use_mmap", "", "bool"),
        ],
    )
    def test_bad_values_name_parameter_and_type(self, name, raw, kind):
        with pytest.raises(OptionError) as info:
            parse_parameter(name, raw)
        msg = str(info.value)
        assert msg.startswith(f"invalid {kind} value")
        assert f"'{name}'" in msg

    def test_unknown(self):
        with pytest.raises(OptionError, match=r"^unknown parameter 'foo'$"):
            parse_parameter("foo", "1")

    def test_names_are_case_sensitive_like_ollama(self):
        with pytest.raises(OptionError, match="unknown parameter 'Temperature'"):
            parse_parameter("Temperature", "1")

    def test_deprecated_is_unknown_outside_modelfiles(self):
        with pytest.raises(OptionError, match="unknown parameter 'mirostat'"):
            parse_parameter("mirostat", "1")

    def test_option_error_is_value_error(self):
        assert issubclass(OptionError, ValueError)

    @pytest.mark.parametrize(
        "name,value",
        [("temperature", 0.7), ("min_p", 1e-05), ("top_p", 1.0), ("seed", -1), ("use_mmap", False),
         ("use_mmap", True), ("stop", ["a", " b "]), ("repeat_penalty", 1.1754943508222875e-38)],
    )  # fmt: skip
    def test_format_parameter_round_trip(self, name, value):
        texts = format_parameter(name, value)
        back = [parse_parameter(name, t) for t in texts]
        if name == "stop":
            assert [x for b in back for x in b] == value
        else:
            assert back == [value]

    def test_format_parameter_bool_is_lowercase(self):
        assert format_parameter("use_mmap", True) == ["true"]


class TestValidateOptions:
    def test_full_request(self):
        opts = {
            "num_keep": 5, "seed": 42, "num_predict": 100, "draft_num_predict": 4, "top_k": 20,
            "top_p": 0.9, "min_p": 0.0, "typical_p": 0.7, "repeat_last_n": 33, "temperature": 0.8,
            "repeat_penalty": 1.2, "presence_penalty": 1.5, "frequency_penalty": 1.0,
            "penalize_newline": True, "stop": ["\n", "user:"], "numa": False, "num_ctx": 1024,
            "num_batch": 2, "num_gpu": 1, "main_gpu": 0, "use_mmap": True, "num_thread": 8,
        }  # fmt: skip  (the example request of Ollama's docs/api.md)
        typed, unknown = validate_options(opts)
        assert unknown == ["penalize_newline", "numa"]
        assert set(typed) == set(opts) - {"penalize_newline", "numa"}
        assert typed["stop"] == ["\n", "user:"]
        assert typed["temperature"] == 0.8

    def test_int_given_as_float(self):
        typed, _ = validate_options({"num_ctx": 3.0, "seed": -2.0})
        assert typed == {"num_ctx": 3, "seed": -2}
        assert type(typed["num_ctx"]) is int

    def test_int_given_as_fraction_truncates_like_ollama(self):
        assert validate_options({"num_predict": 3.7, "seed": -3.7})[0] == {"num_predict": 3, "seed": -3}

    def test_float_given_as_int(self):
        typed, _ = validate_options({"temperature": 1, "top_p": 0})
        assert typed == {"temperature": 1.0, "top_p": 0.0}
        assert all(type(v) is float for v in typed.values())

    def test_stop_as_string_or_list(self):
        assert validate_options({"stop": "\n\n"})[0] == {"stop": ["\n\n"]}
        assert validate_options({"stop": ["a", "b"]})[0] == {"stop": ["a", "b"]}
        assert validate_options({"stop": []})[0] == {"stop": []}

    def test_none_values_are_skipped(self):
        assert validate_options({"temperature": None, "top_k": 3}) == ({"top_k": 3}, [])

    def test_none_or_empty(self):
        assert validate_options(None) == ({}, [])
        assert validate_options({}) == ({}, [])

    def test_unknown_names_in_order_and_not_typed(self):
        typed, unknown = validate_options({"zzz": 1, "top_k": 1, "mirostat": 2, "tfs_z": 1.0})
        assert typed == {"top_k": 1}
        assert unknown == ["zzz", "mirostat", "tfs_z"]

    @pytest.mark.parametrize(
        "opts,message",
        [
            ({"top_k": "40"}, 'option "top_k" must be of type integer'),
            ({"top_k": True}, 'option "top_k" must be of type integer'),
            ({"top_k": [1]}, 'option "top_k" must be of type integer'),
            ({"top_k": math.inf}, 'option "top_k" must be of type integer'),
            ({"top_k": 2.0**70}, 'option "top_k" must be of type integer'),
            ({"temperature": "0.7"}, 'option "temperature" must be of type float32'),
            ({"temperature": False}, 'option "temperature" must be of type float32'),
            ({"temperature": math.nan}, 'option "temperature" must be a finite number'),
            ({"temperature": 10**400}, 'option "temperature" must be of type float32'),
            ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
            ({"use_mmap": "true"}, 'option "use_mmap" must be of type boolean'),
            ({"stop": 5}, 'option "stop" must be of type array'),
            ({"stop": {"a": 1}}, 'option "stop" must be of type array'),
            ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings'),
        ],
    )
    def test_wrong_types(self, opts, message):
        with pytest.raises(OptionError) as info:
            validate_options(opts)
        assert str(info.value) == message

    def test_not_a_dict(self):
        with pytest.raises(OptionError):
            validate_options([1, 2])  # type: ignore[arg-type]

    def test_input_not_modified(self):
        opts = {"stop": ["a"], "num_ctx": 2.0}
        typed, _ = validate_options(opts)
        typed["stop"].append("b")
        assert opts == {"stop": ["a"], "num_ctx": 2.0}


# ------------------------------------------------------------------------------------------ parsing


class TestInstructions:
    def test_every_instruction(self):
        mf = parse_modelfile(
            "FROM llama3.2\n"
            "ADAPTER ./lora.gguf\n"
            "ADAPTER /abs/other.gguf\n"
            "DRAFT ./draft.gguf\n"
            "PARAMETER temperature 0.5\n"
            "PARAMETER num_ctx 4096\n"
            "PARAMETER use_mmap false\n"
            "PARAMETER stop <|eot_id|>\n"
            "TEMPLATE {{ .Prompt }}\n"
            "SYSTEM You are Mario from super mario bros, acting as an assistant.\n"
            "LICENSE MIT\n"
            "LICENSE Apache-2.0\n"
            "MESSAGE system Be brief.\n"
            "MESSAGE user Is Toronto in Canada?\n"
            "MESSAGE assistant yes\n"
            "RENDERER qwen3\n"
            "PARSER qwen3\n"
            "REQUIRES 0.14.0\n"
        )
        assert mf == Modelfile(
            from_="llama3.2",
            parameters={"temperature": 0.5, "num_ctx": 4096, "use_mmap": False, "stop": ["<|eot_id|>"]},
            template="{{ .Prompt }}",
            system="You are Mario from super mario bros, acting as an assistant.",
            adapters=["./lora.gguf", "/abs/other.gguf"],
            license=["MIT", "Apache-2.0"],
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Is Toronto in Canada?"},
                {"role": "assistant", "content": "yes"},
            ],
            requires="0.14.0",
            draft="./draft.gguf",
            renderer="qwen3",
            parser="qwen3",
        )
        assert mf.warnings == []

    def test_minimal(self):
        assert parse_modelfile("FROM foo") == Modelfile(from_="foo")

    def test_defaults(self):
        mf = parse_modelfile("FROM foo\n")
        assert (mf.template, mf.system, mf.requires, mf.draft) == (None, None, None, None)
        assert (mf.parameters, mf.adapters, mf.license, mf.messages) == ({}, [], [], [])

    def test_ollama_docs_example(self):
        mf = parse_modelfile(
            "FROM llama3.2\n"
            "# sets the temperature to 1 [higher is more creative, lower is more coherent]\n"
            "PARAMETER temperature 1\n"
            "# sets the context window size to 4096, this controls how many tokens the LLM can use\n"
            "PARAMETER num_ctx 4096\n"
            "\n"
            "# sets a custom system message to specify the behavior of the chat assistant\n"
            "SYSTEM You are Mario from super mario bros, acting as an assistant.\n"
        )
        assert mf.parameters == {"temperature": 1.0, "num_ctx": 4096}
        assert mf.system == "You are Mario from super mario bros, acting as an assistant."

    def test_from_values_stay_raw(self):
        for v in ["llama3:latest", "llama3:7b-instruct-q4_K_M", "/path/to/model/fp16.bin",
                  "./ollama-model.gguf", "~/models/x.gguf", "hf.co/org/repo:Q4_K_M",
                  "sha256:" + "0" * 64, "/what/is/the path"]:  # fmt: skip
            assert parse_modelfile(f"FROM {v}\n").from_ == v

    def test_instruction_after_from_order_free(self):
        mf = parse_modelfile("PARAMETER top_k 1\nSYSTEM hi\nFROM foo\n")
        assert mf.from_ == "foo" and mf.parameters == {"top_k": 1} and mf.system == "hi"

    @pytest.mark.parametrize("case", [str.lower, str.upper, str.title, lambda w: w[0].lower() + w[1:].upper()])
    def test_instructions_case_insensitive(self, case):
        lines = ["FROM foo", "SYSTEM x", "PARAMETER top_k 3", "PARAMETER stop a", "MESSAGE user hi",
                 "TEMPLATE t", "LICENSE L", "ADAPTER a", "REQUIRES 1.0.0"]  # fmt: skip
        text = "\n".join(case(ln.split(" ", 1)[0]) + " " + ln.split(" ", 1)[1] for ln in lines)
        mf = parse_modelfile(text)
        assert mf == Modelfile(from_="foo", system="x", parameters={"top_k": 3, "stop": ["a"]},
                               messages=[{"role": "user", "content": "hi"}], template="t", license=["L"],
                               adapters=["a"], requires="1.0.0")  # fmt: skip

    def test_repeated_stop_accumulates(self):
        mf = parse_modelfile(
            "FROM foo\nPARAMETER stop <|start_header_id|>\nPARAMETER stop <|end_header_id|>\n"
            "PARAMETER temperature 1\nPARAMETER stop <|eot_id|>\n"
        )
        assert mf.parameters["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

    def test_repeats_last_wins(self):
        mf = parse_modelfile(
            "FROM foo\nPARAMETER temperature 1\nPARAMETER temperature 0.2\nSYSTEM a\nSYSTEM b\n"
            "TEMPLATE x\nTEMPLATE y\nREQUIRES 0.1.0\nREQUIRES 0.2.0\nDRAFT d1\nDRAFT d2\n"
        )
        assert mf.parameters == {"temperature": 0.2}
        assert (mf.system, mf.template, mf.requires, mf.draft) == ("b", "y", "0.2.0", "d2")

    def test_several_from_lines(self):
        # `ollama show --modelfile` writes a vision model's projector as a second FROM line
        mf = parse_modelfile("FROM /blobs/sha256-aaa\nFROM /blobs/sha256-bbb\nFROM x\n")
        assert mf.from_ == "/blobs/sha256-aaa"
        assert mf.extra_from == ["/blobs/sha256-bbb", "x"]

    def test_messages_in_order_with_multiline(self):
        mf = parse_modelfile('FROM foo\nMESSAGE system """\nYou are a multiline file parser.\n"""\n'
                             "MESSAGE user Hey there!\nMESSAGE assistant Hello, I parse things!\n")  # fmt: skip
        assert mf.messages == [
            {"role": "system", "content": "\nYou are a multiline file parser.\n"},
            {"role": "user", "content": "Hey there!"},
            {"role": "assistant", "content": "Hello, I parse things!"},
        ]

    def test_message_without_trailing_newline(self):
        mf = parse_modelfile("FROM foo\nMESSAGE system You are a file parser. Always parse things.")
        assert mf.messages == [{"role": "system", "content": "You are a file parser. Always parse things."}]

    def test_empty_values_allowed_where_ollama_writes_them(self):
        # Ollama's own writer puts `SYSTEM ` / `MESSAGE assistant ` for empty strings
        mf = parse_modelfile('FROM foo\nSYSTEM \nMESSAGE assistant \nMESSAGE user\nLICENSE ""\nTEMPLATE """"""\n')
        assert mf.system == ""
        assert mf.messages == [{"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
        assert mf.license == [""] and mf.template == ""

    def test_deprecated_parameters_warned_and_skipped(self):
        mf = parse_modelfile(
            "FROM foo\nPARAMETER penalize_newline true\nPARAMETER mirostat 2\nPARAMETER top_k 5\n"
        )
        assert mf.parameters == {"top_k": 5}
        assert len(mf.warnings) == 2
        assert "penalize_newline" in mf.warnings[0] and "line 2" in mf.warnings[0]
        assert "mirostat" in mf.warnings[1] and "deprecated" in mf.warnings[1]
        assert mf == parse_modelfile("FROM foo\nPARAMETER top_k 5\n")  # warnings are not compared

    @pytest.mark.parametrize(
        "text,version",
        [("0.14.0", "0.14.0"), ("v0.14.0", "0.14.0"), ("1", "1"), ("1.2", "1.2"),
         ("0.14.0-rc1", "0.14.0-rc1"), ("1.0.0-alpha.1+build.5", "1.0.0-alpha.1+build.5")],
    )  # fmt: skip
    def test_requires(self, text, version):
        assert parse_modelfile(f"FROM foo\nREQUIRES {text}\n").requires == version


class TestWhitespaceAndComments:
    def test_comments(self):
        mf = parse_modelfile("# comment\nFROM foo\n  # indented comment\n\t# tabbed\n#SYSTEM no\n# PARAMETER top_k x\n")
        assert mf == Modelfile(from_="foo")

    def test_hash_inside_value_is_not_a_comment(self):
        mf = parse_modelfile("FROM foo # not a comment\nSYSTEM a # b\nPARAMETER stop #\n")
        assert mf.from_ == "foo # not a comment"
        assert mf.system == "a # b"
        assert mf.parameters["stop"] == ["#"]

    def test_hash_line_inside_triple_quotes_is_content(self):
        mf = parse_modelfile('FROM foo\nSYSTEM """\n# Rules\nbe nice\n"""\n')
        assert mf.system == "\n# Rules\nbe nice\n"

    def test_trim_like_ollama(self):
        mf = parse_modelfile(
            'FROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\n'
            "PARAMETER stop        value1   \nSYSTEM\t\tsys\t \n"
        )
        assert mf.from_ == "     model 1"
        assert mf.adapters == ["adapter3"]
        assert mf.license == ["MIT       "]
        assert mf.parameters == {"stop": ["value1"]}
        assert mf.system == "sys"

    @pytest.mark.parametrize(
        "line,value",
        [
            ('FROM "FOO  BAR  "', "FOO  BAR  "),
            ("FROM     FOOO BAR    ", "FOOO BAR"),
            ("FROM /what/is/the path ", "/what/is/the path"),
        ],
    )
    def test_from_trimming_cases(self, line, value):
        assert parse_modelfile(line).from_ == value

    def test_indented_instructions_and_blank_lines(self):
        mf = parse_modelfile("\n\n   FROM foo\n\n\t PARAMETER   top_k   7\n   \n\tSYSTEM hi\n\n")
        assert mf.from_ == "foo" and mf.parameters == {"top_k": 7} and mf.system == "hi"

    def test_extra_blanks_between_parameter_name_and_value(self):
        assert parse_modelfile("FROM x\nPARAMETER\t \ttemperature \t 0.5\n").parameters == {"temperature": 0.5}

    def test_crlf_line_endings(self):
        text = "FROM foo\r\nPARAMETER top_k 3\r\nSYSTEM hello there \r\n# c\r\nLICENSE MIT\r\n"
        mf = parse_modelfile(text)
        assert mf == Modelfile(from_="foo", parameters={"top_k": 3}, system="hello there", license=["MIT"])

    def test_crlf_line_numbers(self):
        assert parse_error("FROM foo\r\n\r\nBOGUS x\r\n").line == 3

    def test_cr_only_line_endings(self):
        assert parse_modelfile("FROM foo\rSYSTEM hi\r").system == "hi"

    def test_crlf_inside_triple_quotes_is_kept(self):
        # as in Ollama: the text between the quotes is kept as is, line breaks included
        assert parse_modelfile('FROM foo\r\nSYSTEM """a\r\nb"""\r\n').system == "a\r\nb"

    def test_unicode(self):
        text = "FROM test\n\tSYSTEM 你好👋 👩\u200d💻\u00a0x\n"
        assert parse_modelfile(text).system == "你好👋 👩\u200d💻\u00a0x"

    def test_bom_in_str(self):
        assert parse_modelfile("\ufeffFROM foo\n").from_ == "foo"

    @pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
    def test_bytes(self, encoding):
        data = "FROM bob\nPARAMETER num_ctx 4096\nSYSTEM You are a 你好👋 file.\n".encode(encoding)
        mf = parse_modelfile(data)
        assert mf == Modelfile(from_="bob", parameters={"num_ctx": 4096}, system="You are a 你好👋 file.")

    @pytest.mark.parametrize("bom,codec", [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
    def test_utf16_both_byte_orders(self, bom, codec):
        data = bom + "FROM bob\nSYSTEM x\n".encode(codec)
        assert parse_modelfile(data) == Modelfile(from_="bob", system="x")


class TestQuoting:
    def test_double_quotes_keep_spaces(self):
        assert parse_modelfile('FROM x\nPARAMETER stop "### User: "\n').parameters["stop"] == ["### User: "]

    def test_no_escapes_inside_quotes(self):
        mf = parse_modelfile('FROM x\nSYSTEM "a \\n \\" b"\nPARAMETER stop "a "b" c"\n')
        assert mf.system == 'a \\n \\" b'
        assert mf.parameters["stop"] == ['a "b" c']

    def test_triple_quotes_on_one_line(self):
        assert parse_modelfile('FROM x\nSYSTEM """This is a system."""\n').system == "This is a system."

    def test_triple_quotes_closing_on_own_line(self):
        mf = parse_modelfile('FROM x\nSYSTEM """\nThis is a\nmultiline system.\n"""\n')
        assert mf.system == "\nThis is a\nmultiline system.\n"

    def test_triple_quotes_closing_on_last_content_line(self):
        assert parse_modelfile('FROM x\nSYSTEM """\nThis is a\nmultiline."""\n').system == "\nThis is a\nmultiline."
        assert parse_modelfile('FROM x\nSYSTEM """This is a\nmultiline."""').system == "This is a\nmultiline."

    def test_triple_quotes_keep_inner_whitespace(self):
        mf = parse_modelfile('FROM x\nTEMPLATE """   {{ .Prompt }}\n\n\t  """    \n')
        assert mf.template == "   {{ .Prompt }}\n\n\t  "

    def test_triple_quotes_with_quotes_inside(self):
        mf = parse_modelfile('FROM x\nSYSTEM """\nAlways respond with "Hello!".\n"""\n')
        assert mf.system == '\nAlways respond with "Hello!".\n'
        mf = parse_modelfile("FROM x\nSYSTEM \"\"\"''\"'\"\"'\"\"'\"'''''\"\"'\"\"'\"\"\"\n")
        assert mf.system == "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'"

    def test_empty_quotes(self):
        assert parse_modelfile('FROM x\nSYSTEM ""\n').system == ""
        assert parse_modelfile('FROM x\nSYSTEM """"""\n').system == ""
        assert parse_modelfile("FROM x\nSYSTEM \"'\"\n").system == "'"

    def test_single_quote_spans_lines_like_ollama(self):
        assert parse_modelfile('FROM x\nSYSTEM "one\ntwo"\nPARAMETER top_k 1\n').system == "one\ntwo"

    def test_quoted_parameter_forms(self):
        cases = {
            'stop "### User:"': "### User:",
            'stop """### User:"""': "### User:",
            'stop """### User:\n"""': "### User:\n",
            "stop ### User: ": "### User:",
            "stop </s>": "</s>",
        }
        for line, value in cases.items():
            assert parse_modelfile(f"FROM foo\nPARAMETER {line}\n").parameters["stop"] == [value]

    def test_quoted_numbers(self):
        mf = parse_modelfile('FROM x\nPARAMETER temperature "0.5"\nPARAMETER top_k """3"""\n')
        assert mf.parameters == {"temperature": 0.5, "top_k": 3}

    def test_quote_in_middle_of_bare_value(self):
        assert parse_modelfile('FROM x\nSYSTEM say "hi" please\n').system == 'say "hi" please'

    def test_instructions_after_multiline_value(self):
        mf = parse_modelfile('FROM x\nTEMPLATE """a\nb\n"""\nSYSTEM s\nPARAMETER top_k 2\n')
        assert mf.template == "a\nb\n" and mf.system == "s" and mf.parameters == {"top_k": 2}

    def test_quoted_from(self):
        assert parse_modelfile('FROM "/path with spaces/m.gguf"\n').from_ == "/path with spaces/m.gguf"


class TestErrors:
    def test_error_type_and_format(self):
        err = parse_error("FROM foo\nBADCOMMAND param1 value1\n")
        assert isinstance(err, ValueError)
        assert err.line == 2
        assert str(err).startswith("line 2: ")
        assert "BADCOMMAND" in str(err)

    def test_error_without_line(self):
        err = parse_error("PARAMETER top_k 1\n")
        assert err.line is None
        assert str(err) == "no FROM line"

    @pytest.mark.parametrize("text", ["", "\n\n  \n", "# just a comment\n# another\n"])
    def test_empty_file(self, text):
        err = parse_error(text)
        assert "no FROM line" in str(err) and err.line is None

    @pytest.mark.parametrize(
        "text,line,needle",
        [
            ("FROM foo\n\n\nBADCOMMAND param1 value1\n", 4, 'unknown instruction "BADCOMMAND"'),
            ("FROM foo\nFROM: bar\n", 2, 'unknown instruction "FROM:"'),
            ("FROM foo\nSYSTEM\"hi\"\n", 2, "unknown instruction"),
            ("FROM foo\n  42 x\n", 2, "unknown instruction"),
            ("# c\nFROM\n", 2, "FROM needs a value"),
            ("FROM   \n", 1, "FROM needs a value"),
            ('FROM ""\n', 1, "FROM needs a value"),
            ("FROM foo\nADAPTER\n", 2, "ADAPTER needs a value"),
            ('FROM foo\nADAPTER ""\n', 2, "ADAPTER needs a value"),
            ("FROM foo\nDRAFT  \n", 2, "DRAFT needs a value"),
            ("FROM foo\nRENDERER\n", 2, "RENDERER needs a value"),
            ("FROM foo\nPARSER\n", 2, "PARSER needs a value"),
            ("FROM foo\nREQUIRES\n", 2, "REQUIRES needs a value"),
            ("FROM foo\nPARAMETER\n", 2, "PARAMETER needs a name and a value"),
            ("FROM foo\nPARAMETER   \n", 2, "PARAMETER needs a name and a value"),
            ("FROM foo\nPARAMETER param1\n", 2, "PARAMETER param1 needs a value"),
            ("FROM foo\n\nPARAMETER top_k   ", 3, "PARAMETER top_k needs a value"),
            ("FROM foo\nPARAMETER param1 value1\n", 2, "unknown parameter 'param1'"),
            ("FROM foo\nPARAMETER numa true\n", 2, "unknown parameter 'numa'"),
            ("FROM foo\nPARAMETER Temperature 1\n", 2, "unknown parameter 'Temperature'"),
            ("FROM foo\nPARAMETER top_k 1.5\n", 2, "invalid int value '1.5' for parameter 'top_k'"),
            ("FROM foo\nPARAMETER temperature hot\n", 2, "invalid float value 'hot'"),
            ("FROM foo\nPARAMETER use_mmap yes\n", 2, "invalid bool value 'yes'"),
            ('FROM foo\nPARAMETER top_k ""\n', 2, "invalid int value ''"),
            ("FROM foo\nMESSAGE\n", 2, "MESSAGE needs a role and a message"),
            ("FROM foo\nMESSAGE badguy I'm a bad guy!\n", 2, 'invalid message role "badguy"'),
            ("FROM foo\nMESSAGE tool result\n", 2, 'message role must be one of "system", "user", or "assistant"'),
            ("FROM foo\nMESSAGE User hi\n", 2, 'invalid message role "User"'),
            ("FROM foo\nREQUIRES abc\n", 2, "requires must be a valid semver (e.g. 0.14.0)"),
            ("FROM foo\nREQUIRES 01.2.3\n", 2, "requires must be a valid semver"),
            ("FROM foo\nREQUIRES 1.2-rc1\n", 2, "requires must be a valid semver"),
        ],
    )
    def test_errors_with_line(self, text, line, needle):
        err = parse_error(text)
        assert err.line == line, str(err)
        assert needle in str(err)
        assert str(err).startswith(f"line {line}: ")

    def test_line_numbers_count_multiline_values(self):
        text = 'FROM x\nTEMPLATE """\n1\n2\n3\n"""\nSYSTEM "a\nb"\n# c\nPARAMETER top_k x\n'
        assert parse_error(text).line == 10

    @pytest.mark.parametrize(
        "text,line,quote",
        [
            ('FROM foo\nSYSTEM """This is a multiline system.""\n', 2, '"""'),
            ('FROM foo\n\nSYSTEM "\n\t\t\t', 3, '"'),
            ('FROM foo\nTEMPLATE """\n{{ .Prompt }}\nmore\n\n', 2, '"""'),
            ('FROM foo\nSYSTEM """\n', 2, '"""'),
            ('FROM foo\nMESSAGE user "unterminated\nPARAMETER top_k 1\n', 2, '"'),
            ('FROM foo\nSYSTEM """abc""" trailing\nSYSTEM x\n', 2, '"""'),
        ],
    )
    def test_unterminated_quote_reports_opening_line(self, text, line, quote):
        err = parse_error(text)
        assert err.line == line
        assert "never closed" in str(err) and quote in str(err)

    def test_unterminated_quote_swallows_until_a_line_closes_it(self):
        # Ollama's rule: a quoted value ends at the first line ending with its quote
        mf = parse_modelfile('FROM foo\nSYSTEM "hello\nPARAMETER stop "x"\n')
        assert mf.system == 'hello\nPARAMETER stop "x'
        assert mf.parameters == {}

    def test_first_error_wins(self):
        assert parse_error("FROM x\nPARAMETER top_k a\nBOGUS\n").line == 2


# ------------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize("path", TEMPLATE_FILES, ids=lambda p: p.stem)
class TestRealTemplates:
    def test_parse_triple_quoted(self, path):
        tmpl = read_template(path)
        mf = parse_modelfile(f'FROM base\nTEMPLATE """{tmpl}"""\nPARAMETER top_k 1\n')
        assert mf.template == tmpl
        assert mf.parameters == {"top_k": 1}

    def test_round_trip(self, path):
        params = template_params(path)
        mf = Modelfile(from_="base", template=read_template(path), parameters=params, system='Say "hi".')
        text = format_modelfile(mf)
        back = parse_modelfile(text)
        assert back == mf
        assert back.parameters.get("stop") == params.get("stop")
        assert format_modelfile(back) == text


def test_template_files_present():
    assert len(TEMPLATE_FILES) >= 10


def test_llama3_show_modelfile_sample():
    text = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this one, replace the FROM line with:\n"
        "# FROM llama3.2:latest\n"
        "FROM /Users/x/.ollama/models/blobs/sha256-00e1317cbf74d901080d7100f57580ba8dd8de57203072dc6f668324ba545f29\n"
        'TEMPLATE """{{ if .System }}<|start_header_id|>system<|end_header_id|>\n'
        "\n"
        "{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        '{{ .Response }}<|eot_id|>"""\n'
        'PARAMETER stop "<|start_header_id|>"\n'
        'PARAMETER stop "<|end_header_id|>"\n'
        'PARAMETER stop "<|eot_id|>"\n'
        'PARAMETER stop "<|reserved_special_token"\n'
    )
    mf = parse_modelfile(text)
    assert mf.from_.endswith("sha256-00e1317cbf74d901080d7100f57580ba8dd8de57203072dc6f668324ba545f29")
    assert mf.template.startswith("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}")
    assert mf.template.endswith("{{ .Response }}<|eot_id|>")
    assert mf.parameters["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                     "<|reserved_special_token"]  # fmt: skip


def test_docs_api_show_sample():
    # the `modelfile` string of docs/api.md's /api/show example (no trailing newline)
    text = (
        '# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this one, replace the'
        " FROM line with:\n# FROM llava:latest\n\nFROM /Users/matt/.ollama/models/blobs/sha256:200765e12836"
        '40ffbd013184bf496e261032fa75b99498a9613be4e94d63ad52\nTEMPLATE """{{ .System }}\nUSER: {{ .Prompt }}'
        '\nASSISTANT: """\nPARAMETER num_ctx 4096\nPARAMETER stop "\u003c/s\u003e"\nPARAMETER stop "USER:"\n'
        'PARAMETER stop "ASSISTANT:"'
    )
    mf = parse_modelfile(text)
    assert mf.template == "{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT: "
    assert mf.parameters == {"num_ctx": 4096, "stop": ["</s>", "USER:", "ASSISTANT:"]}


# ------------------------------------------------------------------------------------------ writing


class TestFormat:
    def test_full_round_trip(self):
        mf = Modelfile(
            from_="llama3.2",
            parameters={"temperature": 0.7, "num_ctx": 8192, "use_mmap": True, "min_p": 1e-05,
                        "stop": ["<|eot_id|>", " spaced ", '"quoted"', "\n"]},  # fmt: skip
            template="{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT: ",
            system="  leading and trailing  ",
            adapters=["./a.gguf", "/b dir/b.gguf"],
            license=["MIT", 'Line one\n"Oh look, a quote!"\n'],
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": ""},
                {"role": "assistant", "content": 'He said "no".\nThen left.'},
            ],
            requires="0.14.0",
            extra_from=["/blobs/sha256-proj"],
            draft="./draft.gguf",
            renderer="qwen3-coder",
            parser="qwen3-coder",
        )
        text = format_modelfile(mf)
        assert parse_modelfile(text) == mf

    def test_simple_values_are_bare(self):
        mf = Modelfile(from_="llama3", parameters={"temperature": 0.5, "stop": ["</s>"]}, system="Be nice.",
                       messages=[{"role": "user", "content": "Is Toronto in Canada?"}])  # fmt: skip
        assert format_modelfile(mf) == (
            "FROM llama3\nSYSTEM Be nice.\nPARAMETER temperature 0.5\nPARAMETER stop </s>\n"
            "MESSAGE user Is Toronto in Canada?\n"
        )

    def test_quoting_forms(self):
        def line(value):
            return format_modelfile(Modelfile(from_="x", system=value)).splitlines()[1:]

        assert line("plain") == ["SYSTEM plain"]
        assert line(" padded ") == ['SYSTEM " padded "']
        assert line("") == ['SYSTEM ""']
        assert line('"starts with a quote') == ['SYSTEM """"starts with a quote"""']
        assert line("two\nlines") == ['SYSTEM """two', 'lines"""']
        assert line('say "hi"') == ['SYSTEM say "hi"']

    def test_lines_ending_with_quotes(self):
        for value in ['He said "no"\nok', 'a ""\n""', '"\n"', '""\nx', 'end """', '"""']:
            mf = Modelfile(from_="m", system=value)
            assert parse_modelfile(format_modelfile(mf)) == mf, repr(value)

    @pytest.mark.parametrize("value", ['x = """\ndoc', 'a"""  \nb', '"""\n"""\n'])
    def test_unwritable_value(self, value):
        # a line inside the value ending with """ would close any quote: Ollama's format cannot hold it
        with pytest.raises(ModelfileError, match='SYSTEM cannot be written in a Modelfile'):
            format_modelfile(Modelfile(from_="m", system=value))

    def test_header_as_comments(self):
        text = format_modelfile(
            Modelfile(from_="/blobs/sha256-abc"),
            header='Modelfile generated by "lm show"\nTo build a new Modelfile based on this, replace FROM with:\nFROM smollm2:135m',
        )
        assert text == (
            '# Modelfile generated by "lm show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            "# FROM smollm2:135m\n\nFROM /blobs/sha256-abc\n"
        )
        assert parse_modelfile(text) == Modelfile(from_="/blobs/sha256-abc")

    def test_header_lines_already_comments_and_blank(self):
        text = format_modelfile(Modelfile(from_="x"), header="# one\n\ntwo")
        assert text.startswith("# one\n#\n# two\n\nFROM x\n")

    def test_no_from(self):
        with pytest.raises(ModelfileError, match="no FROM line"):
            format_modelfile(Modelfile(system="x"))

    def test_bad_parameter_name(self):
        with pytest.raises(ModelfileError):
            format_modelfile(Modelfile(from_="x", parameters={"bad name": 1}))

    def test_crlf_and_cr_values_round_trip(self):
        for value in ["a\r\nb", "a\rb", "\r\n", "line\r\n\r\n", '"\r\n"']:
            mf = Modelfile(from_="x", system=value, parameters={"stop": [value]})
            assert parse_modelfile(format_modelfile(mf)) == mf, repr(value)

    def test_random_values_round_trip(self):
        rng = random.Random(1234)
        pieces = ['"', '"""', "\n", "\r\n", " ", "\t", "a", "#", "é", "\\", "\u00a0", "{{ .Prompt }}"]
        written = 0
        for _ in range(1500):
            value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
            mf = Modelfile(from_=value.strip() or "base", system=value, license=[value],
                           parameters={"stop": [value, "x"]}, messages=[{"role": "user", "content": value}])  # fmt: skip
            try:
                text = format_modelfile(mf, header=value)
            except ModelfileError as e:
                assert "cannot be written" in str(e)
                continue
            assert parse_modelfile(text) == mf, repr(value)
            written += 1
        assert written > 1200
