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
