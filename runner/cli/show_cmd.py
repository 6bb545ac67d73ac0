"""`lm show NAME`: the summary Ollama prints (Model, Capabilities, Parameters, System, License)."""

from __future__ import annotations

from runner.cli.format import human_size


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(k) for k, _ in rows)
    return [f"  {title}"] + [f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows] + [""]


def _first_lines(text: str, n: int = 2) -> list[tuple[str, str]]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    rows = [(line, "") for line in lines[:n]]
    if len(lines) > n:
        rows.append(("...", ""))
    return rows


def print_show(info: dict, verbose: bool = False) -> None:
    details, model_info = info.get("details", {}), info.get("model_info", {})
    arch = model_info.get("general.architecture", details.get("family", ""))
    model_rows = [("architecture", arch), ("parameters", details.get("parameter_size", ""))]
    if arch and f"{arch}.context_length" in model_info:
        model_rows.append(("context length", str(model_info[f"{arch}.context_length"])))
    if arch and f"{arch}.embedding_length" in model_info:
        model_rows.append(("embedding length", str(model_info[f"{arch}.embedding_length"])))
    model_rows.append(("quantization", details.get("quantization_level", "")))
    out = _section("Model", model_rows)
    out += _section("Capabilities", [(c, "") for c in info.get("capabilities", [])])
    out += _section("Adapters", [(a.get("digest", "").removeprefix("sha256:")[:12], human_size(a.get("size") or 0))
                                 for a in info.get("adapters") or []])
    params = [line.split(None, 1) for line in info.get("parameters", "").splitlines() if line.strip()]
    out += _section("Parameters", [(p[0], p[1] if len(p) > 1 else "") for p in params])
    if info.get("system"):
        out += _section("System", _first_lines(info["system"]))
    if info.get("license"):
        out += _section("License", _first_lines(info["license"]))
    if verbose:
        rows = [(k, str(v)) for k, v in sorted(model_info.items()) if v is not None]
        out += _section("Metadata", rows)
    print("\n".join(out))
