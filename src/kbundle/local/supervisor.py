"""One supervised child process: output to a log file and the console, readiness, restart with back-off.

A component that exits while it should be running is reported (label, exit code, log file) and
started again after 1 s, 2 s, 4 s ... up to 30 s; a run that lasted 60 s resets the back-off,
as a kubelet's CrashLoopBackOff does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

logger = logging.getLogger("kbundle.up")
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_RESET_S = 1.0, 30.0, 60.0
READY_PERIOD_S = 10.0  # once ready, probe like a kubelet (exit is seen at once anyway)


def _die_with_parent(argv: list[str]) -> list[str]:
    """The child gets SIGTERM when `kbundle up` dies, even by SIGKILL, so no orphan keeps a port.

    util-linux's `setpriv --pdeathsig` sets it and execs the command. Not a preexec_fn: Python code
    between fork and exec runs grpc's at-fork hooks, and with the ingress's gRPC threads busy the
    child segfaulted before exec (seen in a fresh-clone test run)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else list(argv)


class ComponentProcess:
    """Runs `argv` until `stop()`; `ready` is True while the process answers `ready_url` with 200."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        ready_url: str,
        console: bool = True,
    ):
        self.label = label
        self.argv = list(argv)
        self.env = env
        self.log_path = Path(log_path)
        self.ready_url = ready_url
        self.console = console
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0
        self.last_exit: int | None = None
        self._wanted = False
        self._supervise: asyncio.Task | None = None
        self._ready_event = asyncio.Event()
        self._exit_event = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    @property
    def running(self) -> bool:
        """Wanted up (starting, ready, or waiting to restart)."""
        return self._wanted

    @property
    def exit_code(self) -> int | None:
        """The current process's exit code; None while it runs (or before the first start)."""
        return self.proc.returncode if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def start(self) -> None:
        """Start and keep running (idempotent); readiness comes later, see `wait_ready`."""
        if self._wanted:
            return
        self._wanted = True
        self._supervise = asyncio.create_task(self._run_forever(), name=f"supervise {self.label}")

    async def wait_ready(self, timeout: float, fail_on_exit: bool = False) -> bool:
        """True once ready; False after `timeout`, or (with `fail_on_exit`) as soon as the process
        exits without having got ready, so a rollout that cannot start fails in seconds."""
        waits = [asyncio.ensure_future(self._ready_event.wait())]
        if fail_on_exit:
            self._exit_event.clear()
            waits.append(asyncio.ensure_future(self._exit_event.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return self.ready

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; no restart afterwards."""
        self._wanted = False
        self._set_ready(False)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                logger.warning("%s did not stop in %.0fs; killing it", self.label, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._supervise is not None:
            self._supervise.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervise
            self._supervise = None

    def kill_now(self) -> None:
        self._wanted = False
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()

    async def _run_forever(self) -> None:
        backoff = BACKOFF_FIRST_S
        while self._wanted:
            started = time.monotonic()
            code = await self._run_once()
            if not self._wanted:
                return
            self.last_exit = code
            self.restarts += 1
            if time.monotonic() - started >= BACKOFF_RESET_S:
                backoff = BACKOFF_FIRST_S
            logger.error(
                "%s exited with code %s; restarting in %.0fs (log: %s)",
                self.label,
                code,
                backoff,
                self.log_path,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _run_once(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *_die_with_parent(self.argv),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches kbundle up only: it drains first, then stops us
        )
        logger.info("%s started (pid %s)", self.label, self.proc.pid)
        pump = asyncio.create_task(self._pump(self.proc))
        probe = asyncio.create_task(self._probe(self.proc))
        try:
            code = await self.proc.wait()
        finally:
            probe.cancel()
            self._set_ready(False)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(pump, 2.0)
        self._exit_event.set()  # after the pump: the log already holds the last words
        return code

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        """Child output -> log file, and the console with a `[label]` prefix."""
        with open(self.log_path, "ab") as log:
            while line := await proc.stdout.readline():
                log.write(line)
                log.flush()
                if self.console:
                    sys.stderr.write(f"[{self.label}] {line.decode(errors='replace')}")

    async def _probe(self, proc: asyncio.subprocess.Process) -> None:
        """Poll readiness while the process lives (a later failure marks it not ready again)."""
        async with httpx.AsyncClient(timeout=2.0) as client:
            while proc.returncode is None:
                try:
                    ok = (await client.get(self.ready_url)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok != self.ready:
                    self._set_ready(ok)
                    if ok:
                        logger.info("%s ready", self.label)
                await asyncio.sleep(0.1 if not ok else READY_PERIOD_S)
