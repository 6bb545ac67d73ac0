"""Go text/template semantics of modelfiles.gotemplate.

The expected outputs and error messages were produced by Go's own text/template (Go 1.27, with
Ollama's options: missingkey=zero and its json/currentDate/... functions) on the same
templates and data, so these tests pin the interpreter to Go's behaviour byte for byte.  The
data is JSON as Go decodes it into interface{} (numbers are float64).
"""

import json

import pytest

from modelfiles.gotemplate import (GoFunc, GoStruct, Template, TemplateError, from_json, sprint, sprintf)
from modelfiles.prompt import OLLAMA_FUNCS, parse_template

DATA = from_json(json.loads('{"Name": "World", "Empty": "", "Zero": 0, "Items": ["a", "b", "c"], "None": [], "Map": {"b": 2, "a": 1, "c": 3}, "Nested": {"Inner": {"Value": "deep"}}, "Html": "<b>\\"Tom\\" & \'Jerry\'</b>", "Num": 3, "F": 2.5, "Nil": null, "T": true}'))

CASES = [
    ('trim', 'a  {{- .Name -}}  b\n{{ .Name }}  \n  {{- .Name }}', ('out', 'aWorldb\nWorldWorld')),
    ('trim_newlines', 'x\n\n{{- /* gone */ -}}\n\ny', ('out', 'xy')),
    ('no_trim_without_space', '{{-3}}', ('out', '-3')),
    ('comment', 'a{{/* a\nmultiline comment */}}b', ('out', 'ab')),
    ('range_list', '{{ range .Items }}[{{ . }}]{{ end }}', ('out', '[a][b][c]')),
    ('range_index', '{{ range $i, $v := .Items }}{{ $i }}={{ $v }} {{ end }}', ('out', '0=a 1=b 2=c ')),
    ('range_else', '{{ range .None }}x{{ else }}empty{{ end }}', ('out', 'empty')),
    ('range_nil_else', '{{ range .Nil }}x{{ else }}nil{{ end }}', ('out', 'nil')),
    ('range_map_sorted', '{{ range $k, $v := .Map }}{{ $k }}:{{ $v }} {{ end }}', ('out', 'a:1 b:2 c:3 ')),
    ('range_int', '{{ range 3 }}{{ . }}{{ end }}', ('out', '012')),
    ('range_break_continue', '{{ range $i, $v := .Items }}{{ if eq $i 1 }}{{ continue }}{{ end }}{{ $v }}{{ if eq $v "c" }}{{ break }}{{ end }}{{ end }}', ('out', 'ac')),
    ('range_dollar', '{{ range .Items }}{{ $.Name }}{{ end }}', ('out', 'WorldWorldWorld')),
    ('var_scope', '{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ end }}{{ $x }}', ('out', '2')),
    ('var_range_assign', '{{ $last := "" }}{{ range .Items }}{{ $last = . }}{{ end }}{{ $last }}', ('out', 'c')),
    ('var_undefined_after_end', '{{ if true }}{{ $y := 3 }}{{ end }}{{ $y }}', ('err', 'template: :1: undefined variable "$y"')),
    ('if_else_chain', '{{ if .Empty }}e{{ else if .Zero }}z{{ else if .Name }}n{{ else }}none{{ end }}', ('out', 'n')),
    ('with_else_with', '{{ with .Empty }}e{{ else with .Name }}<{{ . }}>{{ end }}', ('out', '<World>')),
    ('truthiness', '{{ if .None }}1{{ end }}{{ if .Map }}2{{ end }}{{ if .Zero }}3{{ end }}{{ if .F }}4{{ end }}{{ if .Nil }}5{{ end }}{{ if .Missing }}6{{ end }}{{ if .Nested }}7{{ end }}', ('out', '247')),
    ('eq_multi', '{{ eq 3 1 2 3 }} {{ eq .Name "x" "World" }} {{ eq .Name "x" }} {{ eq .F 1.0 2.5 }}', ('out', 'true true false true')),
    ('eq_json_number_vs_int', '{{ eq .Num 3 }}', ('err', 'template: :1:3: executing "" at <eq .Num 3>: error calling eq: incompatible types for comparison: float64 and int')),
    ('cmp', '{{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} {{ ge 1.5 2.5 }}', ('out', 'true true true true false')),
    ('eq_missing', '{{ eq .Missing "x" }}', ('out', 'false')),
    ('eq_incompatible', '{{ eq .Num "3" }}', ('err', 'template: :1:3: executing "" at <eq .Num "3">: error calling eq: incompatible types for comparison: float64 and string')),
    ('lt_incompatible', '{{ lt 1 2.5 }}', ('err', 'template: :1:3: executing "" at <lt 1 2.5>: error calling lt: incompatible types for comparison: int and float64')),
    ('eq_no_args', '{{ eq 1 }}', ('err', 'template: :1:3: executing "" at <eq 1>: error calling eq: missing argument for comparison')),
    ('and_or_operands', '{{ and 1 0 2 }}|{{ and 1 2 }}|{{ or 0 "" }}|{{ or 0 "x" 1 }}|{{ not .Empty }}', ('out', '0|2||x|true')),
    ('or_short_circuit', '{{ or .Name .Missing.Boom }}', ('out', 'World')),
    ('and_short_circuit', '{{ and .Empty .Missing.Boom }}', ('out', '')),
    ('len_index_slice', '{{ len .Items }} {{ len .Name }} {{ index .Items 1 }} {{ index .Map "b" }} {{ slice .Items 1 }} {{ slice .Name 1 3 }}', ('out', '3 5 b 2 [b c] or')),
    ('index_out_of_range', '{{ index .Items 3 }}', ('err', 'template: :1:3: executing "" at <index .Items 3>: error calling index: reflect: slice index out of range')),
    ('index_bad_type', '{{ index .Items "a" }}', ('err', 'template: :1:3: executing "" at <index .Items "a">: error calling index: cannot index slice/array with type string')),
    ('slice_bad', '{{ slice .Items 2 1 }}', ('err', 'template: :1:3: executing "" at <slice .Items 2 1>: error calling slice: invalid slice index: 2 > 1')),
    ('len_bad', '{{ len 3 }}', ('err', 'template: :1:3: executing "" at <len 3>: error calling len: len of type int')),
    ('printf', '{{ printf "%s has %d items, %.2f %q %v %t %5s|%-5s|" .Name 3 .F .Name .Items true "ab" "cd" }}', ('out', 'World has 3 items, 2.50 "World" [a b c] true    ab|cd   |')),
    ('printf_errors', '{{ printf "%d %s" "x" }}|{{ printf "%d" 1 2 }}', ('out', '%!d(string=x) %!s(MISSING)|1%!(EXTRA int=2)')),
    ('print_spacing', '{{ print 1 2 "a" "b" 3 }}|{{ println "a" 1 }}|{{ print .Nil }}', ('out', '1 2ab3|a 1\n|<nil>')),
    ('float_print', '{{ 1.5 }} {{ 1e6 }} {{ 100000.0 }} {{ 0.00001 }} {{ print 3.0 }}', ('out', '1.5 1e+06 100000 1e-05 3')),
    ('pipeline', '{{ .Name | printf "<%s>" }} {{ .Items | len | printf "%d!" }}', ('out', '<World> 3!')),
    ('html_js_url', '{{ html .Html }}|{{ js .Html }}|{{ urlquery "a b&c=d/é" }}|{{ .Html | html }}', ('out', '&lt;b&gt;&#34;Tom&#34; &amp; &#39;Jerry&#39;&lt;/b&gt;|\\u003Cb\\u003E\\"Tom\\" \\u0026 \\\'Jerry\\\'\\u003C/b\\u003E|a+b%26c%3Dd%2F%C3%A9|&lt;b&gt;&#34;Tom&#34; &amp; &#39;Jerry&#39;&lt;/b&gt;')),
    ('html_nil', '{{ html .Missing }}', ('out', '&lt;no value&gt;')),
    ('missing_fields', '{{ .Missing }}|{{ .Nested.Missing }}|{{ .Nested.Inner.Value }}', ('out', '<no value>|<no value>|deep')),
    ('missing_chain_error', '{{ .Missing.Field }}', ('err', 'template: :1:11: executing "" at <.Missing.Field>: nil pointer evaluating interface {}.Field')),
    ('json', '{{ json .Map }} {{ json .Items }} {{ json .Html }} {{ json .Nil }} {{ json .F }}', ('out', '{"a":1,"b":2,"c":3} ["a","b","c"] "\\u003cb\\u003e\\"Tom\\" \\u0026 \'Jerry\'\\u003c/b\\u003e" null 2.5')),
    ('define_template', '{{ define "item" }}<{{ . }}>{{ end }}{{ range .Items }}{{ template "item" . }}{{ end }}', ('out', '<a><b><c>')),
    ('block', '{{ block "greet" .Name }}Hello, {{ . }}!{{ end }}', ('out', 'Hello, World!')),
    ('template_scope', '{{ define "t" }}{{ $.Inner.Value }}{{ end }}{{ template "t" .Nested }}', ('out', 'deep')),
    ('template_undefined', '{{ template "nope" . }}', ('err', 'template: :1:12: executing "" at <{{template "nope" .}}>: template "nope" not defined')),
    ('err_unexpected_brace', 'line one\nline two\n{{ .Name }\n}}', ('err', 'template: :3: unexpected "}" in operand')),
    ('err_unclosed_action', '{{ .Name ', ('err', 'template: :1: unclosed action')),
    ('err_missing_end', '{{ if .Name }}x', ('err', 'template: :1: unexpected EOF')),
    ('err_unexpected_end', 'a\n{{ end }}', ('err', 'template: :2: unexpected {{end}}')),
    ('err_undefined_func', '{{ frobnicate 1 }}', ('err', 'template: :1: function "frobnicate" not defined')),
    ('err_undefined_var', '\n\n{{ $nope }}', ('err', 'template: :3: undefined variable "$nope"')),
    ('err_break_outside', '{{ break }}', ('err', 'template: :1: {{break}} outside {{range}}')),
    ('err_unterminated_string', '{{ "abc }}', ('err', 'template: :1: unterminated quoted string')),
    ('err_bad_number', '{{ 3x }}', ('err', 'template: :1: bad number syntax: "3x"')),
    ('err_multiple_define', '{{ define "a" }}1{{ end }}{{ define "a" }}2{{ end }}', ('err', 'template: :1: template: multiple definition of template "a"')),
    ('err_field_on_string', '{{ .Name.Foo }}', ('err', 'template: :1:8: executing "" at <.Name.Foo>: can\'t evaluate field Foo in type interface {}')),
    ('err_wrong_args', '{{ len 1 2 }}', ('err', 'template: :1:3: executing "" at <len>: wrong number of args for len: want 1 got 2')),
    ('err_not_a_function', '{{ .Name 1 }}', ('err', 'template: :1:3: executing "" at <.Name>: Name is not a method but has arguments')),
    ('err_printf_type', '{{ printf 3 }}', ('err', 'template: :1:10: executing "" at <3>: expected string; found 3')),
    ('range_two_vars_over_int', '{{ range $i, $v := 3 }}{{ end }}', ('err', 'template: :1:19: executing "" at <3>: can\'t use 3 to iterate over more than one variable')),
    ('nil_command', '{{ nil }}', ('err', 'template: :1:3: executing "" at <nil>: nil is not a command')),
    ('chain_paren', '{{ (index .Nested "Inner").Value }}', ('out', 'deep')),
    ('with_var', '{{ with $v := .Nested.Inner }}{{ $v.Value }}{{ end }}', ('out', 'deep')),
    ('printf_float_verbs', '{{ printf "%e|%g|%08.3f|%+d|%x|%X|%o|%c|%U" 1234.5678 0.000012 -3.14159 5 255 255 8 65 9731 }}', ('out', '1.234568e+03|1.2e-05|-003.142|+5|ff|FF|10|A|U+2603')),
    ('printf_width_star', '{{ printf "%*d|%-*d|%.*f" 4 7 4 7 1 2.25 }}', ('out', '   7|7   |2.2')),
    ('print_map_struct', '{{ .Map }} {{ .Nested }} {{ .None }} {{ printf "%v %+v" .Items .Map }}', ('out', 'map[a:1 b:2 c:3] map[Inner:map[Value:deep]] [] [a b c] map[a:1 b:2 c:3]')),
]


