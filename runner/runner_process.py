"""The daemon's handle on one runner process: start it, stream completions from it, stop it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp
import orjson

if TYPE_CHECKING:
    import numpy as np

CRASH_MESSAGE = "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error"


class RunnerError(RuntimeError):
    """The runner failed: it did not start, or it died while serving."""


class RunnerRejected(RunnerError):
    """The runner refused a request (e.g. an input too long: 400); `status` is the HTTP status to give."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RunnerProcess:
    def __init__(self, model_path: Path, args: list[str], *, debug: bool = False):
        self.model_path = model_path
        self.args = args
        self.debug = debug
        self._dir = tempfile.mkdtemp(prefix="lm-runner-")
        self.socket_path = os.path.join(self._dir, "runner.sock")
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr_tail: deque[str] = deque(maxlen=30)
        self._session: aiohttp.ClientSession | None = None
        self._stderr_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def _error_detail(self) -> str:
        lines = [line.strip() for line in self._stderr_tail if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error") or "error:" in line.lower()]
        return (errors or lines or [""])[-1]

    async def start(self, timeout: float) -> dict:
        """Starts the runner and waits until it serves. A start that fails or is cancelled (the client hung
        up during the load, or the daemon is stopping) leaves no process behind."""
        try:
            return await self._start(timeout)
        except BaseException:
            if self.alive:
                self.proc.kill()
            await self.stop()
            raise

    async def _start(self, timeout: float) -> dict:
        cmd = [sys.executable, "-m", "runner.engine", "--model", str(self.model_path), "--socket", self.socket_path,
               *self.args]
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        self._stderr_task = asyncio.create_task(self._read_stderr())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path), timeout=aiohttp.ClientTimeout(total=None)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.alive:
                await asyncio.sleep(0.05)  # let the stderr reader catch the last lines
                detail = self._error_detail()
                await self.stop()
                raise RunnerError(f"llama runner process has terminated: {detail or 'exit code ' + str(self.proc.returncode)}")
            if os.path.exists(self.socket_path):
                try:
                    async with self._session.get("http://runner/health") as resp:
                        info = await resp.json()
                        if info.get("status") == "ok":
                            return info
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.02)
        await self.stop()
        raise RunnerError(f"timed out waiting for the model to load after {timeout:.0f}s")

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self._stderr_tail.append(line)
            if self.debug:
                sys.stderr.write(f"[runner {self.proc.pid}] {line}")

    async def completion_batches(self, payload: dict) -> AsyncIterator[list[dict]]:
        """The runner's NDJSON objects, as lists of those that arrived together; raises RunnerError if
        the runner dies meanwhile.

        Under load the runner's lines for one request pile up between two reads of ours; taking all of
        them at once (one read, one pass) means one trip through the layers above per batch, and one
        write to the client, instead of one per token."""
        if not self.alive or self._session is None:
            raise RunnerError(CRASH_MESSAGE)
        try:
            async with self._session.post("http://runner/completion", json=payload) as resp:
                if resp.status != 200:
                    body = await resp.json(content_type=None)
                    message = body.get("error") or f"runner answered {resp.status}"
                    raise RunnerRejected(message, resp.status) if 400 <= resp.status < 500 else RunnerError(message)
                got_final = False
                rest = b""
                async for data in resp.content.iter_any():
                    if rest:
                        data = rest + data
                    lines = data.split(b"\n")
                    rest = lines.pop()  # an unfinished line waits for the next read
                    batch = [orjson.loads(line) for line in lines if line.strip()]
                    if batch:
                        last = batch[-1]
                        got_final = got_final or bool(last.get("done")) or "error" in last
                        yield batch
                if rest.strip():
                    raise RunnerError(CRASH_MESSAGE)  # the runner died mid-line
                if not got_final:
                    raise RunnerError(CRASH_MESSAGE)
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError) as exc:
            raise RunnerError(CRASH_MESSAGE) from exc

    async def embed(self, inputs: list[str | list[int]], truncate: bool = True) -> tuple["np.ndarray", list[int], int]:
        """Raw (unnormalised) embeddings of `inputs` (texts or token ids), one row each; the token count of each input;
        the runner's compute time in ns. RunnerRejected for what the runner refuses (400, 501)."""
        import base64

        import numpy as np

        if not self.alive or self._session is None:
            raise RunnerError(CRASH_MESSAGE)
        try:
            async with self._session.post("http://runner/embed", json={"input": inputs, "truncate": truncate}) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RunnerRejected(body.get("error") or f"runner answered {resp.status}", resp.status)
            vectors = np.frombuffer(base64.b64decode(body["vectors"]), dtype="<f4").reshape(len(inputs), body["dims"])
            return vectors, body["counts"], int(body.get("prompt_eval_duration", 0))
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError, KeyError, TypeError, ValueError) as exc:
            raise RunnerError(CRASH_MESSAGE) from exc

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return (await self._call("tokenize", {"content": text, "add_special": add_special}))["tokens"]

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of token ids (special tokens written out); RunnerRejected for ids not in the vocabulary."""
        return (await self._call("detokenize", {"tokens": tokens}))["content"]

    async def _call(self, route: str, payload: dict) -> dict:
        if not self.alive or self._session is None:
            raise RunnerError(CRASH_MESSAGE)
        try:
            async with self._session.post(f"http://runner/{route}", json=payload) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RunnerRejected(body.get("error") or f"runner answered {resp.status}", resp.status)
                return body
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError, KeyError, TypeError, AttributeError) as exc:
            raise RunnerError(CRASH_MESSAGE) from exc

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stderr_task:
            self._stderr_task.cancel()
        if self._session:
            await self._session.close()
            self._session = None
        for path in (self.socket_path, self._dir):
            try:
                os.rmdir(path) if path == self._dir else os.unlink(path)
            except OSError:
                pass
