"""The retrieval pipeline's parts on their own: the hash index's exact nearest-hash scan and
both local-feature detectors' verification of a copy, and pixel matching of a close-up and of
a smaller copy and of a copy under marks (real product photos)."""

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageDraw, ImageOps

from gallery.imaging import JpegTables, decode_image
from gallery.retrieval import features_file, regions
from gallery.retrieval.hashes import HashIndex, hamming, pdq_hash
from gallery.retrieval.laid_over import laid_colour_agreement
from gallery.retrieval.params import RetrievalParams
from gallery.retrieval.pixels import (
    QueryPixels,
    best_overlaid_copy,
    best_pixel_match,
    best_smaller_copy,
    compressed_like,
    item_colour,
    item_pixels,
)
from gallery.retrieval.recolouring import Recolouring, recolouring
from gallery.retrieval.regions import Box
from gallery.retrieval.tiers import (
    CopyThresholds,
    Decision,
    Evidence,
    Match,
    classify,
    colour_variant,
    pixel_copy,
)
from gallery.retrieval.verify import (
    RATIO,
    Detector,
    _ratio_matches,
    features,
    item_features,
    mirrored_query_features,
    query_features,
    verify,
)
from gallery.selectors.search import RegionScore
from gallery.selectors.search_checks import Candidate, Query
from gallery.selectors.search_ranking import ordered_copies, suggested_regions
from tests.conftest import dataset


def _products(count: int, archive: str = "fashion-products-6k.zip", folder: str = "") -> list[PILImage.Image]:
    """The first `count` photos of a dataset archive (the product photos by default)."""
    with zipfile.ZipFile(dataset(archive)) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg") and n.startswith(folder))[:count]
        return [PILImage.open(io.BytesIO(zf.read(n))).convert("RGB") for n in names]


def test_nearest_hashes_are_those_of_an_exhaustive_count():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5000, 32), dtype=np.uint8)
    index = HashIndex(np.arange(5000) + 100, codes)
    for query in (codes[17] ^ np.uint8(5), rng.integers(0, 256, 32, dtype=np.uint8)):
        found = index.nearest(query, 5)
        distances = hamming(codes, query)
        assert [m.distance for m in found] == sorted(distances)[:5]
        assert all(distances[m.label - 100] == m.distance for m in found)
    assert index.nearest(codes[17] ^ np.uint8(5), 1)[0].label == 117
    assert HashIndex(np.zeros(0), np.zeros((0, 32), np.uint8)).nearest(codes[0], 3) == []


def test_hashes_within_a_radius_are_those_of_an_exhaustive_count_for_every_query_variant():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (20000, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (3, 32), dtype=np.uint8)
    for n in range(60):  # planted near each query variant at 0-31 bits
        row, bits = rng.integers(0, 20000), rng.choice(256, n % 32, replace=False)
        flipped = np.unpackbits(queries[n % 3]).copy()
        flipped[bits] ^= 1
        codes[row] = np.packbits(flipped)
    index = HashIndex(np.arange(20000) + 7, codes)
    for radius in (12, 28, 31):
        found = [(m.label, m.distance, m.variant) for m in index.within(queries, radius)]
        distances = np.stack([hamming(codes, q) for q in queries])  # variants x rows
        expected = sorted(
            (int(row) + 7, int(distances[:, row].min()), int(distances[:, row].argmin()))
            for row in np.flatnonzero(distances.min(axis=0) <= radius)
        )
        assert sorted(found) == expected, radius
        assert len(expected) >= 20


def test_a_product_photo_hash_is_nearest_to_its_own_tiny_thumbnail():
    photos = _products(60)
    index = HashIndex(np.arange(60), np.stack([np.frombuffer(pdq_hash(p)[0], np.uint8) for p in photos]))
    for n in (4, 31):
        tiny = photos[n].resize((20, 27), PILImage.Resampling.BILINEAR)
        out = io.BytesIO()
        tiny.save(out, "JPEG", quality=30)
        query = np.frombuffer(pdq_hash(PILImage.open(out))[0], np.uint8)
        first, second = index.nearest(query, 2)
        assert first.label == n and second.distance - first.distance >= 10


@pytest.mark.parametrize("detector", list(Detector))
def test_each_detector_verifies_a_copy_on_a_canvas_and_not_another_item(detector):
    item, other = _products(2)
    canvas = PILImage.new("RGB", (1024, 768), (240, 240, 235))
    canvas.paste(item.resize((420, 560), PILImage.Resampling.BICUBIC), (520, 100))
    query = query_features(canvas.resize((512, 384)), detector)
    found = verify(query, None, item_features(item, detector))
    assert found is not None and found.inliers >= 15 and found.agreement >= 0.5
    x, y, w, h = found.box.as_list()
    assert (
        abs(x - 260) < 20 and abs(y - 50) < 20 and abs(w - 210) < 20 and abs(h - 280) < 20
    )  # pixels of the 512-wide query
    wrong = verify(query, None, item_features(other, detector))
    assert wrong is None or wrong.inliers < 15 or wrong.agreement < 0.3


