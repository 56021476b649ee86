"""Beyond one machine (`VECTOR_BACKEND=pgvector`): two app instances (`manage.py runapp`: web,
embed, index and train workers each), as two machines would run them, share one PostgreSQL
with pgvector (PyPI's `pgserver`: Debian's PostgreSQL has no pgvector), one Redis and one
media folder; each keeps its own local folder. Every upload, made on either, is searchable
from both; a category filter and a removal hold on both."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest
import requests
from PIL import Image as PILImage

from tests.conftest import dataset
from tests.test_runapp import free_port, spawn_runapp

ROOT = Path(__file__).resolve().parent.parent


_SCAN = """
import json
from gallery import services
from gallery.models import DuplicateScan
scan = DuplicateScan.objects.create()
services.duplicate_scan_run(scan.pk)
print(json.dumps([sorted(int(pk) for pk, _ in row.members) for row in scan.groups.all()]))
"""


@pytest.fixture(scope="module")
def postgres_with_pgvector(tmp_path_factory):
    """A private PostgreSQL 16 with pgvector 0.6.2 (pgserver), and a fresh database in it."""
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pgdata")), cleanup_mode="stop")
    socket_dir = server.get_uri().split("host=", 1)[1]
    name = f"gallery_machines_{os.getpid()}"
    with psycopg.connect(host=socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield socket_dir, name, f"postgres://postgres@/{name}?host={socket_dir}"
    server.cleanup()


def _machine(root: Path, name: str, shared_env: dict[str, str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    local = root / name
    local.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "CELERY_", "REDIS_URL"))}
    env.update(shared_env, VAR_DIR=str(local / "var"), INDEX_DIR=str(local / "var" / "index"))
    log = local / "runapp.log"
    return spawn_runapp(env, log, port), f"http://127.0.0.1:{port}", log


def _ready(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(base + "/readyz", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{base} never became ready:\n" + log.read_text()[-4000:])


def _photos(count: int) -> list[bytes]:
    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[::250][:count]
        return [zf.read(n) for n in names]


def _first(base: str, data: bytes, **fields: str) -> dict:
    response = requests.post(base + "/api/search", files={"image": ("q.jpg", data)}, data=fields, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    return results[0] if results else {}


@pytest.fixture
def machines_broker(redis_url):
    """A Redis database of their own: the session's test worker consumes every queue of the
    session's database, and would take (and run against its own database) the machines'
    tasks; their beat's tasks left behind would keep it busy after them."""
    import redis

    base, _, number = redis_url.rpartition("/")
    url = f"{base}/{(int(number or 0) + 1) % 16}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def two_machines(postgres_with_pgvector, machines_broker, tmp_path):
    """Two running app instances on the shared database, broker and media folder."""
    _, _, url = postgres_with_pgvector
    redis_url = machines_broker
    shared = {
        "DATABASE_URL": url,
        "VECTOR_BACKEND": "pgvector",
        "CELERY_BROKER_URL": redis_url,
        "REDIS_URL": redis_url,
        "MEDIA_ROOT": str(tmp_path / "shared-media"),
        "THROTTLE_UPLOAD": "off",
        "THROTTLE_SEARCH": "off",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env={**os.environ, **shared, "VAR_DIR": str(tmp_path / "migrate")},
        check=True,
        capture_output=True,
    )
    machines = [_machine(tmp_path, name, shared) for name in ("machine-a", "machine-b")]
    try:
        for proc, base, log in machines:
            _ready(base, proc, log)
        yield [base for _, base, _ in machines], [log for _, _, log in machines], shared
    finally:
        for proc, _, _ in machines:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, _, _ in machines:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_indexed(base: str, ids: set[int], log: Path) -> None:
    deadline = time.monotonic() + 240
    waiting = set(ids)
    while waiting and time.monotonic() < deadline:
        for image_id in list(waiting):
            status = requests.get(f"{base}/api/images/{image_id}", timeout=30).json()["status"]
            assert status != "failed", status
            if status == "indexed":
                waiting.discard(image_id)
        time.sleep(0.5)
    assert not waiting, f"never indexed: {waiting}\n" + log.read_text()[-3000:]


