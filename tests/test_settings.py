"""runner/settings.py: one table of settings, what the daemon's Settings, README and `lm serve --help` are
made from (pure logic: the environment is monkeypatched, nothing is started)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner import settings as s
from runner.settings import BY_NAME, TABLE, TRACE, Settings, parse_debug_level

REPO = Path(__file__).resolve().parents[1]

# Names that look like settings in the source but are none: constants and a phrase of a message.
NOT_SETTINGS = {"OLLAMA_FUNCS", "OLLAMA_COMPAT_VERSION", "LM_MAX_"}


@pytest.fixture
def clean_env(monkeypatch):
    """No LM_/OLLAMA_ variable of the table set, whatever the shell running the tests has."""
    for entry in TABLE:
        for prefix in ("LM_", "OLLAMA_"):
            monkeypatch.delenv(prefix + entry.name, raising=False)
    return monkeypatch


def test_readme_tables_are_the_generated_ones():
    readme = (REPO / "README.md").read_text()
    assert s.readme_block(readme) == s.markdown(), \
        "README's settings are stale: python -m runner.settings --update-readme README.md"


def test_markdown_lists_every_entry_once_under_its_section():
    text = s.markdown()
    for entry in TABLE:
        assert text.count(f"| {entry.variable} |") == 1, entry.name
    assert [line[4:] for line in text.splitlines() if line.startswith("### ")] == s.sections()


def test_update_readme_rewrites_only_the_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"# x\n\nbefore\n{s.README_BEGIN}\n| stale |\n{s.README_END}\nafter\n")
    assert s.main(["--update-readme", str(path)]) == 0
    text = path.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{s.README_END}\nafter\n")
    assert "stale" not in text and s.readme_block(text) == s.markdown()


def test_serve_help_lists_the_settings_from_the_table():
    out = subprocess.run([sys.executable, "-m", "runner.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin",
                                                     "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    for entry in TABLE:
        assert f"{s._plain(entry.variable)} ({s._plain(entry.default_text())}): {s._plain(entry.description)}" \
            in out.stdout, entry.name


def test_every_settings_field_but_host_and_derived_ones_comes_from_one_entry():
    attrs = [e.attr for e in TABLE if e.attr]
    assert len(attrs) == len(set(attrs))
    fields = set(Settings.__dataclass_fields__)
    assert set(attrs) <= fields
    assert fields - set(attrs) == {"host", "port", "debug"}  # LM_HOST's parts; debug from LM_DEBUG


def test_defaults_when_nothing_is_set(clean_env):
    st = Settings.from_env()
    for entry in TABLE:
        if entry.attr and entry.attr != "models_dir":
            assert getattr(st, entry.attr) == entry.default, entry.name
    assert (st.host, st.port) == ("127.0.0.1", 11434)
    assert st.models_dir.name == "models" and not st.debug and st.log_level == logging.INFO
    assert (st.keep_alive, st.load_timeout, st.shutdown_timeout, st.prune_grace) == (300, 300, 10, 3600)


def test_lm_wins_over_ollama_and_empty_counts_as_unset(clean_env):
    clean_env.setenv("OLLAMA_CONTEXT_LENGTH", "1024")
    assert Settings.from_env().context_length == 1024
    clean_env.setenv("LM_CONTEXT_LENGTH", "2048")
    assert Settings.from_env().context_length == 2048
    clean_env.setenv("LM_CONTEXT_LENGTH", "")
    assert Settings.from_env().context_length == 1024


def test_values_are_parsed_by_their_entry(clean_env):
    for name, value in {"HOST": "0.0.0.0:8080", "KEEP_ALIVE": "1h30m", "MAX_BODY": "1MiB", "API_KEYS": " a, 'b' ,,",
                        "FLASH_ATTENTION": "off", "REPLICAS": "auto", "NOPRUNE": "yes", "LOG_FORMAT": " JSON",
                        "MODELS": "~/m", "REGISTRY_AUTH": "h=u:p", "REGISTRY_CONFIG": "~/c.json",
                        "MAX_TRANSFER_STREAMS": "3", "BUNDLED_CACHE": "/b"}.items():
        clean_env.setenv("LM_" + name, value)
    st = Settings.from_env()
    assert (st.host, st.port, st.keep_alive, st.max_body) == ("0.0.0.0", 8080, 5400.0, 1 << 20)
    assert st.api_keys == ("a", "b") and st.flash_attention is False and st.replicas == "auto" and st.noprune
    assert st.log_format == "json" and st.models_dir == Path("~/m").expanduser()
    assert (st.registry_auth, st.registry_config, st.max_transfer_streams) == ("h=u:p", Path("~/c.json").expanduser(), 3)
    assert st.bundled_cache == Path("/b")


@pytest.mark.parametrize("name, value, message", [
    ("NUM_PARALLEL", "four", "Error: LM_NUM_PARALLEL must be an integer, got 'four'"),
    ("FLASH_ATTENTION", "maybe", "Error: LM_FLASH_ATTENTION must be true or false (1/0, on/off), got 'maybe'"),
    ("MAX_BODY", "lots", "Error: LM_MAX_BODY must be a size in bytes (e.g. 32MiB), got 'lots'"),
    ("KEEP_ALIVE", "soon", "Error: LM_KEEP_ALIVE must be a duration (e.g. 10s, 5m), got 'soon'"),
    ("REPLICAS", "0", "Error: LM_REPLICAS must be auto or a positive integer, got '0'"),
    ("RPC_WORKERS", "10.0.0.2", "Error: LM_RPC_WORKERS: invalid RPC worker address '10.0.0.2'"),
    ("HOST", "h:port", "Error: LM_HOST must be host, host:port or http(s)://host:port, got 'h:port'"),
    ("KV_CACHE_TYPE", "q3_k", "Error: LM_KV_CACHE_TYPE must be one of f16, q8_0, q4_0, got 'q3_k'"),
])
def test_a_bad_value_stops_with_its_message(clean_env, name, value, message):
    clean_env.setenv("LM_" + name, value)
    with pytest.raises(SystemExit) as exc:
        Settings.from_env()
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("text, level", [
    ("0", logging.INFO), ("false", logging.INFO), ("F", logging.INFO), ("junk", logging.INFO),
    ("1", logging.DEBUG), ("true", logging.DEBUG), ("on", logging.DEBUG), ("2", TRACE), ("3", TRACE),
    ("-1", logging.WARNING), ("-2", logging.ERROR),
])
def test_debug_is_a_level_as_in_ollama(text, level):
    # Ollama's envconfig.LogLevel: a true bool is DEBUG, else integer n is slog level -4n, else INFO
    assert parse_debug_level(text) == level


def test_debug_level_reaches_settings(clean_env):
    clean_env.setenv("OLLAMA_DEBUG", "2")
    st = Settings.from_env()
    assert st.log_level == TRACE and st.debug
    clean_env.setenv("LM_DEBUG", "-1")
    st = Settings.from_env()
    assert st.log_level == logging.WARNING and not st.debug
    # code that builds Settings by hand with debug=True (as before LM_DEBUG was a level) logs at DEBUG
    assert Settings(**{**vars(Settings.from_env()), "debug": True, "log_level": logging.INFO}).log_level == logging.DEBUG


def test_settings_read_elsewhere_come_from_the_table(clean_env):
    assert s.setting("NOHISTORY") is False and s.setting("API_KEY") is None
    clean_env.setenv("OLLAMA_NOHISTORY", "1")
    clean_env.setenv("LM_API_KEY", "k")
    assert s.setting("NOHISTORY") is True and s.setting("API_KEY") == "k"
    clean_env.setenv("LM_HOST", "https://example.org")
    assert s.client_base_url() == "https://example.org:443"


def test_the_engines_own_defaults_match_the_table():
    from runner.engine.protocol import LaunchConfig
    from runner.engine.speculative import DEFAULT_MAX_SEQUENCES

    assert BY_NAME["SPEC_MAX_SEQUENCES"].default == DEFAULT_MAX_SEQUENCES == LaunchConfig("m").spec_max_sequences
    assert BY_NAME["ENGINE_PROFILE"].default == 0 == LaunchConfig("m").profile_every


def test_engine_profile_reads_as_the_engine_read_it():
    parse = BY_NAME["ENGINE_PROFILE"].parse
    assert [parse(t) for t in ("0", "1", "yes", "50", "7")] == [0, 200, 200, 50, 7]


def _source_files():
    for folder in ("runner", "registry"):
        yield from (REPO / folder).rglob("*.py")


def test_every_setting_named_in_the_source_is_in_the_table():
    documented = {f"LM_{name}" for name in BY_NAME} | {f"OLLAMA_{name}" for name in BY_NAME}
    missing = {}
    for path in _source_files():
        text = path.read_text()
        names = set(re.findall(r"\b(?:LM|OLLAMA)_[A-Z0-9_]+", text))
        # a setting read by its bare name: setting("X"), env("X")
        names |= {f"LM_{n}" for n in re.findall(r"\b(?:setting|env)\(\s*[\"']([A-Z0-9_]+)[\"']", text)}
        for name in names - documented - NOT_SETTINGS:
            missing.setdefault(name, path.relative_to(REPO))
    assert not missing, f"settings missing from runner/settings.py's TABLE (or NOT_SETTINGS): {missing}"


def test_registry_reads_no_environment():
    # registry/ never imports runner/; its settings are TABLE entries whose values the daemon passes in
    for path in (REPO / "registry").rglob("*.py"):
        text = path.read_text()
        reads = re.findall(r"os\.environ\.get\(\s*[\"']([A-Z_]+)|os\.getenv\(\s*[\"']([A-Z_]+)", text)
        names = {a or b for a, b in reads}
        # huggingface_hub's own variables (documented in TABLE), the XDG fallback of platformdirs, and the
        # PYTHONPATH the quantizer hands its subprocess
        assert names <= {"HF_ENDPOINT", "HF_TOKEN", "XDG_CACHE_HOME", "PYTHONPATH"}, (path, names)


def test_the_daemon_passes_the_registry_settings_in(clean_env, tmp_path):
    from aiohttp import web

    from registry.oci import Credential
    from runner.server import registry_api

    config = tmp_path / "config.json"
    config.write_text('{"auths": {"a.example": {"username": "fu", "password": "fp"}}}')
    clean_env.setenv("LM_REGISTRY_AUTH", "b.example=eu:ep")
    clean_env.setenv("LM_REGISTRY_CONFIG", str(config))
    clean_env.setenv("LM_MAX_TRANSFER_STREAMS", "3")
    app = web.Application()
    app["settings"] = Settings.from_env()
    registry_api.add_routes(app)
    transfers = app["transfers"]
    assert transfers.streams == 3
    assert transfers.credentials.load() == {"a.example": Credential("fu", "fp"), "b.example": Credential("eu", "ep")}
