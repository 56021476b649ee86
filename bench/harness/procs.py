"""Processes: signal handlers, free ports, the /proc process table, memory of a process, stopping
a process group."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from types import FrameType
from typing import NoReturn


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so `finally` blocks stop the app and remove temp dirs.
    SIGINT gets Python's handler even when the shell started us with it ignored (a background
    job): otherwise runapp would inherit the ignored SIGINT and could not be stopped cleanly."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def _raise(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, start time) from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(rest[1]), int(rest[2]), rest[19])
    return table


def descendants(root_pid: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of root_pid: pid -> (pgid, start time)."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = (table[child][1], table[child][2])
                todo.append(child)
    return found


def proc_alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    rest = stat[stat.rfind(")") + 2 :].split()
    return rest[19] == start and rest[0] != "Z"


def proc_cmd_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:6] if a]
    return " ".join(w for w in words if not w.startswith("python"))[:60]


def proc_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def proc_memory_kb(pid: int) -> dict[str, int] | None:
    """VmHWM (peak resident set) and VmRSS of a live process, in kB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            text = fh.read()
    except OSError:
        return None
    found = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.M))
    if "VmHWM" not in found:
        return None  # a zombie has no memory lines
    return {k: int(v) for k, v in found.items()}


def proc_pss_kb(pid: int) -> int | None:
    """Proportional set size of a live process in kB: its private pages plus its share of the
    pages it maps with others (forked parents, the same mapped file), so the PSS of several
    processes adds up to what they hold together. None when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            text = fh.read()
    except OSError:
        return None
    found = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(found[1]) if found else None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process and of its waited-for children; None when
    it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def stop_process_group(proc: subprocess.Popen, *, first: int = signal.SIGTERM, grace: float = 20.0) -> None:
    """`first` to the group of a process started with start_new_session=True, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, first)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_pgserver(tmp: Path, database: str, *, shared_buffers: str = "") -> str:
    """A private PostgreSQL with pgvector (PyPI `pgserver`, a development requirement) in
    `tmp`, with an empty `database`, alive until this process ends; its URL for Django.
    `shared_buffers` ("6GB") is set and the server restarted: initdb's 128MB holds no large
    HNSW index, and pgvector's graph scans slow down several times once theirs does not fit."""
    import pgserver
    from pgserver._commands import pg_ctl

    server = pgserver.get_server(str(tmp / "pgdata"), cleanup_mode="stop")
    if shared_buffers:
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
        pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    socket_dir = server.get_uri().split("host=", 1)[1]
    server.psql(f"CREATE DATABASE {database}")
    _servers.append(server)
    return f"postgres://postgres@/{database}?host={socket_dir}"


_servers: list[object] = []  # kept alive until the process ends
