"""Child processes of a benchmark: start them, wait for their ports, read their costs from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """The benchmark cannot run or gave an answer that cannot be trusted; one line for the user."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """A free port whose successor is free too (OpenBao's dev cluster listener takes it)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise BenchError("found no two adjacent free loopback ports")


@dataclass
class Child:
    """A started child process and the log its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, last_lines: int = 20) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-last_lines:])

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with {self.process.returncode}; its log ends:\n{self.output()}"
            )


@contextmanager
def started(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Child]:
    """Run `argv` for the duration of the block, output to `log_path`; stop it on the way out."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    child = Child(name, process, log_path)
    try:
        yield child
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def wait_for_port(child: Child, port: int, timeout: float = 20.0) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} did not listen on port {port} within {timeout:g} s")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx's master and its workers, say)."""
    pids = [pid]
    index = 0
    while index < len(pids):
        current = pids[index]
        index += 1
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = (task / "children").read_text(encoding="ascii").split()
            pids.extend(int(child) for child in children)
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time the processes have used so far (all their threads)."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLOCK_TICKS


@dataclass(frozen=True)
class Resident:
    """Resident memory split as /proc/<pid>/status does, in MiB, summed over processes.

    `anon` is the process's own (heap, Python objects): what each pod pays. `file` is mapped
    files (shared libraries, extension modules), which pods running the same image on one node
    can share through the page cache; `shmem` is shared memory.
    """

    total: float
    anon: float
    file: float
    shmem: float


def resident(pids: Sequence[int]) -> Resident:
    """VmRSS, RssAnon, RssFile and RssShmem of the processes, summed."""
    fields = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name in fields:
                fields[name] += int(value.split()[0])  # kB
    mib = {name: kb / 1024 for name, kb in fields.items()}
    return Resident(mib["VmRSS"], mib["RssAnon"], mib["RssFile"], mib["RssShmem"])


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds the processes have used so far."""
    user = system = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        fields = stat[stat.rindex(")") + 2 :].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def syscalls(pids: Sequence[int]) -> tuple[int, int]:
    """(read-like, write-like) system calls the processes have made (/proc/<pid>/io)."""
    reads = writes = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(":")
            if name == "syscr":
                reads += int(value)
            elif name == "syscw":
                writes += int(value)
    return reads, writes


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of the processes, summed (a page they share counts once per process)."""
    total = 0
    for pid in pids:
        resident = Path(f"/proc/{pid}/statm").read_text(encoding="ascii").split()[1]
        total += int(resident) * PAGE_BYTES
    return total
