"""gallery.learning: data sources, networks, losses, the training loop, evaluation maths."""

import zipfile

import numpy as np
import pytest
import torch
from timm.layers import Conv2dSame

from gallery.embedders.transforms import pixels, to_tensor
from gallery.learning import data as datasets
from gallery.learning import evaluation, losses
from gallery.learning.model_io import load_model
from gallery.learning.networks import EmbeddingNet, SmallMapDepthwise, use_small_map_depthwise
from gallery.learning.spec import make_spec
from gallery.learning.trainer import Cancelled, Trainer
from tests.images import make_category_folder


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    return make_category_folder(tmp_path_factory.mktemp("colours"), per_class=16, splits=("train", "test"))


def zip_folder(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f.relative_to(folder).as_posix())
    return path


def embed(net, images, spec):
    batch = np.stack([pixels(images.open(i), spec["image_size"]) for i in range(len(images))])
    with torch.no_grad():
        return net.eval()(to_tensor(batch, net.normalisation)).numpy()


def test_folder_and_zip_give_categories_from_folder_names(colour_folder, tmp_path):
    for source in (colour_folder, zip_folder(colour_folder, tmp_path / "c.zip")):
        train = datasets.from_path(source, split="train")
        test = datasets.from_path(source, split="test")
        assert len(train) == 48 and len(test) == 48
        assert train.classes == ["blue", "green", "red"]
        assert np.bincount(train.labels).tolist() == [16, 16, 16]
        assert train.open(0).mode == "RGB"


def test_a_source_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="No images"):
        datasets.from_path(tmp_path)
    with pytest.raises(ValueError, match="neither a folder nor a ZIP"):
        datasets.from_path(tmp_path / "notes.txt")


def test_average_precision_and_metrics_on_known_rankings():
    ap = evaluation.average_precision(np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]]))
    assert ap == pytest.approx([(1 + 2 / 3) / 2, 0.0, (1 / 2 + 2 / 3) / 2])
    # two tight, separate clusters: perfect retrieval
    db = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.14, 0.99]], dtype=np.float32)
    q = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    m = evaluation.retrieval_metrics(q, np.array([0, 1]), db, np.array([0, 0, 1, 1]), top=2)
    assert m["map@2"] == 1.0 and m["map@all"] == 1.0 and m["precision@10"] == 0.5
    assert m["confusion"] == [[2, 2], [2, 2]]  # all four database items are among the 10 nearest
    swapped = evaluation.retrieval_metrics(q, np.array([1, 0]), db, np.array([0, 0, 1, 1]), top=2)
    assert swapped["map@2"] == 0.0


def test_hamming_distance_of_packed_codes():
    vectors = np.array([[1, -1, 1, -1], [1, 1, 1, 1], [-1, 1, -1, 1]], dtype=np.float32)
    codes = evaluation.pack_codes(vectors)
    assert evaluation.hamming(codes[:1], codes).tolist() == [[0, 2, 4]]


def test_hamming_ties_are_not_broken_by_the_database_order():
    """A database sorted by class, every code the same: database-order ties would put the
    query's class first (mAP 1.0 for class 0); a fixed random order gives the base rate."""
    rng = np.random.default_rng(0)
    db_labels = np.repeat(np.arange(10), 100)
    codes = np.zeros((1000, 6), dtype=np.uint8)
    vectors = rng.normal(size=(1000, 8)).astype(np.float32)
    q_labels = np.zeros(20, dtype=np.int64)
    m = evaluation.retrieval_metrics(
        vectors[:20], q_labels, vectors, db_labels, top=100, q_codes=codes[:20], db_codes=codes
    )
    assert m["map@100"] < 0.3
    shuffled = rng.permutation(1000)
    again = evaluation.retrieval_metrics(
        vectors[:20],
        q_labels,
        vectors[shuffled],
        db_labels[shuffled],
        top=100,
        q_codes=codes[:20],
        db_codes=codes,
    )
    assert abs(again["map@100"] - m["map@100"]) < 0.15