def run(text, data=DATA, **kw):
    kw.setdefault("funcs", OLLAMA_FUNCS)
    kw.setdefault("missingkey", "zero")
    return Template(text, **kw).execute(data)


@pytest.mark.parametrize("name,text,expected", CASES, ids=[c[0] for c in CASES])
def test_matches_go(name, text, expected):
    kind, value = expected
    if kind == "out":
        assert run(text) == value
    else:
        with pytest.raises(TemplateError) as e:
            run(text)
        assert str(e.value) == value


def test_go_ints_compare_with_int_constants():
    # Python ints are Go ints: eq with several arguments is true if any matches
    assert run("{{ eq .N 1 2 3 }} {{ eq .N 4 5 }} {{ lt .N 4 }}", {"N": 3}) == "true false true"


def test_missingkey_default_prints_no_value_and_allows_chains():
    t = Template("{{ .Missing }}|{{ .Missing.Field }}")
    assert t.execute({}) == "<no value>|<no value>"


def test_and_or_return_operands_not_booleans():
    assert run("{{ or .A .B }}|{{ and .A .B }}", {"A": "", "B": "x"}) == "x|"
    assert run("{{ if or .A .B }}yes{{ end }}", {"A": 0, "B": []}) == ""


def test_variables_persist_to_end_of_block_only():
    assert run("{{ range .L }}{{ $x := . }}{{ $x }}{{ end }}", {"L": [1, 2]}) == "12"
    with pytest.raises(TemplateError, match='undefined variable "\\$x"'):
        run("{{ range .L }}{{ $x := . }}{{ end }}{{ $x }}", {"L": [1]})