@pytest.mark.parametrize("detector", list(Detector))
def test_matches_are_opencv_s_brute_force_ratio_test_pairs_exactly(detector):
    """faiss finds the nearest two features (5x faster than OpenCV's matcher for ORB): the
    pairs that pass the ratio test are the same, ties included, in any thread."""
    photos = _products(6)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING if detector is Detector.ORB else cv2.NORM_L2)
    compared = 0
    for n, photo in enumerate(photos):
        turned = photo.rotate(4 * n - 8, expand=True, fillcolor=(255, 255, 255)).resize((500, 640))
        query, item = query_features(turned, detector), item_features(photo, detector)
        pairs = matcher.knnMatch(query.float_descriptors(), item.float_descriptors(), k=2)
        expected = [(m.queryIdx, m.trainIdx) for m, o in pairs if m.distance < RATIO * o.distance]
        with ThreadPoolExecutor(1) as pool:  # as in a web process's request thread
            found = pool.submit(_ratio_matches, query, item).result()
        assert list(zip(*(a.tolist() for a in found))) == expected
        compared += len(expected)
    assert compared > 200


@pytest.mark.parametrize("detector", list(Detector))
def test_an_item_s_features_are_kept_small_and_verify_exactly_as_the_full_ones(detector):
    """A process caches thousands of items' features: the compact ones (the grey photo at
    its own size, SIFT's descriptors as bytes) must give the very same verification."""
    item = _products(1)[0]
    canvas = PILImage.new("RGB", (1024, 768), (240, 240, 235))
    canvas.paste(item.rotate(6, expand=True, fillcolor=(240, 240, 235)).resize((430, 570)), (300, 90))
    query = query_features(canvas.resize((512, 384)), detector)
    compact = item_features(item, detector)
    full = features(item, detector.item_side, detector)

    def kept(f):
        return sum(a.nbytes for a in (f.points, f.descriptors, f._grey) if a is not None)

    assert kept(compact) * 3 < kept(full)
    assert np.array_equal(compact.grey, full.grey)
    a, b = verify(query, None, compact), verify(query, None, full)
    assert a is not None and b is not None and a.inliers >= 15
    assert (a.inliers, a.box, a.agreement) == (b.inliers, b.box, b.agreement)


@pytest.mark.parametrize("detector", list(Detector))
def test_an_item_s_features_read_back_from_their_file_verify_exactly_as_computed(detector):
    """Features are kept in a file when the photo is stored: read back, with the photo opened
    only when the pixel check needs it, they give the very same verification. A file of
    another version or detector, or cut short, is not taken for them."""
    item = _products(1)[0]
    canvas = PILImage.new("RGB", (1024, 768), (240, 240, 235))
    canvas.paste(item.rotate(-5, expand=True, fillcolor=(240, 240, 235)).resize((430, 570)), (250, 80))
    query = query_features(canvas.resize((512, 384)), detector)
    computed = item_features(item, detector)
    data = features_file.encode(computed)
    opened = []

    def photo():
        opened.append(1)
        return item

    kept = features_file.decode(data, detector, photo)
    assert kept is not None and not opened
    assert np.array_equal(kept.points, computed.points) and np.array_equal(
        kept.descriptors, computed.descriptors
    )
    a, b = verify(query, None, kept), verify(query, None, computed)
    assert a is not None and b is not None and a.inliers >= 15 and opened
    assert (a.inliers, a.box, a.agreement) == (b.inliers, b.box, b.agreement)
    other = Detector.SIFT if detector is Detector.ORB else Detector.ORB
    assert features_file.decode(data, other, photo) is None
    assert features_file.decode(data[:-1], detector, photo) is None
    assert features_file.decode(data[:4] + b"\x09\x00" + data[6:], detector, photo) is None  # version 9


def test_a_close_up_s_pixels_are_found_in_its_photo_and_lead_the_other_candidates():
    photos = _products(30)
    item = photos[7]
    w, h = round(item.width * 0.45), round(item.height * 0.45)
    close_up = item.crop((20, 30, 20 + w, 30 + h)).resize((w * 4, h * 4), PILImage.Resampling.BICUBIC)
    out = io.BytesIO()
    close_up.save(out, "JPEG", quality=70)
    query = QueryPixels(PILImage.open(out))
    match = query.match(item_pixels(item))
    assert match is not None and match.correlation >= 0.98 and 0.35 < match.share < 0.6
    label, best = best_pixel_match(query, {n: item_pixels(p) for n, p in enumerate(photos)})
    assert label == 7 and best.gap > 0.01  # (shoes of the same shape in the same pose come next)
    # A picture not made of the photo's pixels (another item, turned) is not taken for it.
    turned = QueryPixels(photos[3].rotate(20, expand=True, fillcolor=(255, 255, 255)))
    found = best_pixel_match(turned, {n: item_pixels(p) for n, p in enumerate(photos) if n != 3})
    assert found is None or found[1].correlation < 0.98 or found[1].gap < 0.02
    # A flat picture says nothing.
    assert QueryPixels(PILImage.new("RGB", (300, 400), (200, 30, 30))).match(item_pixels(item)) is None


def _jpeg_thumbnail(photo: PILImage.Image, share: float, quality: int) -> PILImage.Image:
    small = photo.resize(
        (round(photo.width * share), round(photo.height * share)), PILImage.Resampling.BILINEAR
    )
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality)
    return PILImage.open(out)