def test_losses_prefer_embeddings_that_put_classes_together():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1
    )
    bad = good[[0, 2, 1, 3]]
    assert losses.pair_softmax(good, good, labels) < losses.pair_softmax(bad, bad, labels)
    assert losses.triplet_batch_hard(good, good, labels, margin=0.2) == 0
    assert losses.triplet_batch_hard(bad, bad, labels, margin=0.2) > 0
    assert losses.nt_xent(good, good) < losses.nt_xent(good, good[[1, 0, 3, 2]])


@pytest.mark.parametrize(
    "size, layer",
    [
        (4, lambda: torch.nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=False)),
        (4, lambda: torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)),
        (8, lambda: Conv2dSame(6, 6, 5, stride=2, groups=6, bias=False)),  # TF 'same' padding
        (7, lambda: Conv2dSame(6, 6, 3, stride=2, groups=6, bias=False)),
        (12, lambda: torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)),  # large: the layer
    ],
)
def test_small_map_depthwise_computes_what_the_convolution_does(size, layer):
    torch.manual_seed(0)
    conv = layer()
    fast = use_small_map_depthwise(torch.nn.Sequential(conv))[0]
    assert isinstance(fast, SmallMapDepthwise) and fast.weight is conv.weight
    x = torch.randn(3, 6, size, size, requires_grad=True)
    expected = conv(x)
    (grad_x_expected, grad_w_expected) = torch.autograd.grad(expected.pow(2).sum(), (x, conv.weight))
    got = fast(x)
    (grad_x, grad_w) = torch.autograd.grad(got.pow(2).sum(), (x, fast.weight))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(grad_x, grad_x_expected, atol=1e-4)
    assert torch.allclose(grad_w, grad_w_expected, atol=1e-4)
    assert list(torch.nn.Sequential(fast).state_dict()) == ["0.weight"]


@pytest.mark.parametrize("bits", [0, 16])
def test_lite0_embedding_net_gives_unit_vectors_of_its_size(bits):
    net = EmbeddingNet(make_spec("metric", bits=bits or None, frozen_stages=5), pretrained=True).eval()
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, bits or 128)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not any(p.requires_grad for p in net.trunk.parameters())


def small_spec(kind, **extra):
    return make_spec(kind, arch="small_cnn", image_size=32, batch_size=24, lr=3e-3, width=16, **extra)


def test_metric_learning_separates_categories_and_saves_a_loadable_model(colour_folder, tmp_path):
    train = datasets.from_path(colour_folder, split="train")
    test = datasets.from_path(colour_folder, split="test")
    spec = small_spec("metric")
    untrained_net = Trainer(spec, train, tmp_path / "untrained").net
    before = evaluation.retrieval_metrics(
        embed(untrained_net, test, spec), test.labels, embed(untrained_net, train, spec), train.labels, top=16
    )
    trainer = Trainer(spec, train, tmp_path / "run", minutes=5, epochs=15)
    result = trainer.run()
    assert result["epochs"] >= 15 and len(result["history"]) >= 2
    model = load_model(tmp_path / "run" / "model.pt")
    trained = embed(model, test, spec)
    db = embed(model, train, spec)
    after = evaluation.retrieval_metrics(trained, test.labels, db, train.labels, top=16)
    assert after["map@16"] >= 0.9, after
    assert after["precision@10"] > before["precision@10"]
    assert np.allclose(trained, embed(trainer.net, test, spec), atol=1e-5)  # the file is the model


def test_training_stops_when_cancelled_and_resumes_from_its_checkpoint(colour_folder, tmp_path):
    train = datasets.from_path(colour_folder, split="train")
    spec = small_spec("triplet")
    steps = {"n": 0}

    def stop_after_a_few():
        steps["n"] += 1
        return steps["n"] > 5

    with pytest.raises(Cancelled):
        Trainer(spec, train, tmp_path, minutes=5, epochs=6, should_stop=stop_after_a_few).run()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"]
    assert 3 <= saved["step"] <= 6 and not (tmp_path / "model.pt").exists()
    result = Trainer(spec, train, tmp_path, minutes=5, epochs=6).run()
    assert result["steps"] == 12  # 6 epochs of 2 batches, counting the steps before the cancel
    assert (tmp_path / "model.pt").exists()


