"""What each package may import (docs/architecture.md): read from the source with `ast`, every import
statement, those inside functions included, so a layering slip fails here and not in a review.

- modelfiles/ and registry/ are libraries of their own: they never import runner/.
- runner/engine is the runner process: it imports nothing of the daemon's side (runner.daemon,
  runner.server, runner.cli, runner.model) nor its settings; what it is told comes in its launch
  config and requests. runner.ggml (ctypes onto ggml) is shared.
- runner/model (stored models, prompts, output parsing) knows nothing of HTTP, the CLI, the scheduler
  or the engine.
- runner/daemon (scheduler, runner client, placement) knows nothing of HTTP or the CLI, and of the
  engine only its protocol.
- runner/server (the HTTP routes) never imports the CLI, and of the engine only its protocol and the
  speculative options' bounds it validates.
- runner/ggml imports nothing of runner/ but itself.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package → prefixes it must not import (a module is matched with its submodules)
FORBIDDEN = {
    "modelfiles": ("runner",),
    "registry": ("runner",),
    "runner.engine": ("runner.daemon", "runner.server", "runner.cli", "runner.model", "runner.settings"),
    "runner.model": ("runner.server", "runner.cli", "runner.daemon", "runner.engine"),
    "runner.daemon": ("runner.server", "runner.cli", "runner.engine"),
    "runner.server": ("runner.cli", "runner.engine"),
    "runner.ggml": ("runner.daemon", "runner.server", "runner.cli", "runner.model", "runner.engine",
                    "runner.settings"),
}
# the engine's parts the daemon's side may use
ALLOWED = ("runner.engine.protocol", "runner.engine.speculative")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _sources():
    for top in ("modelfiles", "registry", "runner"):
        yield from sorted((ROOT / top).rglob("*.py"))


def _violations() -> list[str]:
    out = []
    for path in _sources():
        mod = _module_name(path)
        rules = [bad for pkg, bad in FORBIDDEN.items() if _under(mod, pkg)]
        for line, name in _imports(path):
            for bad in (b for rule in rules for b in rule):
                if _under(name, bad) and not any(_under(name, ok) or _under(ok, name) for ok in ALLOWED):
                    out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return sorted(set(out))


def test_each_package_imports_only_what_its_layer_may():
    assert _violations() == []


@pytest.mark.parametrize("source, name", [
    ("registry/x.py", "runner.settings"),
    ("runner/engine/x.py", "runner.daemon.scheduler"),
    ("runner/daemon/x.py", "runner.engine.batch"),
])
def test_a_forbidden_import_is_found(tmp_path, monkeypatch, source, name):
    # The rule is checked on a file written for it, so the test above cannot pass by finding nothing.
    fake = tmp_path / source
    fake.parent.mkdir(parents=True)
    fake.write_text(f"def f():\n    import {name}\n")
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "ROOT", tmp_path)
    monkeypatch.setattr(here, "_sources", lambda: [fake])
    assert _violations() == [f"{source}:2 imports {name}"]
