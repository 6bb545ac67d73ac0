import pytest

from registry import InvalidDigest, InvalidName, ModelName, blob_filename, normalize_digest

HEX = "a" * 64


@pytest.mark.parametrize(
    "text, parts",
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
        ("me/m:t", ("registry.ollama.ai", "me", "m", "t")),
        ("localhost:5000/me/m:t", ("localhost:5000", "me", "m", "t")),
        ("localhost:5000/me/m", ("localhost:5000", "me", "m", "latest")),
        ("hf.co/user/repo:Q4_K_M", ("hf.co", "user", "repo", "Q4_K_M")),
        ("dolphin-mistral:7b-v2.6-dpo-laser-q6_K", ("registry.ollama.ai", "library", "dolphin-mistral", "7b-v2.6-dpo-laser-q6_K")),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
        ("_why/_the/_lucky:_stiff", ("_why", "_the", "_lucky", "_stiff")),
        ("host:https/namespace/model:tag", ("host:https", "namespace", "model", "tag")),
        ("https://host:5000/ns/model:tag", ("host:5000", "ns", "model", "tag")),
        ("MixedCase/Model:TAG", ("registry.ollama.ai", "MixedCase", "Model", "TAG")),
        ("3" * 350 + "/" + "8" * 80 + "/" + "8" * 80 + ":" + "8" * 80, ("3" * 350, "8" * 80, "8" * 80, "8" * 80)),
    ],
)
def test_parse_valid(text, parts):
    assert ModelName.parse(text).parts == parts


@pytest.mark.parametrize(
    "text",
    [
        "", "^", ":", "m:", ":t", "/m", "n/", "//", "a//b", "//mm", "hh//", "h/n/m/x", "m@d",
        f"m@sha256:{HEX}", f"m:t@sha256:{HEX}", "@", "..", "../m", "m/..", "h/../m:t", "./m", "m/.",
        "-hh/nn/mm:tt", "hh/-nn/mm:tt", "hh/nn/-mm:tt", "hh/nn/mm:-tt", ".m", "m:.t",
        "host/name:space/model:tag", "ns.x/model", "a b", "m:t t", "mödel", "m\n", "m/t\\x",
        "m" * 81, "m:" + "t" * 81, "h" * 351 + "/n/m", "n" * 81 + "/m", "http:///ns/m",
    ],
)
def test_parse_invalid(text):
    with pytest.raises(InvalidName) as err:
        ModelName.parse(text)
    assert str(err.value) == f"invalid model name: {text!r}"


def test_str_and_display():
    assert str(ModelName.parse("smollm2:135m")) == "registry.ollama.ai/library/smollm2:135m"
    assert ModelName.parse("smollm2:135m").display == "smollm2:135m"
    assert ModelName.parse("llama3").display == "llama3:latest"
    assert ModelName.parse("me/model:tag").display == "me/model:tag"
    assert ModelName.parse("host/library/model:tag").display == "host/library/model:tag"
    assert ModelName.parse("Registry.Ollama.AI/Library/m:t").display == "m:t"
    assert ModelName.parse("localhost:5000/me/m").display == "localhost:5000/me/m:latest"


def test_round_trip_through_str():
    for text in ("llama3", "me/m:t", "localhost:5000/me/m:t", "hf.co/user/repo:Q4_K_M"):
        name = ModelName.parse(text)
        assert ModelName.parse(str(name)) == name


def test_matches_ignores_case_and_eq_does_not():
    a, b = ModelName.parse("Llama3:8B"), ModelName.parse("llama3:8b")
    assert a.matches(b) and b.matches(a)
    assert a != b and a.model == "Llama3"
    assert not a.matches(ModelName.parse("llama3:8b-q4"))


def test_from_parts_validates():
    assert ModelName.from_parts("h", "n", "m", "t") == ModelName.parse("h/n/m:t")
    for bad in (("..", "n", "m", "t"), ("h", ".", "m", "t"), ("h", "n", "m", ""), ("h", "n/x", "m", "t")):
        with pytest.raises(InvalidName):
            ModelName.from_parts(*bad)


def test_name_is_hashable_and_frozen():
    name = ModelName.parse("m")
    assert {name: 1}[ModelName.parse("m:latest")] == 1
    with pytest.raises(Exception):
        name.tag = "x"


# ---- digests


def test_normalize_digest():
    assert normalize_digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert normalize_digest(f"sha256-{HEX}") == f"sha256:{HEX}"
    assert blob_filename(f"sha256:{HEX}") == f"sha256-{HEX}"
    assert blob_filename(f"sha256-{HEX}") == f"sha256-{HEX}"


@pytest.mark.parametrize(
    "text",
    [
        "", "sha256:", f"sha256:{HEX[:-1]}", f"sha256:{HEX}0", f"sha256:{HEX.upper()}", f"SHA256:{HEX}",
        f"sha512:{HEX}", HEX, f"sha256:{HEX}\n", f"sha256:{HEX}/", f"sha256:{HEX[:-2]}..",
        f"../sha256-{HEX}", f"sha256-{HEX}/../../etc/passwd", "sha256:../../../../etc/passwd",
        f"/abs/sha256-{HEX}", f"sha256:{'g' * 64}", None, 5, f" sha256:{HEX}",
    ],
)
def test_invalid_digests_rejected(text):
    with pytest.raises(InvalidDigest):
        normalize_digest(text)
    with pytest.raises(InvalidDigest):
        blob_filename(text)