def test_two_machines_share_one_postgres_index(two_machines, postgres_with_pgvector, tmp_path):
    (a, b), logs, shared = two_machines
    socket_dir, database, _ = postgres_with_pgvector
    uploaded: dict[int, tuple[bytes, str]] = {}
    for n, data in enumerate(_photos(8)):
        category = ("shoes", "bags")[n // 4]
        created = requests.post(
            (a, b)[n % 2] + "/api/images",
            files={"image": (f"p{n}.jpg", data)},
            data={"title": f"photo {n}", "category": category},
            timeout=60,
        )
        assert created.status_code == 201, created.text
        uploaded[created.json()["id"]] = (data, category)
    _wait_indexed(a, set(uploaded), logs[1])
    for image_id, (data, category) in uploaded.items():
        for base in (a, b):
            first = _first(base, data)
            assert (first.get("id"), first.get("match")) == (image_id, "exact"), (base, image_id, first)
            other = "bags" if category == "shoes" else "shoes"
            assert _first(base, data, category=other).get("id") != image_id
    similar = requests.get(f"{b}/api/images/{next(iter(uploaded))}/similar", timeout=30).json()
    assert similar["results"] and all(r["id"] in uploaded for r in similar["results"])
    # The vectors are in the database, one row per image and served model, under an HNSW index.
    with psycopg.connect(host=socket_dir, user="postgres", dbname=database) as conn:
        rows = conn.execute("SELECT count(DISTINCT image_id) FROM gallery_vector").fetchone()
        hnsw = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'gallery_vector' AND indexdef LIKE '%hnsw%'"
        ).fetchone()
    assert rows == (len(uploaded),) and hnsw is not None and hnsw[0] >= 1
    # The staff's near-duplicate scan reads the database's index too: a re-encoded, enlarged
    # copy uploaded on the other machine is grouped with its original.
    first_id, (first_data, _) = next(iter(uploaded.items()))
    picture = PILImage.open(io.BytesIO(first_data)).convert("RGB")
    copy = io.BytesIO()
    picture.resize((picture.width * 2, picture.height * 2)).save(copy, "JPEG", quality=70)
    created = requests.post(b + "/api/images", files={"image": ("copy.jpg", copy.getvalue())}, timeout=60)
    assert created.status_code == 201, created.text
    _wait_indexed(a, {created.json()["id"]}, logs[1])
    # Both web processes loaded the hashes with their first search: the new upload's hash
    # reaches them from the table within about a second (re-encoded: not the same bytes).
    again = io.BytesIO()
    PILImage.open(copy).save(again, "JPEG", quality=92)
    time.sleep(1.5)
    for base in (a, b):
        first = _first(base, again.getvalue())
        assert (first.get("id"), first.get("match")) == (created.json()["id"], "exact"), (base, first)
    # The writer noted the upload's original by its hash and vector in the database.
    noted = requests.get(f"{a}/api/images/{created.json()['id']}", timeout=30).json()
    assert noted["near_duplicate_of"] == first_id, noted
    scan = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", _SCAN],
        cwd=ROOT,
        env={**os.environ, **shared, "VAR_DIR": str(tmp_path / "scan")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert [first_id, created.json()["id"]] in json.loads(scan.stdout.strip().splitlines()[-1]), scan.stdout
    # No index files on either machine: nothing to load, nothing to copy between them.
    files = [p for m in ("machine-a", "machine-b") for p in (tmp_path / m).rglob("index.bin")]
    assert not files, files
    for base in (a, b):
        assert requests.get(base + "/readyz", timeout=30).json()["checks"]["index"] == "ok"


def _script_in_fresh_database(
    postgres, suffix: str, script: str, tmp_path: Path, settings: dict[str, str]
) -> dict:
    """`script` run by `manage.py shell` against a new database of its own (migrated) with
    vectors in pgvector; what it printed last, as JSON."""
    socket_dir, name, url = postgres
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")},
        "DATABASE_URL": url.replace(name, f"{name}_{suffix}"),
        "VECTOR_BACKEND": "pgvector",
        "VAR_DIR": str(tmp_path / "var"),
        **settings,
    }
    with psycopg.connect(host=socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}_{suffix}")
        conn.execute(f"CREATE DATABASE {name}_{suffix}")
    run = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 300}
    migrated = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], **run)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return found


