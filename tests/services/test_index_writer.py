"""The index's single writer, run in-process on the real embedder: adds, removes, rebuilds."""

import numpy as np
import pytest

from gallery import selectors, services
from gallery.embedders import default_model, get_embedder, served_models
from gallery.index import IndexMeta, VectorIndex
from gallery.models import Embedding, Image
from gallery.selectors.index_journal import index_current
from tests.helpers import embed_and_index
from tests.images import make_image_bytes

pytestmark = pytest.mark.django_db


def test_embed_and_sync_make_images_searchable(clean_index):
    images = [services.image_create(data=make_image_bytes(seed), title=f"t{seed}")[0] for seed in range(4)]
    assert services.images_embed([im.pk for im in images]) == 4
    assert services.images_embed([im.pk for im in images]) == 0  # idempotent
    assert Embedding.objects.count() == 4 * len(served_models())  # the copy model's details too
    assert services.index_sync() == 4
    assert services.index_sync() == 0
    assert set(Image.objects.values_list("status", flat=True)) == {"indexed"}
    meta = IndexMeta.read(clean_index)
    assert meta.count == 4 and meta.model == get_embedder().name
    result = selectors.image_search_by_image(make_image_bytes(2), k=2)
    assert result.hits[0].image.pk == images[2].pk
    assert result.hits[0].score > 0.95  # gallery vectors also cover a centre crop


def test_hidden_items_are_not_added_and_removed_ones_stay_out(clean_index):
    a, _ = services.image_create(data=make_image_bytes(10))
    b, _ = services.image_create(data=make_image_bytes(11))
    services.images_embed([a.pk, b.pk])
    Image.objects.filter(pk=a.pk).update(status=Image.Status.HIDDEN)  # hidden before its index update
    services.index_sync()
    index = index_current(clean_index)
    assert index.labels() == {b.pk}
    Image.objects.filter(pk=b.pk).update(status=Image.Status.HIDDEN)
    assert services.index_remove([b.pk]) == 1
    assert len(index_current(clean_index)) == 0
    services.index_sync()  # a stale update never brings them back
    assert len(index_current(clean_index)) == 0


def test_rebuild_restores_a_lost_index(clean_index):
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(20, 23)]
    embed_and_index(*(im.pk for im in images))
    for path in clean_index.glob("*.*"):
        path.unlink()
    assert services.index_rebuild() == 3
    index = index_current(clean_index)
    assert index.labels() == {im.pk for im in images}
    vec = Embedding.objects.get(image=images[0], model_name=default_model().name).as_array()
    assert index.query(vec, 1)[0][0] == images[0].pk
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)


def test_sync_without_index_on_disk_rebuilds(clean_index):
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(30, 32)]
    services.images_embed([im.pk for im in images])
    assert services.index_sync() == 2
    assert index_current(clean_index).labels() == {im.pk for im in images}


def test_changes_reach_readers_through_the_journal_without_a_new_snapshot(clean_index, settings):
    """An update writes a journal entry, not the whole index: a reader applies it to the index
    it holds (no reload), and the snapshot on disk stays as it was."""
    settings.INDEX_SNAPSHOT_CHANGES = 1000
    first = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(40, 43)]
    embed_and_index(*(im.pk for im in first))
    reader = selectors.index_reader()
    held = reader.get()
    assert held.labels() == {im.pk for im in first}
    version = IndexMeta.read(clean_index).version
    more = [services.image_create(data=make_image_bytes(seed))[0] for seed in (43, 44)]
    embed_and_index(*(im.pk for im in more))
    assert IndexMeta.read(clean_index).version == version  # no snapshot written
    assert reader.get() is held  # the same index, caught up
    assert held.labels() == {im.pk for im in first + more}
    assert (
        held.query(Embedding.objects.get(image=more[1], model_name=default_model().name).as_array(), 1)[0][0]
        == more[1].pk
    )
    Image.objects.filter(pk=first[0].pk).update(status=Image.Status.HIDDEN)
    assert services.index_remove([first[0].pk]) == 1
    assert first[0].pk not in reader.get().labels()
    assert index_current(clean_index).labels() == {im.pk for im in first[1:] + more}


