"""`python -m runner.model.bundled_install`: puts the bundled models into the store (run by install.sh).

Uses the very code path of /api/create, in process, so that installing needs no running daemon.
A model already present with the same GGUF is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelfiles import parse_modelfile
from registry import MEDIA_MODEL, ModelName, Store
from registry.bundled import BUNDLED, default_cache_dir, fetch_gguf

from runner.settings import Settings
from runner.model.create import create_model, parse_create_request
from runner.model.modelfile_request import create_body


def install(name: str, store: Store, *, quiet: bool = False, cache: Path | None = None) -> str:
    bundled = BUNDLED[name]
    gguf = fetch_gguf(name, default_cache_dir(cache), quiet=quiet)
    mf = parse_modelfile(bundled.modelfile.read_bytes())
    existing = store.find(ModelName.parse(name))
    digest, _ = store.add_blob_file(gguf)
    if existing is not None and existing.manifest.layer(MEDIA_MODEL).digest == digest:
        return f"{name} is already in the store"
    mf.from_ = str(gguf)
    body = create_body(name, mf, gguf.parent, lambda _path: digest)
    create_model(store, parse_create_request(body), lambda _status: None)
    return f"added {name} to {store.root}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m runner.model.bundled_install")
    p.add_argument("names", nargs="*", default=list(BUNDLED), help="bundled models (default: all)")
    args = p.parse_args()
    settings = Settings.from_env()
    store = Store(settings.models_dir)
    for name in args.names:
        try:
            print(install(name, store, cache=settings.bundled_cache))
        except Exception as exc:  # one line, non-zero exit: the installer stops here
            print(f"Error: could not install {name}: {exc}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