_LOAD = """
import json
import numpy as np
from django.db import connection
from gallery.index.pgvector import PgVectorIndex
from gallery.models import Image

Image.objects.bulk_create(
    Image(pk=i, title="", file=f"{i}.jpg", width=1, height=1, byte_size=1, sha256=f"{i:064x}",
          status=Image.Status.INDEXED)
    for i in range(1, 301)
)
rng = np.random.default_rng(0)
vectors = rng.normal(size=(301, 16)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
index = PgVectorIndex("bulk-test", 16, ef=64)
index.ensure()
index.put([(5, -vectors[5], None)])  # a row from before: replaced
code = bytes(range(32))  # a hash for one row
added = index.load(
    [[(i, vectors[i], code if i == 3 else None) for i in range(1, 151)], [(i, vectors[i], None) for i in range(151, 301)]]
)
with connection.cursor() as cursor:
    cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                   [index._index_name])
    valid = [row[0] for row in cursor.fetchall()]
    cursor.execute("SET enable_seqscan = off")
    cursor.execute("SET enable_bitmapscan = off")
    literal = "[" + ",".join(str(float(x)) for x in vectors[7]) + "]"
    cursor.execute(
        "EXPLAIN SELECT image_id FROM gallery_vector WHERE model_name = 'bulk-test' "
        f"ORDER BY embedding::vector(16) <=> '{literal}'::vector(16) LIMIT 5"
    )
    plan = " ".join(row[0] for row in cursor.fetchall())
    cursor.execute("SELECT image_id, pdq::text FROM gallery_vector WHERE model_name = 'bulk-test' AND pdq IS NOT NULL")
    hashed = [[label, text == "".join(f"{b:08b}" for b in code)] for label, text in cursor.fetchall()]
    stored = index.vector(200)
index.put([(300, vectors[1], None)])  # later rows go into the built index

# A model version being activated (not served): `index_build` loads its stored vectors so.
from gallery import services
from gallery.embedders import ModelRef
from gallery.models import Embedding
from gallery.selectors.search import pgvector_index

Image.objects.filter(pk__lte=40).update(moderation=Image.Moderation.APPROVED)
Embedding.objects.bulk_create(
    Embedding(image_id=i, model_name="bulk-version", dim=16, vector=vectors[i].tobytes()) for i in range(1, 41)
)
ref = ModelRef(name="bulk-version", dim=16, backbone="learned")
built = services.index_build(ref)
version = pgvector_index(ref)
cursor = connection.cursor()
cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
               [version._index_name])
version_valid = [row[0] for row in cursor.fetchall()]
cursor.execute("SELECT pg_try_advisory_xact_lock(hashtext('index bulk-version'))")  # the build let go of it
released = cursor.fetchone()[0]

# Compact vectors: the HNSW index is over the projected rows, the first candidates re-ranked by
# the full vectors (scores are the full cosines); another process reads the projection.
from gallery.index.compact import Projection
small = PgVectorIndex("bulk-compact", 16, ef=64)
small.load([[(i, vectors[i], None) for i in range(1, 301)]], projection=Projection.learn(vectors[1:], 4))
cursor.execute("SET enable_seqscan = off")
cursor.execute(
    "EXPLAIN SELECT image_id FROM gallery_vector WHERE model_name = 'bulk-compact' "
    f"ORDER BY compact::vector(4) <=> '[1,0,0,0]'::vector(4) LIMIT 5"
)
compact_plan = " ".join(row[0] for row in cursor.fetchall())
cursor.execute("RESET enable_seqscan")
elsewhere = PgVectorIndex("bulk-compact", 16, ef=64)
exact = [sorted(range(1, 301), key=lambda i: -float(vectors[i] @ vectors[n]))[:5] for n in (11, 222)]
compact_found = [[label for label, _ in elsewhere.query(vectors[n], 5)] for n in (11, 222)]
compact_score = elsewhere.query(vectors[11], 2)[1][1]
small.put([(300, -vectors[1], None)])
print(json.dumps({
    "added": added, "count": len(index), "valid": valid, "uses_index": index._index_name in plan, "plan": plan,
    "first": [index.query(vectors[n], 3)[0][0] for n in (7, 5, 200)],
    "moved": [label for label, _ in index.query(vectors[1], 2)],
    "hashed": hashed, "stored_exact": bool(np.allclose(stored, vectors[200], atol=1e-6)),
    "built": built, "version_count": len(version), "version_valid": version_valid, "released": released,
    "version_first": version.query(vectors[9], 1)[0][0], "version_dims": version.meta.compact_dims,
    "compact_index": small._index_name, "compact_plan": compact_plan, "exact": exact, "compact_found": compact_found,
    "compact_score": compact_score, "exact_score": float(vectors[11] @ vectors[exact[0][1]]),
    "elsewhere_dims": elsewhere.meta.compact_dims, "put_first": elsewhere.query(-vectors[1], 1)[0][0],
}))
"""