@pytest.mark.django_db(transaction=True)
def test_a_new_reader_serves_every_change_after_its_snapshot_from_its_first_search(
    clean_index, settings, monkeypatch
):
    """A web process's first searches must see every indexed item: a reader applies the whole
    journal after its snapshot before serving it, not the few a search applies inline (the
    rest by a thread, meanwhile missing). Every served model's index, details included, is
    loaded so at a web process's start."""
    from gallery.index import IndexReader
    from gallery.selectors import search as search_module

    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_FOLLOW_SECONDS = 1000, 60.0  # no follower help
    settings.COPY_DETAILS = True
    monkeypatch.setattr(IndexReader, "INLINE_CHANGES", 2)
    first = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(60, 62)]
    embed_and_index(*(im.pk for im in first))
    more = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(62, 68)]
    embed_and_index(*(im.pk for im in more))
    wanted = {im.pk for im in first + more}
    selectors.index_readers_forget()
    selectors.index_readers_warm()
    refs = served_models()
    assert len(refs) == 2  # the default model and its details
    for ref in refs:
        held = search_module._readers[str(ref.index_dir)]._index
        assert held is not None and held.labels() == wanted, ref.name
    result = selectors.image_search_by_image(make_image_bytes(66), k=1)
    assert result.hits[0].image.pk == more[4].pk


@pytest.mark.django_db(transaction=True)
def test_a_reader_follows_the_journal_between_searches(clean_index, settings):
    """A web process that no search reaches keeps its index current (its follower thread
    applies the journal and prepares the hash lookups), so the next search has nothing to
    replay; a reader let go stops following."""
    import time

    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_FOLLOW_SECONDS = 1000, 0.05
    first = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(45, 47)]
    embed_and_index(*(im.pk for im in first))
    reader = selectors.index_reader()
    held = reader.get()
    assert held.labels() == {im.pk for im in first}
    more = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(47, 50)]
    embed_and_index(*(im.pk for im in more))
    wanted = {im.pk for im in first + more}
    deadline = time.monotonic() + 10
    while held.labels() != wanted and time.monotonic() < deadline:
        time.sleep(0.05)  # no `get`: nothing but the follower applies the journal here
    assert held.labels() == wanted
    assert held._hashes.current_view(eager=False) is not None and len(held.hash_index()) == len(wanted)
    selectors.index_readers_forget()
    reader._follower.join(timeout=5)
    assert not reader._follower.is_alive()


def test_snapshots_are_written_when_enough_changed_and_the_journal_is_pruned(clean_index, settings):
    from gallery.models import IndexChange

    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_SNAPSHOT_FRACTION = 2, 0.0
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(50, 55)]
    embed_and_index(images[0].pk)  # the first sync builds the index (a snapshot)
    built = IndexMeta.read(clean_index)
    embed_and_index(images[1].pk)
    assert IndexMeta.read(clean_index).version == built.version  # one change: not yet
    embed_and_index(images[2].pk)
    second = IndexMeta.read(clean_index)
    assert second.version == built.version + 1 and second.journal_seq > built.journal_seq
    embed_and_index(images[3].pk, images[4].pk)
    third = IndexMeta.read(clean_index)
    assert third.version == second.version + 1 and third.journal_floor == second.journal_seq
    assert not IndexChange.objects.filter(id__lte=second.journal_seq).exists()  # pruned
    assert VectorIndex.load(clean_index).labels() == {im.pk for im in images}
    assert third.generation == built.generation


def test_an_old_snapshot_is_saved_again_by_the_reconcile_not_by_an_upload_s_sync(clean_index, settings):
    """Saving the whole index rewrites about 4 GB at a million items: an upload whose sync
    found the snapshot old would wait for it. The periodic reconcile saves it instead."""
    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_SNAPSHOT_FRACTION = 1000, 0.0
    settings.INDEX_SNAPSHOT_SECONDS = 0.0  # every snapshot is old
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(56, 59)]
    embed_and_index(images[0].pk)  # the first sync builds the index (a snapshot)
    built = IndexMeta.read(clean_index)
    embed_and_index(images[1].pk, images[2].pk)
    services.index_remove([images[1].pk])  # still searchable: nothing removed, nothing saved
    assert IndexMeta.read(clean_index).version == built.version  # the uploads did not save it
    services.index_reconcile()
    saved = IndexMeta.read(clean_index)
    assert saved.version == built.version + 1 and saved.journal_seq > built.journal_seq
    assert VectorIndex.load(clean_index).labels() == {im.pk for im in images}


