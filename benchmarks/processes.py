"""Starting, pinning, probing and stopping the processes a benchmark run needs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_sets(pin: bool) -> tuple[str | None, str | None]:
    """(CPUs for upstream + load generator, CPUs for the proxy under test), or no pinning.

    On a 2-core machine the proxy gets core 1 to itself and everything else shares core 0, so
    a single-process proxy is measured on one whole core instead of fighting the load
    generator for it.
    """
    count = os.cpu_count() or 1
    if not pin or count < 2 or shutil.which("taskset") is None:
        return None, None
    return "0", ",".join(str(i) for i in range(1, count))


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


class Process:
    """A child process in its own session, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            pinned(argv, cpus),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_port(self, port: int, timeout: float) -> None:
        """Wait until something accepts connections on ``port``; fail if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on port {port} within {timeout:g}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of this process and its live descendants."""
        total = 0
        for pid in _tree(self.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _CLOCK_TICKS

    def memory(self) -> dict[str, Any]:
        """Peak (VmHWM) and current (VmRSS) resident memory, MiB, of each live process in the
        tree; ``peak_mib`` is the largest peak of any one process (one worker's)."""
        procs: list[dict[str, Any]] = []
        for pid in _tree(self.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            kib = {
                k: int(v.split()[0])
                for k, v in (ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
                if k in ("VmHWM", "VmRSS")
            }
            if kib:
                procs.append(
                    {
                        "pid": pid,
                        "cmd": cmd.strip()[:120],
                        "peak_mib": kib.get("VmHWM", 0) / 1024,
                        "rss_mib": kib.get("VmRSS", 0) / 1024,
                    }
                )
        return {
            "peak_mib": max((p["peak_mib"] for p in procs), default=None),
            "rss_mib": max((p["rss_mib"] for p in procs), default=None),
            "processes": procs,
        }

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group this object started, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()


def cores_busy_seconds(cpus: str | None) -> float | None:
    """CPU time spent on the given cores by anything (user, system, irq, steal), or None."""
    if cpus is None:
        return None
    wanted = {f"cpu{c}" for c in cpus.split(",")}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in wanted:
            v = [int(x) for x in values]
            total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # all but idle and iowait
    return total / _CLOCK_TICKS


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