def test_a_model_s_rows_are_loaded_in_bulk_and_its_index_built_after(postgres_with_pgvector, tmp_path):
    """A model version built before its switch: its rows are copied in without its HNSW index
    (one insert at a time into the graph ran at about 110 a second), which is then built once,
    valid and used by searches; rows it had are replaced, later rows go into it."""
    found = _script_in_fresh_database(
        postgres_with_pgvector,
        "load",
        _LOAD,
        tmp_path,
        # the model version built below (40 items) holds compact vectors of 8 numbers
        {"INDEX_COMPACT_MIN_ITEMS": "30", "INDEX_COMPACT_DIMS": "8"},
    )
    assert found["added"] == 300 and found["count"] == 300
    assert found["valid"] == [True] and found["uses_index"], found["plan"]
    assert found["first"] == [7, 5, 200]
    assert sorted(found["moved"]) == [1, 300]  # the same vector: both first
    assert found["hashed"] == [[3, True]] and found["stored_exact"]
    assert found["built"] == 40 and found["version_count"] == 40 and found["version_valid"] == [True]
    assert found["released"] and found["version_first"] == 9 and found["version_dims"] == 8
    # compact vectors: their own index, used; the full vectors' order and scores
    assert found["compact_index"].endswith("_c") and found["compact_index"] in found["compact_plan"]
    assert found["compact_found"] == found["exact"] and found["elsewhere_dims"] == 4
    assert abs(found["compact_score"] - found["exact_score"]) < 1e-5
    assert found["put_first"] == 300  # a row put after the load is projected too


_MOVE = """
import json
import numpy as np
from django.db import connection
from gallery import services
from gallery.embedders import active_model
from gallery.index.pgvector import PgVectorIndex
from gallery.models import Embedding, Image
from gallery.selectors.search import pgvector_index

ref = active_model()
rng = np.random.default_rng(1)
vectors = rng.normal(size=(81, ref.dim)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
Image.objects.bulk_create(
    Image(pk=i, title="", file=f"{i}.jpg", width=1, height=1, byte_size=1, sha256=f"{i:064x}",
          status=Image.Status.INDEXED, moderation=Image.Moderation.APPROVED)
    for i in range(1, 81)
)
Embedding.objects.bulk_create(
    Embedding(image_id=i, model_name=ref.name, dim=ref.dim, vector=vectors[i].tobytes()) for i in range(1, 61)
)
index = pgvector_index(ref)
services.index_reconcile()  # the 60 rows written as full vectors (below the threshold: 70)
held_full = len(index)
Embedding.objects.bulk_create(
    Embedding(image_id=i, model_name=ref.name, dim=ref.dim, vector=vectors[i].tobytes()) for i in range(61, 81)
)
from gallery.services.index_compact import index_compact_step
for run in range(6):
    services.index_reconcile()  # adds the 20 new rows, then one step of the move per run
    if run == 0:
        pending_searched = index._index_name  # still the full vectors' index
        index.put([(80, vectors[80], None)])  # written while pending: projected at once
        Embedding.objects.filter(image_id=7).delete()  # a row whose stored vector is gone
cursor = connection.cursor()
cursor.execute("SELECT count(*) FROM gallery_vector WHERE model_name = %s AND compact IS NULL", [ref.name])
lacking = cursor.fetchone()[0]
finished = services.index_compact_finish(ref.name)  # as the train queue's task does
def valid(name):
    cursor.execute("SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
                   [name])
    return [row[0] for row in cursor.fetchall()]
elsewhere = PgVectorIndex(ref.name, ref.dim, ef=64)
exact = sorted(range(1, 81), key=lambda i: -float(vectors[i] @ vectors[33]))[:5]
print(json.dumps({
    "held_full": held_full, "pending_searched": pending_searched, "lacking": lacking, "finished": finished,
    "compact_valid": valid(index._index_name_for(True)), "full_valid": valid(index._index_name_for(False)),
    "dims": index.meta.compact_dims, "elsewhere_dims": (elsewhere.query(vectors[1], 1), elsewhere.meta.compact_dims)[1],
    "found": [label for label, _ in elsewhere.query(vectors[33], 5)], "exact": exact,
    "score": elsewhere.query(vectors[33], 1)[0][1], "last": index_compact_step(ref, index),
}))
"""


def test_a_served_model_moves_to_compact_vectors_in_steps(postgres_with_pgvector, machines_broker, tmp_path):
    """A served model that grew past INDEX_COMPACT_MIN_ITEMS in PostgreSQL: the writer's
    reconcile learns the projection (pending: searches keep the full index, rows written get
    their compact vector), fills in the rows written before, then the train queue's task builds
    the compact index and switches searches to it; the full index is dropped."""
    found = _script_in_fresh_database(
        postgres_with_pgvector,
        "move",
        _MOVE,
        tmp_path,
        {
            "CELERY_BROKER_URL": machines_broker,  # the finishing task is queued there (no worker takes it)
            "INDEX_COMPACT_MIN_ITEMS": "70",
            "INDEX_COMPACT_DIMS": "8",
        },
    )
    assert found["held_full"] == 60 and not found["pending_searched"].endswith("_c")
    assert found["lacking"] == 0 and found["finished"] is True
    assert found["compact_valid"] == [True] and found["full_valid"] == []
    assert found["dims"] == 8 and found["elsewhere_dims"] == 8
    assert found["found"] == found["exact"] and found["score"] > 0.999
    assert found["last"] == "compact"
