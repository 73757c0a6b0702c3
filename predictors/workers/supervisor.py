"""The container's main process under `--workers N` (N > 1): owns the ports, starts the engine
owner and N front-end workers, restarts a worker that dies, and turns an owner that dies into a
non-zero exit (Kubernetes then restarts the container).

Ports: the REST socket is bound here (no SO_REUSEPORT, so a foreign process is refused) and
passed to every worker, which all accept on it. gRPC cannot adopt a socket, so the workers bind
it with SO_REUSEPORT; a socket bound here with SO_REUSEPORT (never listening, so it takes no
connections) holds the port from start-up, and a process that binds without SO_REUSEPORT (a
second predictor, or another `--workers` supervisor's check) is refused.

SIGTERM: forwarded to every worker, each drains (not ready, answers what it accepted) and exits;
then the owner is stopped; exit 0 when all of them exited 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kbundle.predictors.workers import wire
from kbundle.predictors.workers.front import INDEX_ENV, REST_FD_ENV
from kbundle.predictors.workers.shm import SHM_DIR, SlabSize, shm_shortage
from kbundle.serving import limits
from kbundle.serving.lifecycle import bind_grpc_socket, bind_rest_socket

logger = logging.getLogger("kbundle.supervisor")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# After the owner dies, workers answer 503 / UNAVAILABLE this long before the container exits,
# so clients read a clear status rather than a refused connection.
OWNER_LOST_GRACE_S = 2.0
POLL_S = 0.05
RESTARTS_WINDOW_S, MAX_RESTARTS = 30.0, 5  # more than this: a worker cannot start; give up


def hold_grpc_port(port: int) -> socket.socket:
    """Bind (not listen) the gRPC port with SO_REUSEPORT: our workers may join, nobody else.
    First bound without it, so a port held by anyone (another `--workers` pod too) is refused."""
    bind_grpc_socket(port, reuseport=False, listen=False).close()
    return bind_grpc_socket(port, reuseport=True, listen=False)


class Supervisor:
    def __init__(self, args: argparse.Namespace, argv: list[str], workers: int):
        self.args, self.argv, self.count = args, argv, workers
        self.tmp = Path(tempfile.mkdtemp(prefix="kbundle-workers-"))
        self.socket_path = str(self.tmp / "owner.sock")
        self.stopping: int | None = None
        self.workers: list[subprocess.Popen] = []
        self.restarts: list[float] = []

    # -- start-up ------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for stale in SHM_DIR.glob(f"kbundle-{os.getpid()}-*"):  # slabs of killed workers
                stale.unlink(missing_ok=True)

    def _run(self) -> int:
        shortage = shm_shortage(self.count, SlabSize.from_env())
        if shortage:
            print(shortage, file=sys.stderr)
            return 1
        self.rest = bind_rest_socket(self.args.http_port, limits.bind_host() or "0.0.0.0")
        self.grpc_hold = hold_grpc_port(self.args.grpc_port) if self.args.enable_grpc else None
        self.env = self._child_env()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.owner = self._spawn("owner", {})
        if not self._owner_ready():
            code = self.owner.wait()
            return code or 1
        self.workers = [self._start_worker(i) for i in range(self.count)]
        return self._watch()

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, wire.SOCKET_ENV: self.socket_path}
        folder = Path(env.setdefault(MULTIPROC_ENV, str(self.tmp / "metrics")))
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # a previous run's values must not add up with ours
            stale.unlink()
        return env

    def _spawn(self, role: str, env: dict[str, str], fds: tuple[int, ...] = ()) -> subprocess.Popen:
        module = f"kbundle.predictors.workers.{role}"
        cmd = [sys.executable, "-m", module, *self.argv]
        return subprocess.Popen(cmd, env={**self.env, **env}, pass_fds=fds)

    def _start_worker(self, index: int) -> subprocess.Popen:
        fd = self.rest.fileno()
        env = {REST_FD_ENV: str(fd), INDEX_ENV: str(index)}
        proc = self._spawn("front", env, (fd,))
        logger.info("worker %d started (pid %d)", index, proc.pid)
        return proc

    def _owner_ready(self) -> bool:
        logger.info("engine owner started (pid %d); %d workers follow", self.owner.pid, self.count)
        while not os.path.exists(self.socket_path):
            if self.owner.poll() is not None or self.stopping:
                return False
            time.sleep(POLL_S)
        return True

    def _on_signal(self, sig: int, frame: object) -> None:
        """Forwarded at once: every worker turns not-ready and stops taking calls together."""
        self.stopping = sig
        for proc in self.workers:
            _signal(proc, signal.SIGTERM)

    # -- running -------------------------------------------------------------------------------
    def _watch(self) -> int:
        while True:
            if self.stopping:
                return self._shutdown()
            if self.owner.poll() is not None:
                return self._owner_died()
            for index, proc in enumerate(self.workers):
                if proc.poll() is not None and not self._restart(index, proc):
                    return self._give_up(index, proc)
            time.sleep(POLL_S)

    def _restart(self, index: int, proc: subprocess.Popen) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTARTS_WINDOW_S] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            return False
        logger.warning(
            "worker %d (pid %d) exited with %s; restarting it", index, proc.pid, proc.returncode
        )
        _mark_dead(proc.pid, self.env[MULTIPROC_ENV])
        self.workers[index] = self._start_worker(index)
        return True

    def _give_up(self, index: int, proc: subprocess.Popen) -> int:
        logger.error("worker %d keeps exiting (last code %s); stopping", index, proc.returncode)
        self._stop_workers(10.0)
        self._stop_owner()
        return 1

    def _owner_died(self) -> int:
        logger.error(
            "engine owner (pid %d) exited with %s: workers answer 503 / UNAVAILABLE, the "
            "predictor exits 1 in %gs",
            self.owner.pid,
            self.owner.returncode,
            OWNER_LOST_GRACE_S,
        )
        time.sleep(OWNER_LOST_GRACE_S)
        self._stop_workers(10.0)
        return 1

    def _shutdown(self) -> int:
        logger.info("%s: draining %d workers", signal.Signals(self.stopping).name, self.count)
        drain = float(getattr(self.args, "drain_timeout_seconds", 25.0))
        codes = self._stop_workers(drain + 5.0)
        codes.append(self._stop_owner())
        logger.info("workers and engine owner exited with %s", codes)
        return 0 if not any(codes) else 1

    def _stop_workers(self, timeout_s: float) -> list[int]:
        for proc in self.workers:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        # -SIGTERM: a worker still starting (no drain handler yet) had no call in flight.
        codes = [_wait(proc, deadline) for proc in self.workers]
        return [0 if code == -signal.SIGTERM else code for code in codes]

    def _stop_owner(self) -> int:
        _signal(self.owner, signal.SIGTERM)
        return _wait(self.owner, time.monotonic() + 10.0)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


def _wait(proc: subprocess.Popen, deadline: float) -> int:
    try:
        return proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _mark_dead(pid: int, folder: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, folder)
