"""Model versions: create, train, evaluate, activate (re-embed, own index, atomic switch),
re-activate the previous one; searches use one model for query and index throughout."""

import json
import time
import zipfile

import numpy as np
import pytest
from django.core.management import call_command

from gallery import embedders, selectors, services
from gallery.embedders import active_model, default_model, forget_active_model, model_ref
from gallery.index import IndexMeta
from gallery.learning.edits import EDIT_KINDS
from gallery.models import Embedding, Image, ModelVersion
from tests.images import encode, make_category_folder, make_category_picture
from tests.test_model_tasks import upload_colour_gallery

pytestmark = pytest.mark.django_db

SMALL = {"arch": "small_cnn", "image_size": 32, "batch_size": 24, "lr": 3e-3, "width": 16}


@pytest.fixture
def gallery(clean_index):
    """18 searchable images in three colour categories, indexed with the default model."""
    ids = upload_colour_gallery(6, seed=100)
    images = list(Image.objects.filter(pk__in=ids).order_by("pk"))
    services.images_embed(ids)
    services.index_sync()
    assert Image.objects.filter(status=Image.Status.INDEXED).count() == 18
    return images


def train_small(kind="metric", bits=0, **extra):
    version = services.model_version_create(
        kind, epochs=40, minutes=5, bits=bits, options={**SMALL, **extra}, start=False
    )
    version = services.model_train(version.pk)
    assert version.state == ModelVersion.State.READY, version.error
    return version


def test_create_validates_and_names_versions(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        services.model_version_create("metric", data=str(tmp_path / "missing.zip"), start=False)
    with pytest.raises(ValueError, match="Unknown kind"):
        services.model_version_create("nonsense", start=False)
    with pytest.raises(ValueError, match="bits"):
        services.model_version_create("metric", bits=3, start=False)
    first = services.model_version_create("metric", bits=48, start=False)
    second = services.model_version_create("metric", bits=48, start=False)
    assert (first.name, second.name) == ("metric-48bit-v1", "metric-48bit-v2")
    assert first.state == ModelVersion.State.QUEUED and first.dim == 48
    resnet = services.model_version_create("pretrained", options={"backbone": "resnet18", "pooling": "gem"})
    assert resnet.name == "resnet18-gem" and resnet.is_ready and resnet.dim == 512


def test_the_default_model_is_a_version_and_active_until_another_is():
    default = services.model_version_default()
    assert default.is_active and default.name == default_model().name
    assert active_model().name == default.name


def test_training_on_the_gallery_uses_its_categories(gallery, settings):
    version = train_small()
    assert version.metrics["images"] == 18 and version.spec["classes"] == ["blue", "green", "red"]
    assert (version.workdir / "loss.png").exists() and version.history
    assert "training started" in version.log and "done" in version.log


def test_a_version_cancelled_before_it_starts_never_trains():
    version = services.model_version_create("metric", start=False)
    assert services.model_train_cancel(version)
    version = services.model_train(version.pk)
    assert version.state == ModelVersion.State.CANCELLED and not version.weights_path.exists()


def test_failed_training_is_recorded(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    version = services.model_version_create("metric", data=str(empty), start=False)
    version = services.model_train(version.pk)
    assert version.state == ModelVersion.State.FAILED and "No images" in version.error


def test_evaluate_cifar10_protocol_on_a_train_test_archive(tmp_path):
    folder = make_category_folder(tmp_path / "set", per_class=8, splits=("train", "test"))
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f.relative_to(folder).as_posix())
    version = services.model_version_create(
        "metric", data=str(archive), epochs=10, minutes=5, bits=16, options=SMALL, start=False
    )
    version = services.model_train(version.pk)
    result = services.model_evaluate(version.pk, "cifar10", str(archive))
    assert result["queries"] == 24 and result["database"] == 24
    assert result["map@1000"] > 0.8 and result["hamming"]["map@1000"] > 0.6
    assert result["classes"] == ["blue", "green", "red"]
    assert (version.workdir / "confusion-cifar10.png").exists()
    version.refresh_from_db()
    assert version.evaluations["cifar10"]["map@1000"] == result["map@1000"]


def test_activation_switches_search_to_the_new_model_and_back(gallery):
    default = services.model_version_default()
    learned = train_small()
    query = encode(make_category_picture("green", 999, (96, 96)), "PNG")
    before = selectors.image_search_by_image(query, k=5)

    services.model_activate_start(learned, dispatch_task=False)
    assert active_model().name == default.name  # still the old model while it is prepared
    assert selectors.image_search_by_image(query, k=5).hits

    learned = services.model_activate(learned.pk)
    assert learned.is_active and learned.activation == ModelVersion.Activation.ACTIVE
    forget_active_model()
    ref = active_model()
    assert ref.name == learned.name and ref.index_dir.parent.name == "models"
    assert Embedding.objects.filter(model_name=learned.name).count() == 18
    meta = IndexMeta.read(ref.index_dir)
    assert meta.model == learned.name and meta.count == 18
    after = selectors.image_search_by_image(query, k=5)
    assert [h.image.category for h in after.hits] == ["green"] * 5
    assert after.hits[0].score != pytest.approx(before.hits[0].score)  # another vector space

    default.refresh_from_db()
    assert not default.is_active
    services.model_activate_start(default, dispatch_task=False)
    services.model_activate(default.pk)
    forget_active_model()
    assert active_model().name == default.name
    assert IndexMeta.read(default_model().index_dir).count == 18
    assert ModelVersion.objects.filter(is_active=True).count() == 1


def test_images_uploaded_during_activation_get_the_new_models_vector(
    gallery, django_capture_on_commit_callbacks
):
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 555, (96, 96)), "PNG"), title="late", category="red"
    )
    services.images_embed([late.pk])  # with the model active at that time: the default
    services.index_sync()
    with django_capture_on_commit_callbacks(execute=True):
        services.model_activate(learned.pk)
    forget_active_model()
    late.refresh_from_db()
    if late.status != Image.Status.INDEXED:  # caught up after the switch (normally by the worker)
        services.images_embed([late.pk])
        services.index_sync()
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    assert late.pk in {h.image.pk for h in selectors.image_similar(gallery[0], k=30).hits}


