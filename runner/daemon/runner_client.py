"""The daemon's handle on one runner process: start it, stream completions from it, stop it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, AsyncIterator

import aiohttp

from runner.engine.protocol import (CompletionRequest, DetokenizeRequest, DetokenizeResult, EmbedRequest, EmbedResult,
                                    LaunchConfig, ProtocolError, Record, RerankRequest, RerankResult, TokenizeRequest,
                                    TokenizeResult, is_last, record_from_json)

if TYPE_CHECKING:
    import numpy as np

CRASH_MESSAGE = "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error"


RUNNER_DIR_PREFIX = "lm-runner-"
_JSON = {"Content-Type": "application/json"}


def remove_dead_runner_dirs() -> list[str]:
    """Removes the socket directories (lm-runner-<daemon pid>-*) of daemons that are gone: a daemon that
    was SIGKILLed could not remove its own. Only this user's, and only where the pid lives no more: a
    live daemon's runners keep theirs."""
    import shutil

    removed = []
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        pid = entry[len(RUNNER_DIR_PREFIX):].split("-", 1)[0]
        if not entry.startswith(RUNNER_DIR_PREFIX) or not pid.isdigit() or int(pid) in (0, os.getpid()):
            continue
        path = os.path.join(tmp, entry)
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


class RunnerError(RuntimeError):
    """The runner failed: it did not start, or it died while serving."""


class RunnerRejected(RunnerError):
    """The runner refused a request (e.g. an input too long: 400); `status` is the HTTP status to give."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RunnerClient:
    def __init__(self, launch: LaunchConfig, *, debug: bool = False):
        """`launch`: the runner's settings; its socket and daemon pid are this client's to fill in."""
        self.debug = debug
        # The daemon's pid in the name: its next start removes what a SIGKILLed daemon left (see
        # remove_dead_runner_dirs).
        self._dir = tempfile.mkdtemp(prefix=f"{RUNNER_DIR_PREFIX}{os.getpid()}-")
        self.socket_path = os.path.join(self._dir, "runner.sock")
        self.launch = replace(launch, socket=self.socket_path, daemon_pid=os.getpid())
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
        cmd = [sys.executable, "-m", "runner.engine", *self.launch.to_argv()]
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

    async def completion_batches(self, request: CompletionRequest) -> AsyncIterator[list[Record]]:
        """The runner's records (pieces, then a final or an error record), as lists of those that arrived
        together; raises RunnerError if the runner dies meanwhile.

        Under load the runner's lines for one request pile up between two reads of ours; taking all of
        them at once (one read, one pass) means one trip through the layers above per batch, and one
        write to the client, instead of one per token."""
        if not self.alive or self._session is None:
            raise RunnerError(CRASH_MESSAGE)
        try:
            async with self._session.post("http://runner/completion", data=request.to_json(),
                                          headers=_JSON) as resp:
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
                    batch = [record_from_json(line) for line in lines if line.strip()]
                    if batch:
                        got_final = got_final or is_last(batch[-1])
                        yield batch
                if rest.strip() or not got_final:  # the runner died mid-line, or before its last line
                    raise RunnerError(await self._crash_message())
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError, ProtocolError) as exc:
            raise RunnerError(await self._crash_message()) from exc

    async def _crash_message(self) -> str:
        """Ollama's message for a runner that died; for one on RPC workers, which worker loss it was
        (libggml-rpc aborts the runner when a worker's connection breaks, and says so on stderr)."""
        if not self.launch.rpc_workers or self.proc is None:
            return CRASH_MESSAGE
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=2)
            await asyncio.sleep(0.05)  # let the stderr reader take the last lines
        except asyncio.TimeoutError:
            pass
        # GGML_ABORT's lines start with the source file's path and line: keep disk paths out of errors
        lines = [re.sub(r"\S*/\S+:\d+:\s*", "", line).strip() for line in self._stderr_tail if "RPC" in line]
        if not lines:
            return CRASH_MESSAGE
        return ("lost the connection to an RPC worker, so the model runner stopped (" + lines[-1][-200:] +
                "); the model loads again on the next request once every worker in LM_RPC_WORKERS answers")

    async def embed(self, inputs: list[str | list[int]], truncate: bool = True) -> tuple["np.ndarray", list[int], int]:
        """Raw (unnormalised) embeddings of `inputs` (texts or token ids), one row each; the token count of each input;
        the runner's compute time in ns. RunnerRejected for what the runner refuses (400, 501)."""
        import base64

        import numpy as np

        body = await self._call("embed", EmbedRequest(list(inputs), truncate))
        try:
            answer = EmbedResult.from_json(body)
            vectors = np.frombuffer(base64.b64decode(answer.vectors), dtype="<f4").reshape(len(inputs), answer.dims)
        except ValueError as exc:  # an answer that is not the runner's shape (ProtocolError is one)
            raise RunnerError(CRASH_MESSAGE) from exc
        return vectors, answer.counts, answer.prompt_eval_duration

    async def rerank(self, query: str, documents: list[str], truncate: bool = True) -> tuple[list[float], list[int]]:
        """The relevance score of each (query, document) pair and its token count. RunnerRejected for what
        the runner refuses (400, 501)."""
        body = await self._call("rerank", RerankRequest(query, list(documents), truncate))
        answer = self._answer(RerankResult, body)
        if len(answer.scores) != len(documents):
            raise RunnerError(CRASH_MESSAGE)
        return [float(s) for s in answer.scores], answer.counts

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        body = await self._call("tokenize", TokenizeRequest(text, add_special))
        return self._answer(TokenizeResult, body).tokens

    async def detokenize(self, tokens: list[int]) -> str:
        """The text of token ids (special tokens written out); RunnerRejected for ids not in the vocabulary."""
        body = await self._call("detokenize", DetokenizeRequest(list(tokens)))
        return self._answer(DetokenizeResult, body).content

    @staticmethod
    def _answer(kind, body: dict):
        try:
            return kind.from_json(body)
        except ProtocolError as exc:  # an answer that is not the runner's shape
            raise RunnerError(CRASH_MESSAGE) from exc

    async def _call(self, route: str, message) -> dict:
        """POSTs one of protocol.py's requests; the answer's JSON object. RunnerRejected for a refusal,
        RunnerError when the runner is gone or answers nonsense."""
        if not self.alive or self._session is None:
            raise RunnerError(CRASH_MESSAGE)
        try:
            async with self._session.post(f"http://runner/{route}", data=message.to_json(), headers=_JSON) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RunnerRejected(body.get("error") or f"runner answered {resp.status}", resp.status)
                return body
        except (aiohttp.ClientError, json.JSONDecodeError, ConnectionError, KeyError, TypeError, AttributeError) as exc:
            raise RunnerError(CRASH_MESSAGE) from exc

    async def wait_exited(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the process to end: after a broken stream its exit status
        reaches asyncio a moment later."""
        if not self.alive:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            pass

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
