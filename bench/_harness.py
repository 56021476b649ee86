"""Shared harness for the benchmarks in bench/: an isolated copy of the app, a small HTTP
client, statistics and the results file.

Every run gets a fresh temporary VAR_DIR (SQLite database, media, index) and its own Redis
database number (flushed before and after), so it never touches the developer's data. The app
is `manage.py runapp` in its own process group; it is always stopped in a `finally` (also on
Ctrl-C, SIGTERM or an error), and so is every process it started.

Only the standard library is used for HTTP (`requests` is not a dependency of the project)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import http.cookies
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = PROJECT_ROOT / "bench"
RESULTS_FILE = BENCH_DIR / "results.jsonl"
DEFAULT_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
if str(PROJECT_ROOT) not in sys.path:  # benches import shared helpers from the project
    sys.path.insert(0, str(PROJECT_ROOT))
DEFAULT_REDIS = "redis://127.0.0.1:6379"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

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


def log(msg: str = "") -> None:
    print(msg, flush=True)


def venv_python() -> str:
    candidate = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


# --- command line, datasets, signals ----------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser, *, redis_db: int) -> None:
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DEFAULT_DATASETS,
        help=f"folder holding the shared datasets (default: {DEFAULT_DATASETS})",
    )
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis server (default: %(default)s)")
    parser.add_argument(
        "--redis-db",
        type=int,
        default=redis_db,
        help="Redis database number for this run, flushed before and after (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="port for the app (default: a free one)")
    parser.add_argument("--seed", type=int, default=20241122, help="random seed (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIR (for debugging)")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="JSON-lines file to append to")


def require_dataset(datasets: Path, name: str) -> Path:
    path = Path(datasets) / name
    if not path.is_file():
        sys.exit(
            f"Dataset not found: {path}\n"
            f"The benchmarks read the shared datasets in place; pass --datasets DIR if they are elsewhere."
        )
    return path


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C, so `finally` blocks stop the app and remove temp dirs.
    SIGINT gets Python's handler even when the shell started us with it ignored (a background
    job): otherwise runapp would inherit the ignored SIGINT and could not be stopped cleanly."""
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zip_image_names(zip_path: Path, prefix: str = "") -> list[str]:
    """Sorted image entries of a ZIP (as import_images would take them), optionally under `prefix`."""
    import zipfile
    from pathlib import PurePosixPath

    with zipfile.ZipFile(zip_path) as zf:
        return sorted(
            i.filename
            for i in zf.infolist()
            if not i.is_dir()
            and i.filename.startswith(prefix)
            and PurePosixPath(i.filename).suffix.lower() in IMAGE_EXTENSIONS
            and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(i.filename).parts)
        )


def write_subset_zip(zip_path: Path, names: list[str], dest: Path) -> Path:
    """A temporary ZIP holding only `names` (same paths), stored without recompression."""
    import zipfile

    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for name in names:
            out.writestr(name, src.read(name))
    return dest


# --- statistics ---------------------------------------------------------------------------------


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize_ms(seconds) -> dict:
    """count, mean, p50/p95/p99, min, max of durations given in seconds, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "mean_ms": round(sum(ms) / len(ms), 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def fmt_summary(s: dict) -> str:
    if not s.get("n"):
        return "no samples"
    return (
        f"p50 {s['p50_ms']:.1f} ms  p95 {s['p95_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  "
        f"mean {s['mean_ms']:.1f} ms  (n={s['n']}, min {s['min_ms']:.1f}, max {s['max_ms']:.1f})"
    )


# --- results file -------------------------------------------------------------------------------


def git_commit() -> tuple[str | None, bool | None]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return commit, dirty


def write_result(path: Path, script: str, params: dict, figures: dict, *, full_size: bool) -> dict:
    """Append one JSON line: script, timestamp, git commit, machine, parameters, figures."""
    commit, dirty = git_commit()
    record = {
        "script": script,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_dirty": dirty,
        "full_size": full_size,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "params": params,
        "figures": figures,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    log(f"\nAppended the results to {path}")
    return record


# --- HTTP client ---------------------------------------------------------------------------------


def encode_multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """files: name -> (filename, bytes, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data, ctype) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def content_type(filename: str) -> str:
    ext = Path(filename).suffix.lower()
    return {".png": "image/png", ".webp": "image/webp"}.get(ext, "image/jpeg")


class ApiError(RuntimeError):
    pass