def test_writers_do_not_act_on_a_model_switched_a_second_ago(gallery):
    """A worker whose cache still holds the old model, in the second after another process
    switched: a new upload gets the new model's vector and reaches the new model's index."""
    default = services.model_version_default()
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    services.model_activate(learned.pk)
    embedders._active.update(ref=model_ref(default), at=time.monotonic())  # that worker's cache
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 556, (96, 96)), "PNG"), title="late", category="red"
    )
    services.images_embed([late.pk])
    services.index_sync()
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    assert not Embedding.objects.filter(image=late, model_name=default.name).exists()
    assert IndexMeta.read(model_ref(learned).index_dir).count == 19


def test_an_index_update_overtaken_by_a_switch_sends_its_images_to_the_new_model(gallery):
    """An upload that got only the old model's vector, and an index update still on the old
    model after the switch had caught up: the image goes back to processing and on to the new
    model's vector and index."""
    default = model_ref(services.model_version_default())
    learned = train_small()
    services.model_activate_start(learned, dispatch_task=False)
    services.model_activate(learned.pk)
    late, _ = services.image_create(
        data=encode(make_category_picture("red", 557, (96, 96)), "PNG"), title="late", category="red"
    )
    vector = np.full(default.dim, default.dim**-0.5, dtype=np.float32)
    Embedding.objects.create(image=late, model_name=default.name, dim=default.dim, vector=vector.tobytes())
    assert services.index_sync_model(default, None) == 1  # the late update, into the old index
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED

    services.images_catch_up_with_active_model()
    late.refresh_from_db()
    assert late.status == Image.Status.PROCESSING
    services.images_embed([late.pk])
    services.index_sync()
    late.refresh_from_db()
    assert late.status == Image.Status.INDEXED
    assert Embedding.objects.filter(image=late, model_name=learned.name).exists()
    assert IndexMeta.read(model_ref(learned).index_dir).count == 19


def test_hash_model_search_ranks_by_hamming_distance(gallery):
    hashed = train_small(bits=16)
    services.model_activate_start(hashed, dispatch_task=False)
    services.model_activate(hashed.pk)
    forget_active_model()
    assert active_model().bits == 16
    hits = selectors.image_search_by_image(
        encode(make_category_picture("blue", 4242, (96, 96)), "PNG"), k=4
    ).hits
    assert [h.image.category for h in hits] == ["blue"] * 4
    assert all(-1 <= h.score <= 1 for h in hits)


def test_commands_train_evaluate_and_activate(gallery, tmp_path, capsys):
    folder = make_category_folder(tmp_path / "set", per_class=6, splits=("train", "test"))
    call_command(
        "train_model",
        "--kind",
        "autoencoder",
        "--data",
        str(folder),
        "--epochs",
        "3",
        "--minutes",
        "5",
        "--width",
        "8",
    )
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["model"] == "autoencoder-v1" and trained["train_mse"] > 0
    call_command("evaluate_model", "autoencoder-v1", "--protocol", "cifar10", "--data", str(folder))
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= figures["map@1000"] <= 1 and figures["queries"] == 18 and "map@all" in figures
    assert 0 < figures["reconstruction_mse"] < 1  # pixels in [-0.5, 0.5]
    call_command("activate_model", "autoencoder-v1")
    assert "is active" in capsys.readouterr().out
    forget_active_model()
    assert active_model().name == "autoencoder-v1"
    assert Embedding.objects.filter(model_name="autoencoder-v1").count() == 18
    vector = np.frombuffer(
        Embedding.objects.filter(model_name="autoencoder-v1").first().vector, dtype=np.float32
    )
    assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-4


def test_neardup_protocol_finds_the_originals_of_edited_copies(tmp_path):
    from tests.images import make_picture

    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for n in range(30):
        make_picture(n, (120, 90)).save(catalogue / f"{n:03d}.png")
    default = services.model_version_default()
    result = services.model_evaluate(default.pk, "neardup", str(catalogue), limits={"queries": 20})
    assert result["queries"] == 20 and result["catalogue"] == 30
    assert result["recall@1"] >= 0.9 and result["recall@10"] == 1.0
    assert set(result["recall@1_by_edit"]) == set(EDIT_KINDS)  # every edit kind asked in turn
    default.refresh_from_db()
    assert default.evaluations["neardup"]["recall@1"] == result["recall@1"]
