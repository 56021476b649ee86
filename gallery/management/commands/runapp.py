"""python manage.py runapp: the web server, the Celery workers and (when needed) a broker,
started together and stopped together by Ctrl-C.

Broker: CELERY_BROKER_URL / REDIS_URL when reachable; otherwise a private `redis-server`
when one is installed (REDIS_SERVER names the binary; empty disables it); otherwise Kombu's
filesystem transport (embedded, no server)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings
from django.core.management.base import BaseCommand

from gallery import queues


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except Exception:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Command(BaseCommand):
    help = "Run the web server on 127.0.0.1:PORT with the Celery workers (and a broker if none is reachable)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))

    def handle(self, port, host, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
        # Ctrl-C, SIGTERM and SIGHUP all stop every child (they run in their own sessions).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._interrupt)
        env = os.environ.copy()
        env["DJANGO_SETTINGS_MODULE"] = "searchsite.settings"
        env["CELERY_BROKER_URL"] = self.choose_broker(env)
        python = sys.executable
        bindir = Path(python).parent
        web_env = {
            **env,
            "TORCH_THREADS": env.get("WEB_TORCH_THREADS", "1"),  # one query, many threads
            # glibc gives each thread that allocates its own arena (up to 8 per core): a web
            # process's 8 threads kept freed pages of each. After 300 searches with different
            # photos the largest web process held 357 MB with 2 arenas, 526 MB with 16, and 8
            # clients were no slower (bench/search_latency.py --varied, the same hour).
            "MALLOC_ARENA_MAX": env.get("MALLOC_ARENA_MAX", "2"),
        }
        if int(env.get("WEB_WORKERS", "2")) > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several web processes: /metrics counts every one's requests (emptied per start).
            metrics_dir = Path(settings.VAR_DIR) / "prometheus"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            web_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        celery = [str(bindir / "celery"), "-A", "searchsite", "worker", "--loglevel", "INFO"]
        # The served models' ONNX graphs, recorded before the web starts: it then embeds
        # queries without loading torch (about 700 MB less). A failure only costs that.
        subprocess.run(
            [python, "manage.py", "prepare_embedders"], env=env, cwd=settings.BASE_DIR, check=False
        )
        try:
            self.start(
                "web",
                [
                    str(bindir / "gunicorn"),
                    "-c",
                    str(Path(settings.BASE_DIR) / "searchsite" / "gunicorn.conf.py"),
                    "--bind",
                    f"{host}:{port}",
                    "searchsite.wsgi",
                ],
                web_env,
            )
            beat = ["-B", "-s", str(Path(settings.VAR_DIR) / "celerybeat-schedule")]
            # Two embedding processes of one thread each: while one decodes, hashes and
            # stores a batch (Python, one core), the other's network keeps the second core
            # busy; one process of two threads left a core idle for a third of an import.
            processes = max(1, int(env.get("EMBED_PROCESSES", "2")))
            # Bulk work yields the cores to searches (a visitor waits on those).
            bulk_env = {**env, "WORKER_NICE": env.get("WORKER_NICE", "10")}
            embed_env = {
                **bulk_env,
                "TORCH_THREADS": env.get("EMBED_TORCH_THREADS", "1" if processes > 1 else "2"),
            }
            self.start(
                "embed-worker",
                [*celery, "-Q", ",".join(queues.EMBED_WORKER), "-c", str(processes), "-n", "embed@%h", *beat],
                embed_env,
            )
            # The index has a single writer: its own queues, one process.
            index_queues = ",".join(queues.INDEX_WORKER)
            self.start("index-worker", [*celery, "-Q", index_queues, "-c", "1", "-n", "index@%h"], env)
            # Training, evaluation and re-embedding for a new model: long runs, never in the
            # way of uploads.
            self.start(
                "train-worker",
                [*celery, "-Q", ",".join(queues.TRAIN_WORKER), "-c", "1", "-n", "train@%h"],
                bulk_env,
            )
            self.stdout.write(
                self.style.SUCCESS(f"Search by image: http://{host}:{port}/  (Ctrl-C stops everything)")
            )
            self.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop_all()

    def _interrupt(self, signum, frame):
        raise KeyboardInterrupt

    def choose_broker(self, env) -> str:
        url = env.get("CELERY_BROKER_URL") or settings.REDIS_URL
        if not url.startswith("redis"):
            return url
        if redis_reachable(url):
            self.stdout.write(f"Broker: Redis at {url}")
            return url
        self.stdout.write(self.style.WARNING(f"Redis is not reachable at {url}."))
        server = shutil.which(env.get("REDIS_SERVER", "redis-server") or "-")
        if server:
            port = free_port()
            data_dir = Path(settings.VAR_DIR) / "redis"
            data_dir.mkdir(parents=True, exist_ok=True)
            self.start(
                "redis",
                [
                    server,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(data_dir),
                ],
                env,
                quiet=True,
            )
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(50):
                if redis_reachable(url):
                    self.stdout.write(f"Broker: started a private redis-server at {url}")
                    return url
                time.sleep(0.1)
            self.stdout.write(self.style.WARNING("The private redis-server did not start."))
        broker_dir = Path(settings.VAR_DIR) / "broker"
        for sub in ("out", "processed"):
            (broker_dir / sub).mkdir(parents=True, exist_ok=True)
        env["BROKER_DIR"] = str(broker_dir)
        self.stdout.write("Broker: embedded (files under var/broker); install Redis for production use.")
        return "filesystem://"

    def start(self, name, cmd, env, quiet=False):
        out = subprocess.DEVNULL if quiet else None
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
        self.children.append((name, proc))
        return proc

    def wait(self):
        while True:
            for name, proc in self.children:
                code = proc.poll()
                if code is not None:
                    self.stderr.write(f"{name} exited with code {code}; stopping everything.")
                    raise SystemExit(1)
            time.sleep(0.5)

    def stop_all(self):
        """SIGTERM to each child's main process only: a Celery worker then stops its own pool
        (SIGTERM to the whole group killed the pool processes, and the worker forked and warmed
        new ones during its warm shutdown), and gunicorn its workers. Whatever is left after
        15 s is killed with its whole group, and every child is reaped before we exit."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop within 15 s of SIGTERM; killing it.")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child, if still there, and any orphan of it
            proc.wait()