class Api:
    """One keep-alive connection (use one instance per thread). Reconnects once when the server
    closed an idle connection."""

    def __init__(self, base_url: str, timeout: float = 300):
        url = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = url.hostname, url.port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.last_headers: http.client.HTTPMessage | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                self.last_headers = resp.headers
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (
                http.client.RemoteDisconnected,
                http.client.CannotSendRequest,
                ConnectionResetError,
                BrokenPipeError,
            ):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, *, fields=None, files=None, ok=(200,)):
        body, headers = None, {}
        if files is not None or fields is not None:
            body, ctype = encode_multipart(fields or {}, files or {})
            headers["Content-Type"] = ctype
        status, data = self.request(method, path, body, headers)
        try:
            payload = json.loads(data) if data else None
        except json.JSONDecodeError:
            payload = None
        if status not in ok:
            raise ApiError(f"{method} {path} -> HTTP {status}: {data[:300]!r}")
        return status, payload

    def search(self, data: bytes, filename: str = "query.jpg", k: int = 10, category: str = "") -> dict:
        fields = {"k": str(k)}
        if category:
            fields["category"] = category
        _, payload = self.json(
            "POST", "/api/search", fields=fields, files={"image": (filename, data, content_type(filename))}
        )
        return payload

    def upload(self, data: bytes, filename: str, title: str = "", category: str = "") -> tuple[int, dict]:
        return self.json(
            "POST",
            "/api/images",
            fields={"title": title, "category": category},
            files={"image": (filename, data, content_type(filename))},
            ok=(200, 201),
        )

    def image(self, image_id: int) -> dict:
        return self.json("GET", f"/api/images/{image_id}")[1]


class Session(Api):
    """An Api that keeps cookies like a browser (enough for Django's session and CSRF cookies),
    for the admin pages. One instance per thread."""

    def __init__(self, base_url: str, timeout: float = 300):
        super().__init__(base_url, timeout)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.last_headers = None
        status, data = super().request(method, path, body, headers)
        for raw in (self.last_headers.get_all("Set-Cookie") if self.last_headers else None) or []:
            jar = http.cookies.SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                if not morsel.value or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return status, data

    def location(self) -> str:
        """The Location header of the last response (a redirect's target), or ''."""
        return (self.last_headers.get("Location") if self.last_headers else None) or ""

    def csrf_token(self, path: str) -> str:
        """The `csrfmiddlewaretoken` of the form on the page at `path`."""
        status, data = self.request("GET", path)
        m = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', data)
        if status != 200 or not m:
            raise ApiError(f"GET {path} -> HTTP {status}: no CSRF token in the page")
        return m[1].decode()

    def post_form(self, path: str, fields: dict) -> tuple[int, bytes]:
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path: str, fields: dict, files: dict) -> tuple[int, bytes]:
        body, ctype = encode_multipart(fields, files)
        return self.request("POST", path, body, {"Content-Type": ctype})

    def admin_login(self, username: str, password: str, prefix: str = "/admin/") -> None:
        token = self.csrf_token(f"{prefix}login/")
        status, data = self.post_form(
            f"{prefix}login/",
            {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": prefix},
        )
        if status != 302 or "sessionid" not in self.cookies:
            raise ApiError(f"admin login as {username!r} failed (HTTP {status}): {data[:300]!r}")


# --- processes ----------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, str]]:
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
    table = _proc_table()
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


def _alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    rest = stat[stat.rfind(")") + 2 :].split()
    return rest[19] == start and rest[0] != "Z"


def _cmd_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:6] if a]
    return " ".join(w for w in words if not w.startswith("python"))[:60]


def _argv(pid: int) -> list[str]:
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


def stop_process_group(proc: subprocess.Popen, *, first=signal.SIGTERM, grace: float = 20.0) -> None:
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


