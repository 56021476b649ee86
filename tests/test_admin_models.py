"""The embedding-model admin: the training form, the progress page and its JSON, the charts,
and the buttons (cancel, resume, activate, evaluate). No worker: dispatches happen on commit,
which a django_db test never reaches (they are captured instead). The evaluate button on a
real worker is in test_model_tasks."""

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from gallery import services
from gallery.embedders import pretrained_ref
from gallery.models import ModelVersion

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _models_dir(settings, tmp_path):
    settings.MODELS_DIR = tmp_path / "models"


def make_version(**fields):
    return services.model_version_create("metric", minutes=5, start=False, **fields)


def url(name, *args):
    return reverse(f"admin:gallery_modelversion_{name}", args=args)


def test_add_page_creates_a_queued_version(admin_client, admin_user, django_capture_on_commit_callbacks):
    page = admin_client.get(url("add"))
    assert page.status_code == 200 and b'id="train-form"' in page.content
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(
            url("add"), {"kind": "metric", "data": "", "minutes": "5", "bits": "16", "pooling": "avg"}
        )
    version = ModelVersion.objects.exclude(kind=ModelVersion.Kind.PRETRAINED).get()
    assert response.status_code == 302 and response.url == url("change", version.pk)
    assert version.state == ModelVersion.State.QUEUED
    assert (version.kind, version.bits, version.minutes, version.data_source) == ("metric", 16, 5.0, "")
    assert version.created_by == admin_user and version.name == "metric-16bit-v1"
    assert len(callbacks) == 1  # the training task, sent after commit


def test_add_page_passes_options(admin_client):
    admin_client.post(
        url("add"),
        {
            "kind": "autoencoder",
            "minutes": "",
            "epochs": "2",
            "dim": "48",
            "image_size": "40",
            "pooling": "avg",
        },
    )
    version = ModelVersion.objects.exclude(kind=ModelVersion.Kind.PRETRAINED).get()
    assert version.minutes == 10.0 and version.epochs == 2.0
    assert version.spec["dim"] == 48 and version.spec["image_size"] == 40 and version.dim == 48


@pytest.mark.parametrize(
    "post, message",
    [
        ({"kind": "metric", "minutes": "5", "bits": "3"}, "bits must be between 8 and 256"),
        ({"kind": "metric", "minutes": "5", "data": "/no/such/folder"}, "/no/such/folder does not exist"),
        ({"kind": "metric", "minutes": "5", "data": "../../etc"}, "is outside the import root"),
        ({"kind": "autoencoder", "minutes": "5", "bits": "16"}, "Hash codes are learned by"),
        ({"kind": "metric", "minutes": "0"}, "positive number of minutes or epochs"),
        ({"kind": "nonsense", "minutes": "5"}, "Select a valid choice"),
    ],
)
def test_add_page_shows_errors_and_creates_nothing(admin_client, post, message):
    response = admin_client.post(url("add"), {"pooling": "avg", **post})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ModelVersion.objects.exclude(kind=ModelVersion.Kind.PRETRAINED).exists()


def test_add_page_pretrained_backbone_is_ready_at_once(admin_client):
    response = admin_client.post(url("add"), {"kind": "pretrained", "backbone": "resnet18", "pooling": "gem"})
    version = ModelVersion.objects.get(name="resnet18-gem")
    assert response.status_code == 302 and response.url == url("change", version.pk)
    assert version.state == ModelVersion.State.READY and version.dim == 512


def test_progress_json_reports_state_progress_and_evaluations(admin_client):
    version = make_version(bits=16)
    data = admin_client.get(url("progress", version.pk)).json()
    assert data["state"] == "queued" and data["percent"] == 0 and data["has_loss_chart"] is False

    ModelVersion.objects.filter(pk=version.pk).update(
        state=ModelVersion.State.TRAINING,
        progress={
            "stage": "training",
            "done": 10,
            "total": 100,
            "epoch": 3.2,
            "loss": 0.41,
            "elapsed": 30.0,
            "eta_seconds": 90.0,
        },
    )
    data = admin_client.get(url("progress", version.pk)).json()
    assert data["state"] == "training" and data["percent"] == 25.0
    assert data["progress"]["epoch"] == 3.2 and data["error"] == ""

    confusion = version.workdir / "confusion-cifar10.png"
    ModelVersion.objects.filter(pk=version.pk).update(
        state=ModelVersion.State.READY,
        metrics={"steps": 100, "final_loss": 0.3},
        evaluations={
            "cifar10": {
                "map@1000": 0.91,
                "precision@10": 0.93,
                "confusion": [[1, 0], [0, 1]],
                "classes": ["a", "b"],
                "confusion_png": str(confusion),
                "hamming": {"map@1000": 0.88, "precision@10": 0.9},
            },
            "neardup": {"recall@1": 0.97, "recall@10": 1.0, "recall@1_by_edit": {"crop": 0.9}},
        },
    )
    data = admin_client.get(url("progress", version.pk)).json()
    assert data["state"] == "ready" and data["percent"] == 100.0 and data["metrics"]["steps"] == 100
    cifar = data["evaluations"]["cifar10"]
    assert "confusion" not in cifar and "confusion_png" not in cifar
    assert cifar["confusion_url"] == url("confusion", version.pk, "cifar10")
    assert ["map@1000", 0.91] in cifar["rows"] and ["hamming map@1000", 0.88] in cifar["rows"]
    assert data["evaluations"]["neardup"]["confusion_url"] is None

    page = admin_client.get(url("change", version.pk)).content.decode()
    for element in (
        "model-bar",
        "model-state",
        "model-loss-chart",
        "model-log",
        "model-evaluations",
        "evaluate-form",
    ):
        assert f'id="{element}"' in page
    assert "hamming map@1000" in page

    assert admin_client.get(url("confusion", version.pk, "cifar10")).status_code == 404
    confusion.parent.mkdir(parents=True, exist_ok=True)
    confusion.write_bytes(PNG)
    response = admin_client.get(url("confusion", version.pk, "cifar10"))
    assert response.status_code == 200 and b"".join(response.streaming_content) == PNG
    assert admin_client.get(url("confusion", version.pk, "neardup")).status_code == 404