def test_a_smaller_copy_is_compared_at_its_own_size_and_leads_the_other_candidates():
    photos = _products(40)
    items = {n: item_pixels(p) for n, p in enumerate(photos[:30])}
    thresholds = CopyThresholds()
    for share, quality in ((0.33, 30), (0.5, 20)):
        labelled, enlarged = [], []
        for n in range(30):
            thumbnail = QueryPixels(_jpeg_thumbnail(photos[n], share, quality))
            label, best = best_smaller_copy(thumbnail, items)
            if pixel_copy(best, thresholds):
                labelled.append(label == n)
            # Enlarged to the photo's size (the close-up sweep), it rarely passes, never wrongly.
            close_up = best_pixel_match(thumbnail, items)
            enlarged.append(close_up is not None and pixel_copy(close_up[1], thresholds) and close_up[0] == n)
            assert close_up is None or not pixel_copy(close_up[1], thresholds) or close_up[0] == n
        # Most are taken for their photo (not those with a twin among the 30: shoes of one
        # shape in one pose), and none for another.
        assert len(labelled) >= 18 and all(labelled), (share, labelled)
        assert sum(enlarged) < len(labelled) // 2
        # Thumbnails of items that are not among the candidates are taken for none of them.
        for outside in photos[30:]:
            found = best_smaller_copy(QueryPixels(_jpeg_thumbnail(outside, share, quality)), items)
            assert found is None or not pixel_copy(found[1], thresholds), found
    # A picture as big as the photo, or of another shape, is not a smaller copy.
    assert QueryPixels(photos[7]).smaller_copy(items[7]) is None
    assert (
        QueryPixels(_jpeg_thumbnail(photos[7].crop((0, 0, 60, 40)), 0.5, 50)).smaller_copy(items[7]) is None
    )


def test_a_thumbnail_is_compared_with_its_photo_compressed_as_it_was():
    """A tiny JPEG's 8x8-block artefacts set it apart from the sharp photo; the photo shrunk
    and saved with the query's own tables (read at decoding) has them too, whatever common
    filter made the thumbnail."""
    photos = _products(16)
    filters = (
        PILImage.Resampling.BOX,
        PILImage.Resampling.BILINEAR,
        PILImage.Resampling.BICUBIC,
        PILImage.Resampling.LANCZOS,
    )
    alike, plain = [], []
    for n, photo in enumerate(photos):
        small = photo.resize((round(photo.width / 3), round(photo.height / 3)), filters[n % 4])
        out = io.BytesIO()
        small.save(out, "JPEG", quality=20 + n)
        decoded = decode_image(out.getvalue(), max_bytes=10**6, max_pixels=10**6)
        assert decoded.jpeg is not None
        item = item_pixels(photo)
        alike.append(QueryPixels(decoded.image, decoded.jpeg).smaller_copy(item))
        plain.append(QueryPixels(decoded.image).smaller_copy(item))
    assert min(alike) >= 0.99, alike
    assert np.mean(alike) > np.mean(plain) + 0.01, (alike, plain)
    # Tables that cannot be written again leave the photo as it is (the search goes on).
    grey = item_pixels(photos[0])
    assert compressed_like(grey, JpegTables(((5,) * 10,), -1)) is grey
    # Only a JPEG's pixels as stored have its artefacts: not a PNG, not a reduced-scale draft.
    png = io.BytesIO()
    photos[0].save(png, "PNG")
    assert decode_image(png.getvalue(), max_bytes=10**6, max_pixels=10**6).jpeg is None
    big = io.BytesIO()
    photos[0].resize((600, 800)).save(big, "JPEG", quality=80)
    drafted = decode_image(big.getvalue(), max_bytes=10**7, max_pixels=10**7, draft_size=200)
    assert drafted.image.width < 600 and drafted.jpeg is None


def test_a_close_up_is_told_apart_from_a_colour_variant_of_its_photo_by_its_colours():
    """Colour variants of one shot are alike in grey: the lead is then their colours'."""
    photo = _products(8)[7]
    y, cb, cr = photo.convert("YCbCr").split()
    twin = PILImage.merge("YCbCr", (y, cr, cb)).convert("RGB")  # the same greys, other colours
    w, h = round(photo.width * 0.45), round(photo.height * 0.45)
    query = QueryPixels(
        photo.crop((10, 20, 10 + w, 20 + h)).resize((w * 3, h * 3), PILImage.Resampling.BICUBIC)
    )
    items = {1: item_pixels(photo), 2: item_pixels(twin)}
    grey = best_pixel_match(query, items)
    assert grey is not None and grey[1].gap < 0.02  # in grey, no lead
    colours = {1: item_colour(photo), 2: item_colour(twin)}
    label, match = best_pixel_match(query, items, colours.get)
    assert label == 1 and match.correlation >= 0.98 and match.gap >= 0.02


