"""A `python -m aotpt.serve` process on a free loopback port, for tests and load tests.

The server runs in its own session (process group), so that whatever
happens to the caller, `__exit__` can stop it: SIGTERM first (the server
shuts its API and worker processes down and exits 0), then SIGKILL to the
whole group if anything of it is still alive.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from aotpt.errors import AotptError


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m aotpt.serve *args port=<free> host=127.0.0.1`, its output in `log_dir/server.out`; a context
    manager that returns once GET /health answers 200 (or fails with the log's tail after `timeout` s)."""

    def __init__(self, args: list[str], log_dir: Path, timeout: float = 180, env: dict | None = None) -> None:
        self.args, self.log_path, self.timeout = list(args), Path(log_dir) / "server.out", timeout
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "aotpt.serve", *self.args, f"port={self.port}", "host=127.0.0.1"]
        command.append(f"hydra.run.dir={self.log_path.parent}")
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()
        self.kill()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AotptError(f"the server exited with {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AotptError(f"the server did not get healthy in {self.timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the server; its exit code (it stops its own API and worker processes first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AotptError(f"the server did not stop in {timeout:.0f} s after SIGTERM: {self.tail()}") from None

    def leftovers(self, wait: float = 10) -> list[int]:
        """Processes of the server's session still alive (after `stop`, none should be), waited for `wait` s."""
        deadline = time.monotonic() + wait
        while True:
            alive = [p.pid for p in psutil.process_iter() if _session(p.pid) == self.proc.pid]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (only processes it started)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def memory(self) -> dict[str, int]:
        """Memory of the server's processes: summed RSS, and summed PSS (forked processes share pages; PSS
        splits each shared page among its sharers, so the sum counts each page once)."""
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        rss = pss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        return {"rss": rss, "pss": pss, "processes": len(procs)}


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
