"""import_images and rebuild_index, as a user runs them."""

import io
import json
import zipfile

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from gallery.embedders import active_model, forget_active_model
from gallery.models import Embedding, Image
from gallery.selectors.index_journal import index_current
from tests.images import make_category_folder, make_image_bytes


def make_tree(root):
    (root / "shoes").mkdir(parents=True)
    (root / "bags").mkdir()
    (root / "shoes" / "red-shoe.jpg").write_bytes(make_image_bytes(1))
    (root / "shoes" / "blue-shoe.png").write_bytes(make_image_bytes(2, "PNG"))
    (root / "bags" / "tote.jpg").write_bytes(make_image_bytes(3))
    (root / "bags" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(make_image_bytes(4))
    return root


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("import_images", *args, stdout=out, stderr=err, verbosity=0)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_import_folder_without_waiting(tmp_path):
    out, err = run(str(make_tree(tmp_path / "catalogue")), "--no-wait")
    rows = {im.title: im.category for im in Image.objects.all()}
    assert rows == {"red-shoe": "shoes", "blue-shoe": "shoes", "tote": "bags"}
    assert "3 new images" in out and "2 refused" in out
    assert "broken.jpg" in err and "not an image" in err
    assert "notes.txt: not an image file" in err
    out, _ = run(str(tmp_path / "catalogue"), "--no-wait")  # running it twice adds nothing twice
    assert "0 new images, 3 already present" in out and Image.objects.count() == 3


@pytest.mark.django_db
def test_import_zip_with_category_override_and_unsafe_entries(tmp_path):
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tops/shirt.jpg", make_image_bytes(5))
        zf.writestr("../escape.jpg", make_image_bytes(6))
        zf.writestr("nested.zip", b"PK...")
        zf.writestr("__MACOSX/tops/._shirt.jpg", b"junk")
    _, err = run(str(archive), "--category", "sale", "--no-wait")
    assert list(Image.objects.values_list("title", "category")) == [("shirt", "sale")]
    assert "../escape.jpg: unsafe path" in err and "nested.zip: nested archive" in err
    assert "__MACOSX" not in err


@pytest.mark.django_db
def test_import_refuses_what_is_not_a_folder_or_zip(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CommandError, match="neither a folder nor a ZIP"):
        run(str(tmp_path / "x.txt"))
    with pytest.raises(CommandError, match="does not exist"):
        run(str(tmp_path / "missing"))


def test_import_waits_until_everything_is_searchable(pipeline, tmp_path):
    out, _ = run(str(make_tree(tmp_path / "catalogue")), "--timeout", "120")
    assert "All 3 images are searchable" in out
    assert set(Image.objects.values_list("status", flat=True)) == {"indexed"}


def test_rebuild_index_command(pipeline, tmp_path, clean_index):
    run(str(make_tree(tmp_path / "catalogue")), "--timeout", "120")
    for path in clean_index.glob("*.*"):
        path.unlink()
    out = io.StringIO()
    call_command("rebuild_index", stdout=out)
    assert "3 images" in out.getvalue()
    assert index_current(clean_index).labels() == set(Image.objects.values_list("pk", flat=True))


@pytest.mark.django_db
def test_manifest_import_and_known_external_id_updates_metadata(tmp_path):
    (tmp_path / "a.jpg").write_bytes(make_image_bytes(11))
    manifest = tmp_path / "list.csv"
    manifest.write_text('file,title,category,tags,external_id\na.jpg,Red bag,bags,"red,leather",SKU-9\n')
    out, _ = run(str(manifest), "--no-wait")
    image = Image.objects.get()
    assert (image.title, image.category, image.tags, image.external_id) == (
        "Red bag",
        "bags",
        ["red", "leather"],
        "SKU-9",
    )
    manifest.write_text("file,title,category,tags,external_id\na.jpg,Crimson bag,handbags,sale,SKU-9\n")
    out, _ = run(str(manifest), "--no-wait")
    image.refresh_from_db()
    assert Image.objects.count() == 1
    assert (image.title, image.category, image.tags) == ("Crimson bag", "handbags", ["sale"])
    assert "0 new images, 1 already present" in out


def test_fetch_weights_saves_a_checked_state_dict_or_says_where_to_copy_it(settings, tmp_path, monkeypatch):
    import torch
    import torchvision

    settings.EMBEDDER_WEIGHTS_DIR = str(tmp_path / "weights")
    with pytest.raises(CommandError, match="Name backbones"):
        call_command("fetch_weights", "alexnet")

    def offline(url, dst, progress=True):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CommandError, match=r"copy that file to .*weights/resnet18\.pth"):
        call_command("fetch_weights", "resnet18")
    assert not list((tmp_path / "weights").iterdir())  # nothing half-written

    def served(url, dst, progress=True):  # what the download server would send
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", served)
    call_command("fetch_weights", "resnet18")
    saved = torch.load(tmp_path / "weights" / "resnet18.pth", weights_only=True)
    assert "fc.weight" in saved


@pytest.mark.django_db
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
    assert 0 <= figures["pca_reconstruction_mse"] < 1  # the baseline with as many components
    call_command("activate_model", "autoencoder-v1")
    assert "is active" in capsys.readouterr().out
    forget_active_model()
    assert active_model().name == "autoencoder-v1"
    assert Embedding.objects.filter(model_name="autoencoder-v1").count() == 18
    vector = np.frombuffer(
        Embedding.objects.filter(model_name="autoencoder-v1").first().vector, dtype=np.float32
    )
    assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-4
