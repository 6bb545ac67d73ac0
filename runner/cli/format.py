"""Human formats the CLI shares with Ollama's: sizes, relative times, tables."""

from __future__ import annotations

from datetime import datetime, timezone


def human_size(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{n} B"


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ago(text: str) -> str:
    seconds = (datetime.now(timezone.utc) - _parse_time(text)).total_seconds()
    for unit, scale in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400),
                        ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= scale:
            n = int(seconds // scale)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a second ago"


def until(text: str) -> str:
    t = _parse_time(text)
    seconds = (t - datetime.now(timezone.utc)).total_seconds()
    if t.year > 2200:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, scale in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= scale:
            n = int(seconds // scale)
            return f"{n} {unit}{'s' if n > 1 else ''} from now"
    return "Less than a second from now"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["    ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


def models_table(models: list[dict]) -> str:
    """`lm list`'s table of /api/tags models (also the REPL's /list)."""
    rows = [[m["name"], m["digest"][:12], human_size(m["size"]), ago(m["modified_at"])] for m in models]
    return table(["NAME", "ID", "SIZE", "MODIFIED"], rows)


def _frac(value: int, digits: int) -> str:
    """value / 10**digits with the fraction's trailing zeros dropped, as Go's fmtFrac and fmtInt."""
    whole, frac = divmod(value, 10**digits)
    tail = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def go_duration(ns: int) -> str:
    """A duration in nanoseconds as Go's time.Duration.String() writes it: 1.5s, 12.3ms, 41µs, 1m2.5s, 0s.
    Ollama's --verbose stats are printed in this form."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(int(ns))
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_frac(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_frac(ns, 6)}ms"
    seconds, frac = divmod(ns, 10**9)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = _frac(seconds * 10**9 + frac, 9) + "s"
    if minutes or hours:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return sign + text