@pytest.mark.django_db(transaction=True)
def test_a_rebuilt_index_is_loaded_in_the_background_while_the_old_one_serves(clean_index, settings):
    """A new generation (a rebuild) is loaded by a thread; searches keep the index they have
    until the new one is loaded and caught up."""
    import time

    images = [services.image_create(data=make_image_bytes(seed), enqueue=False)[0] for seed in range(60, 63)]
    embed_and_index(*(im.pk for im in images))
    reader = selectors.index_reader()
    old = reader.get()
    assert len(old) == 3
    Image.objects.filter(pk=images[0].pk).update(status=Image.Status.HIDDEN)  # behind the writer's back
    assert services.index_rebuild() == 2
    served = reader.get()
    deadline = time.monotonic() + 20
    while served is old:
        assert time.monotonic() < deadline, "the rebuilt index never replaced the old one"
        time.sleep(0.05)
        served = reader.get()
    assert served.labels() == {images[1].pk, images[2].pk}
    assert served.meta.generation != old.meta.generation


@pytest.mark.django_db(transaction=True)
def test_a_reader_behind_the_pruned_journal_loads_the_new_snapshot(clean_index, settings):
    import time

    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_SNAPSHOT_FRACTION = 1, 0.0
    # enqueue=False: this process does the work (a worker running for other tests must not)
    images = [services.image_create(data=make_image_bytes(seed), enqueue=False)[0] for seed in range(70, 74)]
    embed_and_index(images[0].pk)
    stale = selectors.index_reader()
    old = stale.get()
    selectors.index_readers_forget()  # the stale reader stops looking while the others move on
    for image in images[1:]:
        embed_and_index(image.pk)  # a snapshot each time; the journal before the last is pruned
    assert IndexMeta.read(clean_index).journal_floor > old.meta.journal_seq
    deadline = time.monotonic() + 20
    while (current := stale.get()) is old or len(current) < 4:
        assert time.monotonic() < deadline, "the stale reader never caught up"
        time.sleep(0.05)
    assert current.labels() == {im.pk for im in images}