def test_range_else_and_nested_break():
    text = "{{ range .L }}{{ range $.L }}{{ break }}{{ end }}{{ . }}{{ else }}none{{ end }}"
    assert run(text, {"L": [1, 2]}) == "12"
    assert run(text, {"L": []}) == "none"


def test_methods_and_struct_fields():
    point = GoStruct("main.Point", {"X": 1, "Y": 2},
                     methods={"Sum": lambda s: GoFunc("Sum", lambda: s.fields["X"] + s.fields["Y"], []),
                              "Add": lambda s: GoFunc("Add", lambda n: s.fields["X"] + n, ["int"])})
    assert run("{{ .X }},{{ .Y }} {{ .Sum }} {{ .Add 10 }} {{ . }}", point) == "1,2 3 11 {1 2}"
    with pytest.raises(TemplateError, match="can't evaluate field Z in type main.Point"):
        run("{{ .Z }}", point)
    with pytest.raises(TemplateError, match="wrong number of args for Add: want 1 got 0"):
        run("{{ .Add }}", point)


def test_parse_error_names_the_line():
    with pytest.raises(TemplateError) as e:
        parse_template("{{ range .Messages }}\n{{ .Content }}\n{{ if }}\n{{ end }}{{ end }}")
    assert str(e.value) == "template: :3: missing value for if"


def test_execution_error_names_line_and_column():
    with pytest.raises(TemplateError) as e:
        run("a\nbc {{ index .L 9 }}", {"L": [1]})
    assert str(e.value) == ('template: :2:6: executing "" at <index .L 9>: '
                            "error calling index: index out of range: 9")


def test_fmt_helpers():
    assert sprint(["a", 1, 2, "b"]) == "a1 2b"
    assert sprintf("%5.1f|%-4d|%q", [3.14159, 7, "x"]) == "  3.1|7   |\"x\""
    assert sprintf("%v %v", [1e21, 123456789.0]) == "1e+21 1.23456789e+08"


def test_whitespace_trimming_needs_a_space():
    assert run("x {{- 3 -}} y|x {{-3}} y") == "x3y|x -3 y"