def test_autoencoder_reconstructs_better_than_the_mean_picture(colour_folder, tmp_path):
    train = datasets.from_path(colour_folder, split="train")
    spec = make_spec("autoencoder", width=8, dim=16, batch_size=16, lr=3e-3)
    result = Trainer(spec, train, tmp_path, minutes=5, epochs=30).run()
    raw = np.stack([pixels(train.open(i), 32) for i in range(len(train))])
    x = raw.astype(np.float32) / 255 - 0.5
    variance = float(((x - x.mean(axis=0)) ** 2).mean())  # MSE of always answering the mean picture
    assert result["train_mse"] < 0.5 * variance, (result["train_mse"], variance)
    model = load_model(tmp_path / "model.pt")
    codes = model(to_tensor(raw[:2], model.normalisation))
    assert codes.shape == (2, 16)


def test_contrastive_hash_model_trains_without_labels(colour_folder, tmp_path):
    images = datasets.from_path(colour_folder, split="train")
    images.labels[:] = -1  # no categories at all
    spec = small_spec("contrastive", bits=16)
    result = Trainer(spec, images, tmp_path, minutes=1, epochs=3).run()
    model = load_model(tmp_path / "model.pt")
    vectors = embed(model, images, spec)
    assert result["steps"] >= 6 and vectors.shape == (48, 16)
    assert evaluation.pack_codes(vectors).shape == (48, 2)


def test_metric_learning_needs_two_categories(colour_folder, tmp_path):
    images = datasets.from_path(colour_folder, split="train")
    images.labels[:] = 0
    with pytest.raises(ValueError, match="two categories"):
        Trainer(small_spec("metric"), images, tmp_path)


def test_cached_frozen_features_equal_what_the_saved_model_computes(colour_folder, tmp_path):
    """The frozen stages run once, before training; the finished model file must embed new
    images exactly as training saw them (frozen batch-norm statistics stay ImageNet's)."""
    train = datasets.from_path(colour_folder, split="train")
    spec = make_spec("metric", frozen_stages=5, image_size=32, batch_size=16)
    trainer = Trainer(spec, train, tmp_path, minutes=5, epochs=1)
    before = {k: v.clone() for k, v in trainer.net.trunk.state_dict().items()}
    trainer.run()
    after = trainer.net.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    cached = torch.load(tmp_path / "features.pt", weights_only=True)[0]
    with torch.no_grad():
        from_cache = trainer.net.eval().embed_from_trunk(cached.float()).numpy()
    from_file = embed(load_model(tmp_path / "model.pt"), train, spec)
    assert np.allclose(from_cache, from_file, atol=2e-2)  # fp16 cache
    assert (from_cache * from_file).sum(axis=1).min() > 0.999


def test_the_spec_table_says_what_each_kind_takes():
    from gallery.learning import spec as specs
    from gallery.models import ModelVersion

    assert ModelVersion.Kind is specs.Kind and specs.TRAINED_KINDS == (
        "autoencoder",
        "metric",
        "triplet",
        "contrastive",
    )
    contrastive = make_spec("contrastive", lr=None, dim=64)
    assert contrastive["views"] == 2 and contrastive["dim"] == 64 and contrastive["lr"] == 1e-3
    assert make_spec("autoencoder")["views"] == 1  # COMMON
    with pytest.raises(ValueError, match="Hash codes are learned by the metric, triplet and contrastive"):
        make_spec("autoencoder", bits=16)
    with pytest.raises(ValueError, match="Unknown kind"):
        make_spec("pretrained")
    with pytest.raises(ValueError, match="between 8 and 256"):
        specs.check_bits("metric", 4)
    specs.check_bits("triplet", 48)
    assert {o.flag for o in specs.OPTIONS} >= {"--image-size", "--max-images", "--frozen-stages"}


def test_the_pretrained_and_learned_paths_share_one_normalisation():
    """`to_tensor` computes what the NumPy normalisation of the pretrained embedders did."""
    from gallery.embedders import transforms

    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for norm in (transforms.IMAGENET, transforms.HALF, transforms.CENTRED):
        mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
        expected = ((batch.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        assert np.array_equal(transforms.to_tensor(batch, norm).numpy(), expected)