class BenchApp:
    """A private, throw-away instance of the app.

    with BenchApp("neardup", args) as app:
        app.prepare()           # flush the Redis db, migrate the temporary database
        app.start()             # runapp; returns once GET / answers and both workers are ready
        app.import_images(src)  # manage.py import_images with the same environment
    # stopped, Redis db flushed, temp dir removed (unless --keep)
    """

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
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

    def _build_env(self) -> dict:
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
        )
        return env

    @property
    def index_dir(self) -> Path:
        return self.var_dir / "index"

    def __enter__(self) -> BenchApp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- set-up --

    def _redis(self):
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
    ):
        cmd = [venv_python(), "manage.py", *argv]
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
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
            cwd=PROJECT_ROOT,
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
        self._log_fh = open(self.log_path, "ab")
        log(f"Starting the app on {self.base_url} (log: {self.log_path})")
        self.proc = subprocess.Popen(
            [venv_python(), "manage.py", "runapp", "--port", str(self.port)],
            cwd=PROJECT_ROOT,
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

    def _remember_children(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._children.update(descendants(self.proc.pid))

    def _children_alive(self) -> bool:
        return any(_alive(pid, start) for pid, (_, start) in self._children.items())

    def identify_pool_children(self, timeout: float = 10) -> dict[int, set[int]]:
        """Ask the Celery workers (`celery inspect stats`) which of their child processes are
        the prefork pool, so that app_processes() can tell them from a beat process embedded
        with -B (also a child of the worker). Returns worker main pid -> pool pids ({} when the
        workers do not answer; children then stay "child")."""
        cmd = [str(Path(venv_python()).parent / "celery"), "-A", "searchsite", "inspect", "stats", "--json"]
        try:
            out = subprocess.run(
                [*cmd, "-t", str(timeout)],
                cwd=PROJECT_ROOT,
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
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)

        def below(pid: int) -> list[int]:
            found, todo = [], [pid]
            while todo:
                for child in children.get(todo.pop(), []):
                    found.append(child)
                    todo.append(child)
            return sorted(found)

        roles: dict[str, list[tuple[int, str, str]]] = {}
        for pid in sorted(children.get(self.proc.pid, [])):
            argv = _argv(pid)
            names = [Path(a).name for a in argv[:2]]
            if "gunicorn" in names:
                roles["web_master"] = [(pid, table[pid][2], "main")]
                roles["web"] = [(c, table[c][2], "child") for c in below(pid) if c in table]
            elif "celery" in names and "-Q" in argv[:-1]:
                queue = argv[argv.index("-Q") + 1]
                # Without -B every child is the pool's; with it, only once the beat is known.
                known = pid in self._pool_pids or not ({"-B", "--beat"} & set(argv))
                procs = [(pid, table[pid][2], "main")]
                for c in below(pid):
                    if c not in table:
                        continue
                    if c in self._beat_pids:
                        roles.setdefault(f"{queue}_beat", []).append((c, table[c][2], "main"))
                    else:
                        procs.append((c, table[c][2], "pool" if known else "child"))
                roles[f"{queue}_worker"] = procs
            elif names and names[0] == "redis-server":
                roles["redis"] = [(pid, table[pid][2], "main")]
        return roles

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
        alive = {pid: pgid for pid, (pgid, start) in self._children.items() if _alive(pid, start)}
        leftovers = set(alive.values()) - {self.proc.pid}
        if leftovers:
            names = ", ".join(f"{pid} {_cmd_name(pid)}" for pid in sorted(alive))
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


# --- memory of the app's processes ---------------------------------------------------------------


class MemorySampler:
    """Samples VmHWM and VmRSS (/proc/<pid>/status) of the app's processes by role every
    `interval` seconds in a thread (call `sample()` once more at the end, before the app stops).

    Per role: `peak_hwm_kb` is the largest sum, at one sample, of the VmHWM of the role's live
    processes (a Celery worker's main process plus its prefork children; the gunicorn worker
    processes); VmHWM only grows, so this is the end-of-run sum unless a process was replaced,
    in which case the replaced process's peak is still kept. It counts pages shared between a
    parent and its forked child twice, so it bounds the real peak from above. `peak_rss_kb` is
    the largest sampled sum of VmRSS (a lower bound between samples)."""

    def __init__(self, app: BenchApp, interval: float = 1.0):
        self.app, self.interval = app, interval
        self.lock = threading.Lock()
        self.processes: dict[tuple[int, str], dict] = {}
        self.peak_hwm: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}
        self.current: dict[str, dict] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, dict]:
        """One sample; returns role -> {"hwm_kb", "rss_kb", "processes"} of the live processes."""
        roles = self.app.app_processes()
        current = {}
        with self.lock:
            for role, procs in roles.items():
                hwm = rss = alive = 0
                for pid, start, kind in procs:
                    mem = proc_memory_kb(pid)
                    if mem is None:
                        continue
                    alive += 1
                    hwm += mem["VmHWM"]
                    rss += mem.get("VmRSS", 0)
                    rec = self.processes.setdefault(
                        (pid, start), {"role": role, "pid": pid, "kind": kind, "cmd": _cmd_name(pid)}
                    )
                    rec["hwm_kb"] = max(rec.get("hwm_kb", 0), mem["VmHWM"])
                    rec["rss_kb_max"] = max(rec.get("rss_kb_max", 0), mem.get("VmRSS", 0))
                if alive:
                    self.peak_hwm[role] = max(self.peak_hwm.get(role, 0), hwm)
                    self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)
                    current[role] = {"hwm_kb": hwm, "rss_kb": rss, "processes": alive}
            self.current = current
            self.samples += 1
        return current

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a process vanishing mid-read: next sample
                self.sample()

    def start(self) -> MemorySampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        """role -> peak figures in MiB, with every process seen."""
        mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
        with self.lock:
            out = {}
            for role in sorted(self.peak_hwm):
                procs = [p for p in self.processes.values() if p["role"] == role]
                out[role] = {
                    "peak_hwm_mib": mib(self.peak_hwm[role]),
                    "peak_rss_mib": mib(self.peak_rss.get(role, 0)),
                    "max_process_hwm_mib": mib(max((p["hwm_kb"] for p in procs), default=0)),
                    "processes": [
                        {"pid": p["pid"], "kind": p["kind"], "hwm_mib": mib(p["hwm_kb"]), "cmd": p["cmd"]}
                        for p in sorted(procs, key=lambda p: (p["kind"] != "main", p["pid"]))
                    ],
                }
            out["samples"] = self.samples
            out["interval_s"] = self.interval
            return out


# --- concurrency --------------------------------------------------------------------------------


def run_concurrent(clients: int, total: int, work) -> tuple[list, float]:
    """Run `work(api_index)` `total` times over `clients` threads; returns (results, wall seconds).
    `work` gets the thread number and returns one result; exceptions are returned as results."""
    results: list = []
    lock = threading.Lock()
    counter = iter(range(total))
    barrier = threading.Barrier(clients + 1)

    def worker(n: int):
        barrier.wait()
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            try:
                value = work(n)
            except Exception as exc:  # noqa: BLE001 - counted as an error by the caller
                value = exc
            with lock:
                results.append(value)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started