def test_a_crop_of_most_of_a_photo_is_a_copy_by_its_pixels_only_when_its_local_features_agree():
    """Pixels alone matched another item of the same cut and tone (a wallet, 0.987): a crop
    that shows most of the photo keeps its local features, so they must agree too."""
    thresholds = CopyThresholds()
    photos = _products(12)
    items = {n: item_pixels(p) for n, p in enumerate(photos)}
    copies = 0
    for n, photo in enumerate(photos):
        w, h = photo.size
        crop = photo.crop((w // 12, h // 12, w - w // 16, h - h // 20)).resize((w * 2, h * 2))
        found = best_pixel_match(QueryPixels(crop), items)
        assert found is not None
        label, match = found
        assert match.share >= thresholds.pixel_crop_share
        if label != n or match.correlation < thresholds.pixel_correlation:
            continue
        assert not pixel_copy(match, thresholds)  # its pixels alone are not enough...
        item = photo.convert("RGB")
        v = verify(query_features(crop, Detector.ORB), None, item_features(item, Detector.ORB))
        if v is not None and v.inliers >= thresholds.pixel_crop_inliers:
            copies += pixel_copy(match, thresholds, v)  # ...with its local features they are
        lone = Evidence(cosine=0.9, pixels={match.check: match})
        assert classify(lone, thresholds).match == Match.SIMILAR
    assert copies >= 6


def test_a_mirrored_copy_verifies_with_sift_features_mirrored_from_the_query_s_own():
    """`mirrored_sift` spares the mirror image's detection: its features verify mirrored
    copies as the mirror's own detection does, and the query as it is does not verify."""
    direct, derived = [], []
    for photo in _products(60)[::5]:
        w, h = photo.size
        query = ImageOps.mirror(photo).crop((w // 20, h // 25, w - w // 30, h))
        query = _jpeg_thumbnail(query.resize((round(w * 1.6), round(h * 1.6))), 1.0, 75).convert("RGB")
        item = item_features(photo, Detector.SIFT)
        own = query_features(query, Detector.SIFT)
        mirrored = mirrored_query_features(query, Detector.SIFT, own)
        assert len(mirrored) == len(own) and mirrored.grey.shape == own.grey.shape
        for found, made in ((direct, mirrored_query_features(query, Detector.SIFT)), (derived, mirrored)):
            v = verify(None, made, item)
            found.append(v is not None and v.mirrored and v.inliers >= 15 and v.agreement >= 0.72)
    assert sum(derived) >= sum(direct) - 1 and sum(derived) >= 10, (direct, derived)


def _marked(photo: PILImage.Image, colour: tuple[int, int, int]) -> PILImage.Image:
    """The photo enlarged 4x under a banner across the bottom quarter and a round sticker."""
    big = photo.resize((photo.width * 4, photo.height * 4), PILImage.Resampling.BICUBIC)
    draw = ImageDraw.Draw(big)
    draw.rectangle((0, big.height * 3 // 4, big.width, big.height), fill=colour)
    draw.ellipse((20, 30, 20 + big.width // 3, 30 + big.width // 3), fill=(255, 205, 0))
    out = io.BytesIO()
    big.save(out, "JPEG", quality=85)
    return PILImage.open(out).convert("RGB")


def test_a_copy_under_marks_shows_most_of_its_photo_unchanged_and_leads_the_other_candidates():
    photos = _products(40)
    colours = {n: item_colour(p) for n, p in enumerate(photos[:30])}
    thresholds = CopyThresholds()
    taken = []
    for n in range(0, 30, 3):
        found = best_overlaid_copy(QueryPixels(_marked(photos[n], (200, 20, 30))), colours)
        assert found is not None
        if pixel_copy(found[1], thresholds):
            taken.append(found[0] == n)
    assert len(taken) >= 7 and all(taken), taken
    for outside in photos[30:]:  # items not among the candidates, under the same marks
        found = best_overlaid_copy(QueryPixels(_marked(outside, (200, 20, 30))), colours)
        assert found is None or not pixel_copy(found[1], thresholds), found
    # A picture of another shape (the photo inside a wider one) is not compared.
    wide = PILImage.new("RGB", (300, 120), "white")
    wide.paste(photos[3], (100, 20))
    assert QueryPixels(wide).overlaid_copy(colours[3]) is None


def _turned_and_captioned(photo: PILImage.Image) -> PILImage.Image:
    """Mirrored, turned 6 degrees, enlarged 4x, a caption over it, JPEG 50."""
    big = ImageOps.mirror(photo).resize((photo.width * 4, photo.height * 4), PILImage.Resampling.BICUBIC)
    big = big.rotate(6, resample=PILImage.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    draw = ImageDraw.Draw(big)
    for x in range(12, big.width - 20, 14):  # letters of a caption
        draw.rectangle((x, 40, x + 8, 56), fill=(20, 20, 20))
    out = io.BytesIO()
    big.save(out, "JPEG", quality=50)
    return PILImage.open(out).convert("RGB")


def test_a_turned_captioned_copy_keeps_its_photo_s_colours_and_another_colour_of_it_does_not():
    """Marks and a turn lower the laid-over pixels' agreement (edges) under the bar for a
    copy; its colours, laid over the photo by the homography, are still the photo's, while
    another colour of the same shot (the same greys) keeps few of them."""
    photos = _products(8)
    for n in (0, 3, 7):  # coloured items (a grey one's other colour is itself)
        photo = photos[n]
        y, cb, cr = photo.convert("YCbCr").split()
        twin = PILImage.merge("YCbCr", (y, cr, cb)).convert("RGB")  # the same shot, other colours
        query = _turned_and_captioned(photo)
        found = verify(None, mirrored_query_features(query, Detector.ORB), item_features(photo, Detector.ORB))
        assert found is not None and found.inliers >= 20 and found.homography is not None and found.mirrored
        assert found.agreement < CopyThresholds().agreement  # the edges alone do not say "copy"
        picture = np.asarray(query)
        own = laid_colour_agreement(picture, item_colour(photo), found.homography, True)
        other = laid_colour_agreement(picture, item_colour(twin), found.homography, True)
        assert own is not None and own >= CopyThresholds().colour_agreement, own
        assert other is not None and other < 0.5, other
        # Laid over without the mirror, it is not the photo.
        unmirrored = laid_colour_agreement(picture, item_colour(photo), found.homography, False)
        assert unmirrored is None or unmirrored < 0.6, unmirrored


def _garment_recoloured(photo: PILImage.Image) -> PILImage.Image:
    """Another colour of the same shot: the middle band (the garment of a model's photo) in
    other colours (Cb and Cr swapped: the same greys, the same detail), the rest as it was."""
    y, cb, cr = photo.convert("YCbCr").split()
    twin = PILImage.merge("YCbCr", (y, cr, cb)).convert("RGB")
    band = (0, round(photo.height * 0.3), photo.width, round(photo.height * 0.65))
    out = photo.copy()
    out.paste(twin.crop(band), band[:2])
    return out


def _hue_turned(photo: PILImage.Image) -> PILImage.Image:
    h, s, v = photo.convert("HSV").split()
    return PILImage.merge("HSV", (h.point(lambda x: (x + 64) % 256), s, v)).convert("RGB")


def test_another_colour_of_the_same_shot_is_not_a_copy_but_a_hue_turn_or_marks_are():
    """Catalogues shoot each colour of an item in the same pose: laid over the photo, such a
    picture keeps part of its colours and shows the rest, with the same detail, in others. A
    hue turn changes every colour; marks change the detail under them too."""
    thresholds = CopyThresholds()
    variants = []
    for photo in _products(12, folder="topwear/"):
        checked = {}
        for name, edited in (
            ("variant", _garment_recoloured(photo)),
            ("hue", _hue_turned(photo)),
            ("marks", _marked(photo, (200, 20, 30))),
        ):
            query = edited.resize((photo.width * 4, photo.height * 4), PILImage.Resampling.BICUBIC)
            found = verify(query_features(query, Detector.ORB), None, item_features(photo, Detector.ORB))
            assert found is not None and found.homography is not None and found.inliers >= 20, name
            found.recolouring = recolouring(np.asarray(query), item_colour(photo), found.homography, False)
            checked[name] = found
        assert not colour_variant(checked["hue"], thresholds)
        assert not colour_variant(checked["marks"], thresholds)
        variants.append(colour_variant(checked["variant"], thresholds))
        if variants[-1]:  # labelled a look-alike, and said why
            decision = classify(Evidence(cosine=0.97, verification=checked["variant"]), thresholds)
            assert decision.match == Match.SIMILAR and "another colour" in decision.explanation
    assert sum(variants) >= 8, variants


def test_a_far_but_nearest_hash_makes_a_copy_only_of_a_picture_of_the_photos_shape():
    """The nearest hash by far, well past the copy radius (a blurred or stickered copy), is a
    copy; of a picture of another shape it is not: that picture was hashed stretched, and a
    small item on a page lies as near another item's photo (a pink wallet fitted into a
    1024x768 page: 58 bits from a black wallet's photo, 26 nearer than any other's)."""
    from gallery.retrieval.tiers import Evidence, Match, classify

    t = CopyThresholds()
    far = dict(cosine=0.81, hash_distance=t.nearest_copy_distance - 2, hash_gap=t.nearest_copy_gap + 2)
    assert classify(Evidence(**far, same_aspect=True), t).match == Match.NEAR_DUPLICATE
    other_shape = classify(Evidence(**far, same_aspect=False), t)
    assert other_shape.match == Match.SIMILAR
    assert other_shape.distinct_hash  # (still the likeliest look-alike: its hash leads)


def test_a_close_up_without_a_lead_is_not_a_copy_but_leads_the_look_alikes():
    """Part of this photo and nearly as much of a look-alike's (another colour of one shot):
    not labelled a copy, but ranked above every look-alike by its vectors."""
    from gallery.retrieval.pixels import PixelCheck, PixelMatch
    from gallery.retrieval.tiers import Evidence, Match, classify

    t = CopyThresholds()
    tied = Evidence(cosine=0.3, pixels={PixelCheck.CLOSE_UP: PixelMatch(0.995, 0.4, gap=0.005)})
    decision = classify(tied, t)
    assert decision.match == Match.SIMILAR and decision.strength > 1.0 + t.nearest_hash_bonus
    assert decision.explanation == "much like part of this photo"
    clear = Evidence(cosine=0.3, pixels={PixelCheck.CLOSE_UP: PixelMatch(0.995, 0.4, gap=0.05)})
    assert classify(clear, t).match == Match.NEAR_DUPLICATE
    weak = Evidence(cosine=0.3, pixels={PixelCheck.CLOSE_UP: PixelMatch(0.95, 0.4, gap=0.005)})
    assert classify(weak, t).strength < 1.0


def test_a_photo_mostly_under_marks_with_a_clear_lead_is_not_a_copy_but_leads_the_look_alikes():
    """Stickers over most of a small product: less of the photo unchanged than a copy needs,
    but far more than of any other candidate's photo."""
    from gallery.retrieval.pixels import PixelCheck, PixelMatch
    from gallery.retrieval.tiers import Evidence, classify

    t = CopyThresholds()
    hidden = Evidence(
        cosine=0.4, pixels={PixelCheck.OVERLAID: PixelMatch(0.45, 1.0, 0.25, PixelCheck.OVERLAID)}
    )
    decision = classify(hidden, t)
    assert decision.match == Match.SIMILAR and decision.strength > 1.0 + t.nearest_hash_bonus
    assert decision.explanation == "much like this photo, with marks over it"
    shown = Evidence(
        cosine=0.4, pixels={PixelCheck.OVERLAID: PixelMatch(0.7, 1.0, 0.25, PixelCheck.OVERLAID)}
    )
    assert classify(shown, t).match == Match.NEAR_DUPLICATE
    for correlation, gap in ((0.45, 0.1), (0.25, 0.25)):  # no lead, or too little of it unchanged
        other = PixelMatch(correlation, 1.0, gap, PixelCheck.OVERLAID)
        assert classify(Evidence(cosine=0.4, pixels={PixelCheck.OVERLAID: other}), t).strength < 1.0


def test_a_copy_by_local_features_that_another_item_matches_nearly_as_well_is_a_look_alike():
    """The same model in the same pose in another shirt matches every photo of that shot:
    a ratio test between items. A copy its hash confirms, or two photos that are both
    copies (one picture listed twice), are not contested."""
    from gallery.retrieval.tiers import contested
    from gallery.retrieval.verify import Verification

    t = CopyThresholds()

    def checked(inliers: int, agreement: float) -> Verification:
        return Verification(inliers, Box(0, 0, 60, 80), False, 0.0, 1.0, 1.0, agreement)

    def decide(evidence: dict[int, Evidence]) -> dict[int, Decision]:
        decisions = {label: classify(e, t) for label, e in evidence.items()}
        contested(decisions, evidence, t)
        return decisions

    shot = {1: Evidence(cosine=0.96, verification=checked(24, 0.75))}
    assert decide(shot)[1].match == Match.NEAR_DUPLICATE
    rival = Evidence(cosine=0.97, verification=checked(20, 0.6))  # not a copy itself
    decided = decide(shot | {2: rival})
    assert decided[1].match == Match.SIMILAR and decided[2].match == Match.SIMILAR
    assert decided[1].strength > 1.0 > decided[2].strength  # still the likeliest look-alike
    assert (
        decide(shot | {2: Evidence(cosine=0.97, verification=checked(12, 0.6))})[1].match
        == Match.NEAR_DUPLICATE
    )
    twice = {1: shot[1], 2: Evidence(cosine=0.97, verification=checked(23, 0.8))}
    assert all(d.match == Match.NEAR_DUPLICATE for d in decide(twice).values())
    hashed = {1: Evidence(cosine=0.96, hash_distance=10, verification=checked(24, 0.75)), 2: rival}
    assert decide(hashed)[1].match == Match.NEAR_DUPLICATE
    beside = Verification(20, Box(100, 0, 60, 80), False, 0.0, 1.0, 0.4, 0.6)  # another part of it
    assert decide(shot | {2: Evidence(cosine=0.97, verification=beside)})[1].match == Match.NEAR_DUPLICATE
    variant = checked(30, 0.6)  # the same shot in another colour: its colours tell it apart
    variant.recolouring = Recolouring(kept=0.2, changed=0.5, same_detail=0.8)
    assert colour_variant(variant, t)
    assert decide(shot | {2: Evidence(cosine=0.97, verification=variant)})[1].match == Match.NEAR_DUPLICATE
    # Two copies in one place: the one with far fewer matches is another photo of the shot
    # (a watch's gold version beside its own photo), not a second copy.
    strong = {1: Evidence(cosine=0.98, verification=checked(121, 0.87))}
    weaker = Evidence(cosine=0.93, verification=checked(46, 0.77))
    decided = decide(strong | {2: weaker})
    assert decided[1].match == Match.NEAR_DUPLICATE and decided[2].match == Match.SIMILAR
    elsewhere = Verification(46, Box(200, 0, 60, 80), False, 0.0, 1.0, 0.3, 0.77)  # another object
    decided = decide(strong | {2: Evidence(cosine=0.93, verification=elsewhere)})
    assert decided[2].match == Match.NEAR_DUPLICATE
    # A look-alike with many matches whose homography lays its pixels far worse than the
    # copy's (a phone screenshot of a dress: 37 matches at 0.97, another dress 29 at 0.40)
    # is no rival; one laying them nearly as well is.
    fitted = {1: Evidence(cosine=0.9, verification=checked(37, 0.8))}
    assert decide(fitted | {2: Evidence(cosine=0.9, verification=checked(29, 0.4))})[1].match == (
        Match.NEAR_DUPLICATE
    )
    assert decide(fitted | {2: Evidence(cosine=0.9, verification=checked(29, 0.6))})[1].match == (
        Match.SIMILAR
    )


def test_a_copy_whose_detail_keeps_its_colours_is_not_taken_for_another_colour_of_the_shot():
    """Coloured text over a photo changes many coloured pixels along its detail, as another
    colour of the shot would; the photo's detailed pixels measured apart mostly keep their
    colours (`Verification.colour_agreement`), and settle it."""
    from gallery.retrieval.verify import Verification

    t = CopyThresholds()
    v = Verification(55, Box(0, 0, 60, 80), False, 0.0, 1.0, 1.0, 0.55)
    v.recolouring = Recolouring(kept=0.18, changed=0.44, same_detail=0.89)
    v.colour_agreement = 0.6
    assert colour_variant(v, t)
    assert classify(Evidence(cosine=0.93, verification=v), t).match == Match.SIMILAR
    v.colour_agreement = 0.84
    assert not colour_variant(v, t)
    assert classify(Evidence(cosine=0.93, verification=v), t).match == Match.NEAR_DUPLICATE


def test_copies_in_one_part_of_the_picture_are_ordered_by_evidence_and_parts_by_their_share():
    """A padded photo verifies against its own photo and the catalogue's other colour of it,
    their outlines a pixel apart: the one with more evidence first, not the one whose
    outline rounds to a larger share. A photo's subject still leads a small pasted item."""

    def near(box: Box | None, strength: float) -> Decision:
        return Decision(Match.NEAR_DUPLICATE, "a copy", box, strength)

    area = 100.0 * 100.0
    own, other_colour = near(Box(13, 0, 74, 100), 182.0), near(Box(12, 0, 76, 100), 172.0)
    assert round(own.box.area / area, 1) < round(other_colour.box.area / area, 1)  # (the trap)
    assert ordered_copies({1: other_colour, 2: own}, area) == [2, 1]
    subject, pasted = near(None, 120.0), near(Box(70, 70, 25, 25), 190.0)
    assert ordered_copies({1: pasted, 2: subject}, area) == [2, 1]
    exact = Decision(Match.EXACT, "the same picture", None, 1000.0)
    assert ordered_copies({1: subject, 2: pasted, 3: exact}, area)[0] == 3


def test_a_query_is_black_and_white_only_when_no_part_of_it_has_colour():
    """A red tie on a white page is mostly white, yet a colour photo: a copy of its catalogue
    photo is not explained as "in black and white"; the grey copy of any photo is."""
    from gallery.selectors.search_by_image import is_grayscale

    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        tie = PILImage.open(io.BytesIO(zf.read("other/40216.jpg"))).convert("RGB")
    photos = [*_products(12), tie]
    for photo in photos:
        out = io.BytesIO()
        ImageOps.grayscale(photo).convert("RGB").resize((512, 683)).save(out, "JPEG", quality=75)
        assert is_grayscale(PILImage.open(out))
    tie_query = tie.resize((512, 683), PILImage.Resampling.BILINEAR)
    assert np.asarray(tie_query).std(axis=2).mean() < 2.0  # on average it looks grey...
    assert not is_grayscale(tie_query)  # ...but the tie has colour


def test_a_copy_s_outline_is_the_first_region_suggested_before_look_alikes_regions():
    """A look-alike found in a grid window (listed first among the candidates) must not push
    the copy's exact outline off the suggestions."""
    picture = PILImage.new("RGB", (400, 400))
    query = Query(picture, None, np.zeros(4), np.zeros(4))  # type: ignore[arg-type]
    windows = [Box(0, 0, 200, 200), Box(200, 0, 200, 200), Box(0, 200, 200, 200), Box(200, 200, 200, 200)]
    decisions = {}
    for label, window in enumerate(windows):
        query.candidates[label] = Candidate(cosine=0.8 - label / 100, region=window)
        decisions[label] = Decision(Match.SIMILAR, "much like part of this photo", window, 0.8 - label / 100)
    query.regions = [RegionScore(Box(100, 100, 200, 200), 0.9)]
    outline = Box(120, 130, 150, 210)
    query.candidates[9] = Candidate(cosine=0.4)
    decisions[9] = Decision(Match.NEAR_DUPLICATE, "this photo, inside a larger picture", outline, 140.0)
    shown = suggested_regions(query, decisions, RetrievalParams())
    assert shown[0].box == outline
    assert [r.box for r in shown[1:3]] == windows[:2]  # then the look-alikes, best first


def test_a_photo_pasted_into_a_scene_is_framed_by_the_first_box_and_a_plain_scene_rarely():
    photos, scenes = _products(12), _products(24, "cifar10-jpg.zip")
    framed = 0
    for n, photo in enumerate(photos):
        scene = scenes[n].resize((384, 384), PILImage.Resampling.BICUBIC)
        side = (0.3 + 0.025 * n) * 384  # 30-60 % of the scene's side, as in bench/robust.py
        item = photo.resize((round(side * photo.width / photo.height), round(side)))
        x, y = (37 * n) % (384 - item.width), (53 * n) % (384 - item.height)
        scene.paste(item, (x, y))
        boxes = regions.framed_boxes(_jpeg_round_trip(scene))
        framed += bool(boxes) and boxes[0].iou(Box(x, y, item.width, item.height)) >= 0.5
    assert framed >= 10, framed
    plain = [regions.framed_boxes(s.resize((256, 256), PILImage.Resampling.BICUBIC)) for s in scenes[12:]]
    assert sum(len(b) for b in plain) <= 6, plain


def test_separate_objects_on_a_plain_background_are_boxed_and_one_photo_is_not():
    """A collage of product photos on a white or coloured page gives one box per photo (a
    pair of shoes is one object); a single product on a canvas its own; a scene and a plain
    picture none."""
    photos = _products(8)
    for colour in ((255, 255, 255), (230, 214, 190)):
        page = PILImage.new("RGB", (4 * 130 + 30, 2 * 170 + 30), colour)
        truth = []
        for n, photo in enumerate(photos):
            item = photo.resize((photo.width * 2, photo.height * 2), PILImage.Resampling.BICUBIC)
            x, y = 10 + (n % 4) * 135, 10 + (n // 4) * 175
            page.paste(item, (x, y))
            truth.append(Box(x, y, item.width, item.height))
        boxes = regions.object_boxes(_jpeg_round_trip(page))
        found = [t for t in truth if any(b.iou(t) >= 0.5 or t.covers(b, 0.9) for b in boxes)]
        assert len(found) >= 7, (colour, boxes)
        assert len(boxes) <= 10
    canvas = PILImage.new("RGB", (400, 400), "white")
    canvas.paste(photos[0].resize((180, 240)), (150, 80))
    (single,) = regions.object_boxes(_jpeg_round_trip(canvas))
    assert Box(150, 80, 180, 240).covers(single, 0.95) and single.area >= 0.3 * 180 * 240
    scene = _products(1, "cifar10-jpg.zip")[0].resize((384, 384), PILImage.Resampling.BICUBIC)
    assert regions.object_boxes(scene) == []
    assert regions.object_boxes(PILImage.new("RGB", (300, 200), (40, 90, 200))) == []


def _jpeg_round_trip(image: PILImage.Image) -> PILImage.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return PILImage.open(io.BytesIO(out.getvalue())).convert("RGB")


def test_a_large_stored_jpeg_is_decoded_at_a_reduced_scale_for_the_checks():
    """A query's checks open hundreds of candidates' photos: a large JPEG is decoded at the
    smallest scale that still gives every check the side it looks at."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from gallery.selectors.search_checks import CHECKED_SIDE, stored_photo

    photo = _products(1)[0].resize((2600, 2000), PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    name = default_storage.save("images/test/large.jpg", ContentFile(buffer.getvalue()))
    try:
        opened = stored_photo(name)
    finally:
        default_storage.delete(name)
    assert opened is not None and opened.mode == "RGB"
    assert min(opened.size) >= CHECKED_SIDE
    assert opened.size == (650, 500)  # an eighth would be smaller than CHECKED_SIDE: a quarter


def _fitted_into_page(photo: PILImage.Image) -> PILImage.Image:
    """A product photo fitted into 1024x768 on white (a shop's page), as JPEG, at the size
    the search looks at it (512x384)."""
    w = round(768 * photo.width / photo.height)
    page = PILImage.new("RGB", (1024, 768), "white")
    page.paste(photo.resize((w, 768), PILImage.Resampling.BICUBIC), ((1024 - w) // 2, 0))
    out = io.BytesIO()
    page.save(out, "JPEG", quality=90)
    return PILImage.open(io.BytesIO(out.getvalue())).convert("RGB").resize((512, 384))


def test_a_fitted_photo_s_content_is_its_own_photo_s_on_a_backdrop_or_with_thin_margins():
    """On a white page, a photo on a grey studio backdrop shows the whole photo as content
    (the photo's own content, cut from the backdrop, has another shape), and a photo whose
    item nearly fills it has margins too thin for a picture's content box: both are still
    compared, and agree with their own photo as a copy's content does, with no other
    product's photo."""
    from gallery.retrieval.content import PictureContent, content_agreement, photo_content
    from gallery.retrieval.pixels import PixelCheck, PixelMatch

    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        own = [
            PILImage.open(io.BytesIO(zf.read(f"topwear/{stem}.jpg"))).convert("RGB")
            for stem in ("7452", "5716", "5137")  # grey backdrops; margins of 6 % of its width
        ]
    photos = [photo_content(np.asarray(p)) for p in own + _products(40)]
    t = CopyThresholds()
    for i, photo in enumerate(own):
        page = _fitted_into_page(photo)
        box = regions.content_box(page)
        assert box is not None
        content = PictureContent(np.asarray(box.crop(page), dtype=np.float32))
        found = [content_agreement(content, parts) for parts in photos]
        theirs = found[i]
        assert theirs is not None
        others = [a.colour for j, a in enumerate(found) if a is not None and j != i]
        match = PixelMatch(
            theirs.colour,
            1.0,
            theirs.colour - max(others, default=-1.0),
            PixelCheck.CONTENT,
            detail=theirs.detail,
            inner_detail=theirs.inner_detail,
        )
        assert pixel_copy(match, t), (i, theirs)
        assert all(c < t.content_correlation for c in others), (i, max(others))


def test_a_content_match_needs_fine_detail_and_detail_inside_the_item_s_outline():
    """Cut to their outlines and aligned, two different black wallets agreed at 0.96 in
    colour and 0.95 in fine detail: a plain item's detail is its outline. Inside it they
    agreed at 0.43. A t-shirt with another print, worn by the same model in the same pose:
    0.97 in colour, 0.81 in detail."""
    from gallery.retrieval.pixels import PixelCheck, PixelMatch

    t = CopyThresholds()

    def content(colour: float, detail: float, inner: float) -> bool:
        match = PixelMatch(colour, 0.5, 0.1, PixelCheck.CONTENT, detail=detail, inner_detail=inner)
        return pixel_copy(match, t)

    assert content(0.99, 0.96, 0.95)
    assert not content(0.957, 0.954, 0.43)  # the other wallet
    assert not content(0.968, 0.808, 0.69)  # the other print
    assert not content(0.94, 0.96, 0.95)  # colours apart


def test_a_product_boxed_with_its_caption_is_cut_from_the_caption():
    """A listing page's object search joins a product to the caption under it: the main
    band of its rows is the product alone; a single band is no cut."""
    photo = _products(1)[0]
    cell = PILImage.new("RGB", (180, 260), "white")
    cell.paste(photo.resize((150, 200)), (15, 10))
    ImageDraw.Draw(cell).text((15, 228), "Item 316  $61.99", fill="black")
    product = regions.content_box(photo, min_share=0.0, max_share=1.0)
    band = regions.main_band(cell)
    assert band is not None and band.y + band.h <= 215 and band.h >= 0.9 * product.h * 2.5, band
    assert regions.main_band(photo) is None
