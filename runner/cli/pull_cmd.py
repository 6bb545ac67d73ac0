"""`lm pull NAME` and `lm push NAME`: stream /api/pull or /api/push and draw the progress.

On a terminal: one bar per blob with size, speed and time left, and the other statuses as lines
(as Ollama's CLI shows them). Elsewhere (pipes, logs): each status once, a blob when it completes.
"""

from __future__ import annotations

import http.client

from rich.console import Console
from rich.progress import (
    BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
)

from runner.cli.client import Client, ClientError
from runner.cli.format import human_size


def _bars(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), TaskProgressColumn(), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=console)


def _transfer(client: Client, path: str, name: str, insecure: bool) -> None:
    last: dict = {}

    def updates():
        for update in client.stream(path, {"model": name, "insecure": insecure, "stream": True}):
            last.clear()
            last.update(update)
            yield update

    try:
        _draw(updates())
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ClientError(f"lost the connection to lm during the transfer: {exc or type(exc).__name__}") from None
    if last.get("status") != "success":
        raise ClientError("the transfer ended before it was complete (did lm stop?)")


def _draw(updates) -> None:
    console = Console(stderr=True)
    if not console.is_terminal:
        _plain(updates)
        return
    tasks: dict[str, int] = {}
    progress = _bars(console)
    progress.start()
    try:
        for update in updates:
            status, digest = update.get("status", ""), update.get("digest")
            if digest and update.get("total"):
                if digest not in tasks:
                    tasks[digest] = progress.add_task(status, total=update["total"])
                progress.update(tasks[digest], total=update["total"], completed=update.get("completed", 0),
                                description=status)
            elif status:
                if tasks and progress.live.is_started:
                    progress.stop()  # the bars are done: later lines go below them, as Ollama prints
                console.print(status, highlight=False)
    finally:
        progress.stop()


def _plain(updates) -> None:
    seen: set = set()
    for update in updates:
        status, digest = update.get("status", ""), update.get("digest")
        if digest and update.get("total"):
            if update.get("completed") == update["total"] and digest not in seen:
                seen.add(digest)
                print(f"{status}: 100% {human_size(update['total'])}", flush=True)
        elif status and status not in seen:
            seen.add(status)
            print(status, flush=True)


def run_pull(client: Client, name: str, insecure: bool = False) -> None:
    _transfer(client, "/api/pull", name, insecure)


def run_push(client: Client, name: str, insecure: bool = False) -> None:
    _transfer(client, "/api/push", name, insecure)


def pull_if_missing(client: Client, name: str, insecure: bool = False) -> None:
    """What `lm run` does first: pull the model when the daemon does not have it."""
    try:
        client.json("POST", "/api/show", {"model": name})
        return
    except ClientError as exc:
        if exc.status != 404:
            raise
    run_pull(client, name, insecure)