def test_cancel_a_queued_version_and_resume_it(admin_client, django_capture_on_commit_callbacks):
    version = make_version()
    assert admin_client.get(url("cancel", version.pk)).status_code == 405  # POST only
    response = admin_client.post(url("cancel", version.pk))
    assert response.status_code == 302 and response.url == url("change", version.pk)
    version.refresh_from_db()
    assert version.state == ModelVersion.State.CANCELLED
    assert admin_client.get(url("progress", version.pk)).json()["state"] == "cancelled"

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        admin_client.post(url("resume", version.pk))
    version.refresh_from_db()
    assert version.state == ModelVersion.State.QUEUED and not version.cancel_requested
    assert len(callbacks) == 1


def test_loss_chart_is_404_until_written(admin_client):
    version = make_version()
    assert admin_client.get(url("loss", version.pk)).status_code == 404
    version.workdir.mkdir(parents=True)
    (version.workdir / "loss.png").write_bytes(PNG)
    response = admin_client.get(url("loss", version.pk) + "?t=1")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == PNG
    assert admin_client.get(url("progress", version.pk)).json()["has_loss_chart"] is True


def test_activate_queues_the_switch_only_when_ready(admin_client):
    version = make_version()
    response = admin_client.post(url("activate", version.pk), follow=True)
    assert "is not ready" in response.content.decode()
    version.refresh_from_db()
    assert version.activation == ModelVersion.Activation.NONE

    ModelVersion.objects.filter(pk=version.pk).update(state=ModelVersion.State.READY)
    admin_client.post(url("activate", version.pk))
    version.refresh_from_db()
    assert version.activation == ModelVersion.Activation.ACTIVATING and not version.is_active
    assert admin_client.get(url("progress", version.pk)).json()["activation"] == "activating"


def test_evaluate_refuses_missing_data_and_unready_models(admin_client, tmp_path, settings):
    settings.IMPORT_ROOT = tmp_path
    version = make_version()
    response = admin_client.post(
        url("evaluate", version.pk), {"protocol": "cifar10", "data": str(tmp_path)}, follow=True
    )
    assert "is not ready" in response.content.decode()

    ModelVersion.objects.filter(pk=version.pk).update(state=ModelVersion.State.READY)
    response = admin_client.post(
        url("evaluate", version.pk), {"protocol": "neardup", "data": "/no/such/archive.zip"}, follow=True
    )
    assert "does not exist" in response.content.decode()
    response = admin_client.post(
        url("evaluate", version.pk), {"protocol": "cifar10", "data": "/etc"}, follow=True
    )
    assert "does not exist under the import root" in response.content.decode()
    version.refresh_from_db()
    assert version.progress == {} and version.evaluations == {}


def test_changelist_lists_the_default_model_and_progress(admin_client):
    training = make_version()
    ModelVersion.objects.filter(pk=training.pk).update(
        state=ModelVersion.State.TRAINING, progress={"stage": "training", "epoch": 3.2, "loss": 0.41}
    )
    evaluated = make_version()
    ModelVersion.objects.filter(pk=evaluated.pk).update(
        state=ModelVersion.State.READY, evaluations={"cifar10": {"map@1000": 0.91}}
    )
    page = admin_client.get(reverse("admin:gallery_modelversion_changelist")).content.decode()
    default = pretrained_ref(django_settings.EMBEDDER).name
    assert default in page and ModelVersion.objects.get(name=default).is_active
    assert "epoch 3.2, loss 0.41" in page
    assert "mAP@1000 0.910" in page
