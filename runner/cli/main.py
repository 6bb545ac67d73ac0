"""`lm`: the command line. Every command but `serve` is a thin client of the daemon's public API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from runner import __version__
from runner.cli.client import Client, ClientError, ensure_daemon
from runner.cli.format import human_size, models_table, table, until
from runner.settings import help_text as settings_help

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lm: run large language models locally.",
                  context_settings={"help_option_names": ["-h", "--help"]})


def fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(1)


def connect() -> Client:
    client = Client()
    try:
        ensure_daemon(client)
    except ClientError as exc:
        fail(str(exc))
    return client


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lm version is {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-v", callback=_version, is_eager=True,
                                       help="Show version information")) -> None:
    pass


@app.command(epilog=settings_help())
def serve() -> None:
    """Start the daemon (LM_HOST, default 127.0.0.1:11434)."""
    from runner.settings import Settings
    from runner.server.app import serve as run_server

    try:
        run_server(Settings.from_env())
    except OSError as exc:
        fail(f"could not listen: {exc}")


@app.command()
def worker(listen: str = typer.Option("127.0.0.1:50052", "--listen",  # llama.cpp's rpc-server's port
                                      help="host:port to serve ggml RPC on"),
           device: Optional[list[str]] = typer.Option(None, "--device",
                                                      help="A device to serve (CPU, CUDA0, ...); repeatable"),
           threads: int = typer.Option(0, "--threads", help="CPU threads (0: all cores)"),
           cache: Optional[Path] = typer.Option(None, "--cache", help="Directory to cache large tensors in"),
           allow_public: bool = typer.Option(
               False, "--allow-public", help="Listen on a non-loopback address (ggml RPC has no authentication)"),
           ) -> None:
    """Serve this host's devices to daemons elsewhere (their LM_RPC_WORKERS) through ggml's RPC server."""
    from runner.ggml.rpc_server import serve as serve_worker

    raise typer.Exit(serve_worker(listen, device or [], allow_public=allow_public, threads=threads,
                                  cache_dir=str(cache) if cache else None))


@app.command()
def create(name: str, file: Path = typer.Option(Path("Modelfile"), "-f", "--file", help="Name of the Modelfile"),
           quantize: Optional[str] = typer.Option(None, "-q", "--quantize", help="Quantize model to this level")) -> None:
    """Create a model from a Modelfile."""
    from runner.cli.create_cmd import run_create

    client = connect()
    try:
        run_create(client, name, file, quantize)
    except ClientError as exc:
        fail(str(exc))


def _list() -> None:
    client = connect()
    try:
        models = client.json("GET", "/api/tags").get("models", [])
    except ClientError as exc:
        fail(str(exc))
    typer.echo(models_table(models))


app.command("list", help="List models.")(_list)
app.command("ls", help="List models.", hidden=True)(_list)


@app.command()
def show(name: str,
         license: bool = typer.Option(False, "--license", help="Show license of a model"),
         modelfile: bool = typer.Option(False, "--modelfile", help="Show Modelfile of a model"),
         parameters: bool = typer.Option(False, "--parameters", help="Show parameters of a model"),
         system: bool = typer.Option(False, "--system", help="Show system message of a model"),
         template: bool = typer.Option(False, "--template", help="Show template of a model"),
         verbose: bool = typer.Option(False, "-v", "--verbose", help="Show detailed model information")) -> None:
    """Show information for a model."""
    from runner.cli.show_cmd import print_show

    client = connect()
    try:
        info = client.json("POST", "/api/show", {"model": name, "verbose": verbose})
    except ClientError as exc:
        fail(str(exc))
    picked = [k for k, on in (("license", license), ("modelfile", modelfile), ("parameters", parameters),
                              ("system", system), ("template", template)) if on]
    if len(picked) > 1:
        fail("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified")
    if picked:
        typer.echo(info.get(picked[0], ""))
    else:
        print_show(info, verbose)


@app.command()
def pull(name: str, insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry")) -> None:
    """Pull a model from a registry (or hf.co/<user>/<repo>[:quant] from Hugging Face)."""
    from runner.cli.pull_cmd import run_pull

    client = connect()
    try:
        run_pull(client, name, insecure)
    except ClientError as exc:
        fail(str(exc))


@app.command()
def push(name: str, insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry")) -> None:
    """Push a model to a registry."""
    from runner.cli.pull_cmd import run_push

    client = connect()
    try:
        run_push(client, name, insecure)
    except ClientError as exc:
        fail(str(exc))


@app.command("cp")
def copy(source: str, destination: str) -> None:
    """Copy a model."""
    client = connect()
    try:
        client.json("POST", "/api/copy", {"source": source, "destination": destination})
    except ClientError as exc:
        fail(str(exc))
    typer.echo(f"copied '{source}' to '{destination}'")


@app.command("rm")
def remove(names: list[str]) -> None:
    """Remove one or more models."""
    client = connect()
    for name in names:
        try:
            client.json("DELETE", "/api/delete", {"model": name})
        except ClientError as exc:
            fail(str(exc))
        typer.echo(f"deleted '{name}'")


@app.command()
def ps() -> None:
    """List running models."""
    client = connect()
    try:
        models = client.json("GET", "/api/ps").get("models", [])
    except ClientError as exc:
        fail(str(exc))
    rows = [[m["name"], m["digest"][:12], human_size(m["size"]), _processor(m),
             str(m.get("context_length", "")), until(m["expires_at"])] for m in models]
    typer.echo(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))


def _processor(model: dict) -> str:
    """Ollama's "100% GPU", and for a model split across GPUs each one's share: "100% GPU (0: 55%, 1: 45%)"."""
    label = model.get("processor", "100% CPU")
    gpus = model.get("gpus") or []
    total = sum(g.get("size_vram", 0) for g in gpus)
    if len(gpus) > 1 and total > 0:
        label += " (" + ", ".join(f"{g.get('name', g['id'])}: {round(100 * g['size_vram'] / total)}%" for g in gpus) + ")"
    replicas = model.get("replicas") or []
    if len(replicas) > 1:  # LM_REPLICAS: "100% GPU x2 (GPU 0, 1)"
        on = ", ".join(str(r["gpus"][0]["id"]) if r.get("gpus") else "?" for r in replicas)
        label += f" x{len(replicas)} (GPU {on})"
    return label


@app.command()
def stop(name: str) -> None:
    """Stop a running model."""
    client = connect()
    try:
        loaded = {m["name"].lower() for m in client.json("GET", "/api/ps").get("models", [])}
        short = name.lower() if ":" in name.rsplit("/", 1)[-1] else name.lower() + ":latest"
        if name.lower() not in loaded and short not in loaded:
            fail(f"couldn't find model \"{name}\" to stop")
        client.json("POST", "/api/generate", {"model": name, "keep_alive": 0})
    except ClientError as exc:
        fail(str(exc))


@app.command(context_settings={"allow_interspersed_args": True})
def run(name: str, prompt: Optional[list[str]] = typer.Argument(None),
        verbose: bool = typer.Option(False, "--verbose", help="Show timings for response"),
        keepalive: Optional[str] = typer.Option(None, "--keepalive", help="Duration to keep a model loaded (e.g. 5m)"),
        format: Optional[str] = typer.Option(None, "--format", help='Response format (e.g. json)'),
        nowordwrap: bool = typer.Option(False, "--nowordwrap", help="Don't wrap words to the next line automatically"),
        think: Optional[str] = typer.Option(None, "--think", metavar="[=true|false|high|medium|low|max]",
                                            help="Enable thinking mode: true/false or high/medium/low/max for "
                                                 "supported models (bare --think: true)"),
        nothink: bool = typer.Option(False, "--nothink", help="Disable thinking mode (as --think=false)"),
        hidethinking: bool = typer.Option(False, "--hidethinking", help="Hide thinking output"),
        truncate: Optional[str] = typer.Option(None, "--truncate", metavar="[=true|false]",
                                               help="For embedding models: truncate inputs exceeding context length "
                                                    "(default: true). Set --truncate=false to error instead"),
        dimensions: int = typer.Option(0, "--dimensions", help="Truncate output embeddings to specified dimension "
                                                               "(embedding models only)"),
        insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry")) -> None:
    """Run a model: answer PROMPT, or chat interactively without one."""
    from runner.cli.pull_cmd import pull_if_missing
    from runner.cli.run_cmd import RunOptions, parse_think, parse_truncate, run_model

    try:
        think_value = False if nothink else parse_think(think) if think is not None else None
        truncate_value = parse_truncate(truncate) if truncate is not None else None
    except ClientError as exc:
        fail(str(exc))
    opts = RunOptions(verbose=verbose, keepalive=keepalive, format=format, wordwrap=not nowordwrap, think=think_value,
                      hidethinking=hidethinking, truncate=truncate_value, dimensions=dimensions)
    if dimensions < 0:
        fail("--dimensions must not be negative (0 keeps every dimension)")
    client = connect()
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{text}\n{piped}".strip() if text else piped
    try:
        pull_if_missing(client, name, insecure)  # as Ollama: a model not in the store is pulled first
        run_model(client, name, text or None, opts)
    except ClientError as exc:
        fail(str(exc))


@app.command()
def bench(name: str,
          clients: str = typer.Option("1,4", "--clients", help="Comma-separated client counts"),
          tokens: int = typer.Option(128, "--tokens", help="Tokens to generate per request"),
          prompt_tokens: int = typer.Option(64, "--prompt-tokens", help="Prompt length (tokens) per request"),
          requests: int = typer.Option(2, "--requests", help="Requests per client"),
          shared_prefix_tokens: int = typer.Option(0, "--shared-prefix-tokens",
                                                   help="A system prompt of about this many tokens shared by every request"),
          compare: Optional[str] = typer.Option(None, "--compare", help="Also load this llama-server or Ollama URL"),
          compare_model: Optional[str] = typer.Option(None, "--compare-model", help="Model name at the peer"),
          json_out: bool = typer.Option(False, "--json", help="Print the results as JSON")) -> None:
    """Measure aggregate tokens/s and time to first token through the daemon's public API."""
    from runner.cli.bench_cmd import run_bench

    client = connect()
    try:
        counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        fail("--clients takes comma-separated integers, e.g. 1,8,32")
    if not counts or min(counts) < 1 or tokens < 1 or requests < 1:
        fail("--clients, --tokens and --requests must be positive")
    if shared_prefix_tokens < 0:
        fail("--shared-prefix-tokens must not be negative")
    try:
        client.json("POST", "/api/show", {"model": name})
        run_bench(client.base, name, counts, tokens, prompt_tokens, requests, compare, compare_model, json_out,
                  shared_prefix_tokens)
    except ClientError as exc:
        fail(str(exc))
    except (OSError, RuntimeError) as exc:
        fail(f"benchmark failed: {exc}")


def main() -> None:
    from runner.cli.run_cmd import expand_optional_flags

    app(args=expand_optional_flags(sys.argv[1:]), prog_name="lm")