def test_readers_ask_the_journal_only_when_the_writer_says_so(clean_index):
    """A search asks its reader several times: the journal (a database query) is read when the
    writer touched journal.head, or after JOURNAL_POLL_SECONDS, not on every call."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    first = services.image_create(data=make_image_bytes(80))[0]
    embed_and_index(first.pk)
    reader = selectors.index_reader()
    assert len(reader.get()) == 1
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            reader.get()
    assert not [q for q in queries if "gallery_indexchange" in q["sql"]]
    second = services.image_create(data=make_image_bytes(81))[0]
    embed_and_index(second.pk)  # the writer touches journal.head
    assert reader.get().labels() == {first.pk, second.pk}


def test_without_a_loadable_index_search_answers_from_the_database(clean_index):
    """A process that cannot load the index (a broken file, the writer rebuilding it) answers
    by an exact scan of the stored vectors meanwhile, not with nothing."""
    images = [
        services.image_create(data=make_image_bytes(seed), category="odd" if seed % 2 else "even")[0]
        for seed in range(90, 94)
    ]
    embed_and_index(*(im.pk for im in images))
    (clean_index / "index.bin").write_bytes(b"broken")
    selectors.index_readers_forget()  # as a process starting now
    assert selectors.index_reader().get() is None
    vec = Embedding.objects.get(image=images[2], model_name=default_model().name).as_array()
    hits = selectors.search_vector(vec, 3)
    assert hits[0].image.pk == images[2].pk and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3
    assert [h.image.pk for h in selectors.search_vector(vec, 5, category="odd")] == [
        im.pk
        for im in sorted(
            [im for im in images if im.category == "odd"],
            key=lambda im: (
                -float(Embedding.objects.get(image=im, model_name=default_model().name).as_array() @ vec)
            ),
        )
    ]
    result = selectors.image_search_by_image(make_image_bytes(92), k=2)
    assert result.hits[0].image.pk == images[2].pk


def test_a_gallery_past_the_compact_threshold_is_built_again_compact_and_searches_alike(
    clean_index, settings
):
    """The reconcile (the beat's background task) builds the index again with compact vectors
    once it holds INDEX_COMPACT_MIN_ITEMS, and back with full ones when the setting is turned
    off; searches give the same items with the same scores (float16: within 2e-3)."""
    settings.INDEX_COMPACT_DIMS, settings.INDEX_COMPACT_MIN_ITEMS = 8, 6
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(70, 76)]
    embed_and_index(*(im.pk for im in images[:5]))
    assert IndexMeta.read(clean_index).compact_dims == 0
    query = make_image_bytes(72)
    before = [(hit.image.pk, hit.score) for hit in selectors.image_search_by_image(query, k=5).hits]
    embed_and_index(images[5].pk)
    services.index_reconcile()
    meta = IndexMeta.read(clean_index)
    assert (meta.compact_dims, meta.compact_learned_on, meta.count) == (8, 6, 6)
    assert (clean_index / "vectors.f16").stat().st_size == 6 * meta.dim * 2
    selectors.index_readers_forget()
    after = [(hit.image.pk, hit.score) for hit in selectors.image_search_by_image(query, k=5).hits]
    assert [pk for pk, _ in after][:2] == [pk for pk, _ in before][:2] == [images[2].pk, after[1][0]]
    assert after[0][1] == pytest.approx(before[0][1], abs=2e-3)
    services.index_reconcile()
    assert IndexMeta.read(clean_index).generation == meta.generation  # not built again: nothing due
    settings.INDEX_COMPACT_DIMS = 0
    services.index_reconcile()
    assert IndexMeta.read(clean_index).compact_dims == 0
    assert not (clean_index / "vectors.f16").exists()


def test_a_large_index_is_saved_by_a_forked_child_while_the_writer_goes_on(clean_index, settings):
    """At a million items a save takes seconds, which uploads would wait for: a forked child
    writes the index as it was at the fork while the writer goes on with the index it holds;
    once the child exited the writer takes the snapshot, prunes the journal, and the next
    save appends the full vectors added since to the same file."""
    import os

    from gallery.index import background_save
    from gallery.models import IndexChange
    from gallery.services import index_writer

    settings.INDEX_SNAPSHOT_CHANGES, settings.INDEX_SNAPSHOT_FRACTION = 2, 0.0
    settings.INDEX_SNAPSHOT_BACKGROUND_MIN_ITEMS = 0
    settings.INDEX_COMPACT_DIMS, settings.INDEX_COMPACT_MIN_ITEMS = 8, 3
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(110, 118)]
    embed_and_index(*(im.pk for im in images[:3]))  # the build (compact), saved in this process
    built = IndexMeta.read(clean_index)
    assert built.compact_dims == 8
    writer = index_writer._writer_cache[str(clean_index)]
    inode = (clean_index / "vectors.f16").stat().st_ino

    embed_and_index(images[3].pk, images[4].pk)  # two changes: due, and saved by a child
    first = background_save.in_flight(clean_index)
    assert first is not None and first.pid != os.getpid() and first.version == built.version + 1
    embed_and_index(images[5].pk)  # meanwhile the writer goes on, with the index it holds
    assert index_writer._writer_cache[str(clean_index)] is writer
    services.index_snapshot_wait()
    saved = IndexMeta.read(clean_index)
    assert saved.version == writer.meta.version == built.version + 1
    assert VectorIndex.load(clean_index).labels() == {im.pk for im in images[:5]}  # as at the fork

    embed_and_index(images[6].pk, images[7].pk)
    assert background_save.in_flight(clean_index) is not None
    services.index_snapshot_wait()
    third = IndexMeta.read(clean_index)
    assert third.version == writer.meta.version == saved.version + 1
    assert third.journal_floor == saved.journal_seq
    assert not IndexChange.objects.filter(id__lte=saved.journal_seq).exists()  # pruned
    assert index_writer._writer_cache[str(clean_index)] is writer  # never loaded again
    loaded = VectorIndex.load(clean_index)
    assert loaded.labels() == {im.pk for im in images}
    assert (clean_index / "vectors.f16").stat().st_ino == inode  # appended to, not rewritten
    for image in (images[3], images[7]):
        stored = Embedding.objects.get(image=image, model_name=default_model().name).as_array()
        assert np.allclose(loaded.vector(image.pk), stored, atol=2e-3)


def test_the_reconcile_compares_a_window_of_ids_per_run_and_covers_the_gallery(clean_index, monkeypatch):
    """Comparing a million items took the single writer 6-19 s, which uploads waited for: each
    run compares a window of ids, and consecutive runs cover every id."""
    from gallery.selectors.catalogue import IdWindows
    from gallery.services import index_writer

    monkeypatch.setattr(index_writer, "_reconcile_windows", IdWindows(3))
    images = [services.image_create(data=make_image_bytes(seed))[0] for seed in range(120, 127)]
    embed_and_index(*(im.pk for im in images))
    Image.objects.filter(pk__in=[im.pk for im in images]).update(status=Image.Status.HIDDEN)  # lost removals
    held = []
    for _ in range(4):
        services.index_reconcile()
        held.append(len(index_current(clean_index).labels()))
    assert held == [4, 1, 0, 0]
    Image.objects.filter(pk__in=[im.pk for im in images]).update(
        status=Image.Status.INDEXED
    )  # lost additions
    for _ in range(4):
        services.index_reconcile()
    assert index_current(clean_index).labels() == {im.pk for im in images}
