"""BenchApp: a private, throw-away instance of the app (`manage.py runapp`) with its own VAR_DIR
and Redis database."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .http import Api
from .procs import (
    descendants,
    free_port,
    proc_alive,
    proc_argv,
    proc_cmd_name,
    proc_cpu_seconds,
    proc_table,
    stop_process_group,
)
from .results import PROJECT_ROOT, log

if TYPE_CHECKING:
    import redis


# Settings that could point a run at the developer's data: always set by the harness.
_ISOLATED_KEYS = (
    "VAR_DIR",
    "DATABASE_URL",
    "MEDIA_ROOT",
    "INDEX_DIR",
    "STATIC_ROOT",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "BROKER_DIR",
    "TEST_SQLITE_NAME",
    "EMBEDDER_WEIGHTS_DIR",
)


def _children_by_parent(table: dict[int, tuple[int, int, str]]) -> dict[int, list[int]]:
    """The process table (pid -> (ppid, ...)) turned around: parent pid -> child pids."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    return children


def _below(children: dict[int, list[int]], pid: int) -> list[int]:
    """Every descendant of `pid` (children, grandchildren, ...), sorted."""
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def venv_python() -> str:
    candidate = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


class BenchApp:
    """A private, throw-away instance of the app.

    with BenchApp("neardup", args) as app:
        app.prepare()           # flush the Redis db, migrate the temporary database
        app.start()             # runapp; returns once GET / answers and both workers are ready
        app.import_images(src)  # manage.py import_images with the same environment
    # stopped, Redis db flushed, temp dir removed (unless --keep)
    """

    def __init__(self, name: str, args: argparse.Namespace, root: Path | None = None) -> None:
        """`root`: the checkout whose app runs (this one by default; `checkout_at` makes
        another, e.g. the code an issue measured, for a baseline in the same run)."""
        self.name = name
        self.root = root or PROJECT_ROOT
        self.keep = args.keep
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.var_dir = self.tmp / "var"
        self.var_dir.mkdir()
        self.redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
        self.port = args.port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.tmp / "app.log"
        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self._children: dict[int, tuple[int, str]] = {}
        self._subprocs: list[subprocess.Popen] = []
        self._pool_pids: dict[int, set[int]] = {}  # Celery worker main pid -> its pool children
        self._beat_pids: set[int] = set()  # beat processes embedded in a worker (-B)
        self.env = self._build_env()
        self._django = False

    def _build_env(self) -> dict[str, str]:
        env = os.environ.copy()
        for key in _ISOLATED_KEYS:
            env.pop(key, None)
        env.update(
            DJANGO_SETTINGS_MODULE="searchsite.settings",
            VAR_DIR=str(self.var_dir),
            DATABASE_URL=f"sqlite:///{self.var_dir / 'db.sqlite3'}",
            MEDIA_ROOT=str(self.var_dir / "media"),
            INDEX_DIR=str(self.var_dir / "index"),
            STATIC_ROOT=str(self.var_dir / "staticfiles"),
            EMBEDDER_WEIGHTS_DIR=os.environ.get(
                "EMBEDDER_WEIGHTS_DIR", str(PROJECT_ROOT / "var" / "weights")
            ),
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            PYTHONUNBUFFERED="1",
            # A bench is one trusted client asking thousands of times: no per-client limits.
            THROTTLE_SEARCH="off",
            THROTTLE_URL="off",
            THROTTLE_UPLOAD="off",
            THROTTLE_REPORT="off",
        )
        return env

    @property
    def index_dir(self) -> Path:
        return self.var_dir / "index"

    def __enter__(self) -> BenchApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-up --

    def _redis(self) -> redis.Redis:
        import redis

        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=10)

    def flush_redis(self, *, quiet: bool = False) -> None:
        client = self._redis()
        try:
            stale = client.dbsize()
            client.flushdb()
        except Exception as exc:
            raise SystemExit(
                f"Redis is not reachable at {self.redis_url} ({exc}). The benchmarks need the local Redis "
                "(pass --redis / --redis-db to use another)."
            ) from exc
        finally:
            client.close()
        if stale and not quiet:
            log(f"(flushed {stale} stale keys from {self.redis_url})")

    def prepare(self) -> None:
        log(f"Temporary VAR_DIR: {self.var_dir}   Redis: {self.redis_url}")
        self.flush_redis()
        self.run_manage(["migrate", "--noinput"], quiet=True)

    def run_manage(
        self, argv: list[str], *, quiet: bool = False, timeout: float | None = None, env: dict | None = None
    ) -> str:
        cmd = [venv_python(), "manage.py", *argv]
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env={**self.env, **(env or {})},
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
        )
        self._subprocs.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            stop_process_group(proc, grace=5)
            self._subprocs.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed with code {proc.returncode}:\n{(out or '')[-3000:]}")
        return out

    def import_images(
        self, source: Path, *, extra: list[str] | None = None, timeout: float | None = None
    ) -> dict:
        """`manage.py import_images SOURCE` (waits until searchable); its progress bar shows on
        stderr. Returns the wall time, the moment storing ended and the command's summary."""
        cmd = [venv_python(), "manage.py", "import_images", str(source), *(extra or [])]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._subprocs.append(proc)
        lines, stored_at = [], None
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("Imported ") and stored_at is None:
                    stored_at = time.perf_counter() - started
            proc.wait(timeout=timeout)
        finally:
            stop_process_group(proc, grace=5)
            self._subprocs.remove(proc)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(
                f"import_images failed with code {proc.returncode}:\n" + "\n".join(lines[-20:])
            )
        summary = {"seconds": seconds, "stored_seconds": stored_at, "output": lines}
        text = "\n".join(lines)
        m = re.search(r"Imported (\d+) new images, (\d+) already present, (\d+) refused", text)
        if m:
            summary.update(new=int(m[1]), duplicates=int(m[2]), refused=int(m[3]))
        m = re.search(r"All (\d+) images are searchable \((\d+) failed\)", text)
        if m:
            summary.update(searchable=int(m[1]), failed=int(m[2]))
        return summary

    # -- the app --

    def start(self, timeout: float = 300) -> None:
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - runapp writes to it until stop() closes it
        log(f"Starting the app on {self.base_url} (log: {self.log_path})")
        self.proc = subprocess.Popen(
            [venv_python(), "manage.py", "runapp", "--port", str(self.port)],
            cwd=self.root,
            env=self.env,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        api = Api(self.base_url, timeout=10)
        while True:
            self._remember_children()
            if self.proc.poll() is not None:
                raise RuntimeError(f"runapp exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The app did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            try:
                status, _ = api.request("GET", "/")
                if status == 200:
                    break
            except OSError:
                pass
            api.close()
            time.sleep(0.5)
        api.close()
        # import_images only queues work: wait until both Celery workers consume.
        while True:
            self._remember_children()
            text = self.log_path.read_text(errors="replace")
            if re.search(r"embed@\S+ ready\.", text) and re.search(r"index@\S+ ready\.", text):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"runapp exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"The Celery workers were not ready within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.3)
        self._remember_children()
        log("App ready (web + embed worker + index worker).")

    def wait_until_settled(self, timeout: float = 900, quiet_cpu: float = 0.15) -> float:
        """Wait until the work an import leaves behind is done: the embed worker's queues are
        empty (`embed_later` keeps each photo's local features after it is searchable) and the
        app's processes used under `quiet_cpu` CPU seconds in the last second. Searches
        measured meanwhile would share the cores with it. Returns the seconds waited."""
        from gallery import queues  # late: the harness imports no app code at module level

        started = time.monotonic()
        client, cpu = self._redis(), None
        while time.monotonic() - started < timeout:
            waiting = sum(int(client.llen(q)) for q in queues.EMBED_WORKER)
            pids = list(descendants(self.proc.pid)) if self.proc is not None else []
            now = sum(proc_cpu_seconds(pid) or 0.0 for pid in pids)
            if not waiting and cpu is not None and now - cpu < quiet_cpu:
                break
            cpu = now
            time.sleep(1.0)
        return time.monotonic() - started

    def _remember_children(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._children.update(descendants(self.proc.pid))

    def _children_alive(self) -> bool:
        return any(proc_alive(pid, start) for pid, (_, start) in self._children.items())

    def identify_pool_children(self, timeout: float = 10) -> dict[int, set[int]]:
        """Ask the Celery workers (`celery inspect stats`) which of their child processes are
        the prefork pool, so that app_processes() can tell them from a beat process embedded
        with -B (also a child of the worker). Returns worker main pid -> pool pids ({} when the
        workers do not answer; children then stay "child")."""
        cmd = [str(Path(venv_python()).parent / "celery"), "-A", "searchsite", "inspect", "stats", "--json"]
        try:
            out = subprocess.run(
                [*cmd, "-t", str(timeout)],
                cwd=self.root,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout + 60,
            )
            stats = json.loads(out.stdout) if out.returncode == 0 else {}
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
            stats = {}
        pools = {
            int(s["pid"]): {int(x) for x in s.get("pool", {}).get("processes", [])}
            for s in stats.values()
            if isinstance(s, dict) and s.get("pid")
        }
        self._pool_pids.update(pools)
        for role, procs in self.app_processes().items():
            main = next((pid for pid, _, kind in procs if kind == "main"), None)
            if main in pools and role.endswith("_worker"):
                self._beat_pids |= {
                    pid for pid, _, kind in procs if kind != "main" and pid not in pools[main]
                }
        return pools

    def app_processes(self) -> dict[str, list[tuple[int, str, str]]]:
        """The app's processes by role, from runapp's children: "web" (the gunicorn worker
        processes), "web_master", "embed_worker" and "index_worker" (each Celery worker's main
        process and its prefork children), "embed_beat" (a beat embedded in a worker with -B,
        once identify_pool_children() has told it apart; before that it counts as a "child" of
        its worker), "redis" (a private broker, if runapp started one). Each as (pid, start
        time, kind) with kind "main", "pool" or "child" (a child not identified)."""
        if self.proc is None or self.proc.poll() is not None:
            return {}
        table = proc_table()
        children = _children_by_parent(table)
        roles: dict[str, list[tuple[int, str, str]]] = {}
        for pid in sorted(children.get(self.proc.pid, [])):
            self._add_child_roles(roles, pid, table, children)
        return roles

    def _add_child_roles(
        self,
        roles: dict[str, list[tuple[int, str, str]]],
        pid: int,
        table: dict[int, tuple[int, int, str]],
        children: dict[int, list[int]],
    ) -> None:
        """Tell what one direct child of runapp is (gunicorn, a Celery worker, a private Redis)
        and add its processes to `roles`; any other child is left out."""
        argv = proc_argv(pid)
        names = [Path(a).name for a in argv[:2]]
        if "gunicorn" in names:
            roles["web_master"] = [(pid, table[pid][2], "main")]
            roles["web"] = [(c, table[c][2], "child") for c in _below(children, pid) if c in table]
        elif "celery" in names and "-Q" in argv[:-1]:
            self._add_celery_worker_roles(roles, pid, argv, table, _below(children, pid))
        elif names and names[0] == "redis-server":
            roles["redis"] = [(pid, table[pid][2], "main")]

    def _add_celery_worker_roles(
        self,
        roles: dict[str, list[tuple[int, str, str]]],
        pid: int,
        argv: list[str],
        table: dict[int, tuple[int, int, str]],
        below: list[int],
    ) -> None:
        """A Celery worker's main process and its children as "<queue>_worker", apart from a
        beat embedded with -B (once identify_pool_children() has told it apart): "<queue>_beat"."""
        queue = argv[argv.index("-Q") + 1].split(",")[0]  # the worker's first queue names it
        # Without -B every child is the pool's; with it, only once the beat is known.
        known = pid in self._pool_pids or not ({"-B", "--beat"} & set(argv))
        procs = [(pid, table[pid][2], "main")]
        for c in below:
            if c not in table:
                continue
            if c in self._beat_pids:
                roles.setdefault(f"{queue}_beat", []).append((c, table[c][2], "main"))
            else:
                procs.append((c, table[c][2], "pool" if known else "child"))
        roles[f"{queue}_worker"] = procs

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop runapp and everything it started. runapp stops its children on SIGINT (it
        catches KeyboardInterrupt); a plain SIGTERM would kill it without that cleanup, so SIGINT
        goes first, then SIGTERM and SIGKILL to its group, and last any process group of its
        children still alive (they run in their own sessions)."""
        if self.proc is None:
            return
        self._remember_children()
        if self.proc.poll() is None:
            stop_process_group(self.proc, first=signal.SIGINT, grace=30)
        alive = {pid: pgid for pid, (pgid, start) in self._children.items() if proc_alive(pid, start)}
        leftovers = set(alive.values()) - {self.proc.pid}
        if leftovers:
            names = ", ".join(f"{pid} {proc_cmd_name(pid)}" for pid in sorted(alive))
            log(
                f"(runapp exited with code {self.proc.returncode} and left {len(leftovers)} process group(s) "
                f"running: {names}; terminating them)"
            )
            for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                for pgid in leftovers:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, sig)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and self._children_alive():
                    time.sleep(0.2)
                if not self._children_alive():
                    break
        self.proc = None
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def close(self) -> None:
        try:
            for proc in list(self._subprocs):
                stop_process_group(proc, grace=5)
            self.stop()
        finally:
            if self._django:
                with contextlib.suppress(Exception):
                    from django.db import connections

                    connections.close_all()
            with contextlib.suppress(SystemExit, Exception):
                self.flush_redis(quiet=True)
            if self.keep:
                log(f"Kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- in-process Django (the embedder baseline, bulk rows, the index) --

    def setup_django(self) -> None:
        """Configure Django in this process with the run's environment (once per process)."""
        for key in (*_ISOLATED_KEYS, "DJANGO_SETTINGS_MODULE"):
            if key in self.env:
                os.environ[key] = self.env[key]
            else:
                os.environ.pop(key, None)
        if str(PROJECT_ROOT) not in sys.path:
            sys.path.insert(0, str(PROJECT_ROOT))
        import django

        django.setup()
        self._django = True


@contextlib.contextmanager
def checkout_at(rev: str) -> Iterator[Path]:
    """A throw-away checkout of this repository at `rev` (a git worktree sharing this
    checkout's .venv), removed afterwards: an older version of the app, run beside this one."""
    where = Path(tempfile.mkdtemp(prefix="bench-checkout-")) / "app"
    subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", "-q", str(where), rev], check=True
    )
    try:
        (where / ".venv").symlink_to(PROJECT_ROOT / ".venv")
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(where)], check=False
        )
        shutil.rmtree(where.parent, ignore_errors=True)
