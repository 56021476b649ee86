"""Model versions: create, train, cancel, evaluate."""

import zipfile

import pytest

from gallery import services
from gallery.embedders import active_model, default_model
from gallery.learning.edits import EDIT_KINDS
from gallery.models import ModelVersion
from tests.helpers import (
    SMALL,
    train_small,
)
from tests.images import make_category_folder, make_picture

pytestmark = pytest.mark.django_db


def test_a_log_line_lands_with_its_state_and_the_log_keeps_its_tail():
    """Whoever sees a run cancelled (or ready, or failed) sees the line that says so: they are
    one statement. Lines are appended by the database (a resumed run's first line used to
    overwrite the cancelled run's last one, each read and written back by its own process)."""
    version = services.model_version_create("metric", start=False)
    services.model_version_log(version.pk, "training started")
    services.model_version_log(version.pk, "cancelled", state=ModelVersion.State.CANCELLED)
    version.refresh_from_db()
    assert version.state == ModelVersion.State.CANCELLED
    assert [line.split(" ", 1)[1] for line in version.log.splitlines()] == ["training started", "cancelled"]
    for n in range(700):
        services.model_version_log(version.pk, f"line {n} " + "x" * 30)
    version.refresh_from_db()
    assert len(version.log) == 20_000 and version.log.endswith("line 699 " + "x" * 30 + "\n")


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


def test_neardup_protocol_finds_the_originals_of_edited_copies(tmp_path):

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
