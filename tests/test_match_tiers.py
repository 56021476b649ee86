"""Finding an item in a real photo, through the API: match tiers on edited product photos,
the visitor's box and the suggested regions, photos from outside the gallery, and the same
tiers in upload dedupe, similar items and the duplicates page. A small slice of the shared
product photos (and CIFAR-10 as backgrounds and outside photos)."""

import io
import zipfile

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageDraw, ImageOps

from gallery import selectors, services
from gallery.models import Image
from gallery.retrieval.hashes import pdq_hash
from gallery.retrieval.tiers import CopyThresholds
from tests.conftest import dataset
from tests.helpers import embed_and_index

pytestmark = pytest.mark.django_db

COPY = ("exact", "near_duplicate")
GALLERY_SIZE = 40


def _zip_pictures(name: str, start: int, count: int) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(dataset(name)) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        return [(n, zf.read(n)) for n in names[start : start + count]]


@pytest.fixture
def products(clean_index):
    """40 product photos, indexed in-process; each with its original bytes."""
    items = []
    for name, data in _zip_pictures("fashion-products-6k.zip", 0, GALLERY_SIZE):
        image, _ = services.image_create(data=data, title=name.rsplit("/", 1)[-1], category="products")
        items.append((image, data))
    embed_and_index(*(image.pk for image, _ in items))
    return items


def _jpeg(picture: PILImage.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _search(client, data: bytes, **fields):
    response = client.post("/api/search", {"image": SimpleUploadedFile("q.jpg", data), "k": 10, **fields})
    assert response.status_code == 200, response.content
    return response.json()


def _open(data: bytes) -> PILImage.Image:
    return PILImage.open(io.BytesIO(data)).convert("RGB")


def _scene(item: PILImage.Image, share: float) -> tuple[PILImage.Image, tuple[int, int, int, int]]:
    """The item pasted off-centre into a larger photo (a CIFAR-10 picture, enlarged)."""
    (_, background), *_ = _zip_pictures("cifar10-jpg.zip", 7, 1)
    scene = _open(background).resize((800, 600), PILImage.Resampling.BICUBIC)
    w = round(scene.width * share)
    h = round(w * item.height / item.width)
    x, y = scene.width - w - 40, 60
    scene.paste(item.resize((w, h)), (x, y))
    return scene, (x, y, w, h)


EDITS = {
    "re-compressed": lambda im: im,
    "enlarged": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2)),
    "grayscale": lambda im: ImageOps.grayscale(im),
    "mirrored": lambda im: ImageOps.mirror(im),
    "off-centre crop": lambda im: im.crop((0, im.height // 8, round(im.width * 0.75), im.height)),
    "turned 8 degrees": lambda im: im.rotate(8, expand=True, fillcolor=(255, 255, 255)),
    "banner over it": lambda im: _banner(im),
}


def _banner(im: PILImage.Image) -> PILImage.Image:
    out = im.copy()
    ImageDraw.Draw(out).rectangle(
        (0, out.height - out.height // 6, out.width, out.height), fill=(200, 20, 20)
    )
    return out


def test_the_same_file_is_labelled_exact(client, products):
    image, data = products[3]
    first = _search(client, data)["results"][0]
    assert first["id"] == image.pk and first["match"] == "exact"
    assert first["explanation"] == "the same picture" and first["box"] is None


def test_a_stretched_copy_is_a_near_duplicate_not_the_same_picture(client, products):
    """The hash does not see a photo's shape: 4:3 from a 3:4 photo is a changed copy."""
    image, data = products[3]
    photo = _open(data)
    for size in ((photo.height * 4, photo.width * 4), (photo.width * 6, photo.height * 4)):
        first = _search(client, _jpeg(photo.resize(size, PILImage.Resampling.BICUBIC)))["results"][0]
        assert first["id"] == image.pk and first["match"] == "near_duplicate", (size, first)
        assert first["explanation"] == "this photo, stretched or squeezed"
    enlarged = photo.resize((photo.width * 4, photo.height * 4), PILImage.Resampling.BICUBIC)
    first = _search(client, _jpeg(enlarged, quality=95))["results"][0]
    assert first["id"] == image.pk and first["match"] in COPY and "stretched" not in first["explanation"]


def test_the_same_picture_in_other_colours_is_a_near_duplicate_not_the_same_picture(client, products):
    """The hash sees grey levels only: black and white, another hue or a brighter copy of the
    photo is an edited copy; re-encoded or enlarged, it is still the same picture."""
    image, data = products[3]  # a colourful photo (a grey one in black and white is itself)
    photo = _open(data)
    y, cb, cr = photo.convert("YCbCr").split()
    changed = {
        "black and white": ImageOps.grayscale(photo),
        "colours changed": PILImage.merge("YCbCr", (y, cr, cb)).convert("RGB"),  # same greys
    }
    for words, picture in changed.items():
        first = _search(client, _jpeg(picture, quality=95))["results"][0]
        assert first["id"] == image.pk and first["match"] == "near_duplicate", (words, first)
        assert words in first["explanation"], first
    # Smaller and re-compressed too, its hash further from the photo's: still told in words.
    swapped = changed["colours changed"]
    small = _jpeg(swapped.resize((swapped.width // 2, swapped.height // 2)), quality=25)
    distance = int(
        np.bitwise_count(
            np.frombuffer(pdq_hash(_open(small))[0], np.uint8) ^ np.frombuffer(pdq_hash(photo)[0], np.uint8)
        ).sum()
    )
    assert distance > CopyThresholds().exact_hash_distance
    first = _search(client, small)["results"][0]
    assert first["id"] == image.pk and first["match"] == "near_duplicate", first
    assert "colours changed" in first["explanation"], (distance, first)
    for picture in (photo, photo.resize((photo.width * 2, photo.height * 2), PILImage.Resampling.BICUBIC)):
        first = _search(client, _jpeg(picture, quality=92))["results"][0]
        assert first["id"] == image.pk and first["match"] == "exact", first


def test_an_edited_copy_comes_first_labelled_a_copy_with_words(client, products):
    for edit in sorted(EDITS):
        for image, data in (products[5], products[17]):
            query = _jpeg(EDITS[edit](_open(data)), quality=30 if "compressed" in edit else 85)
            first = _search(client, query)["results"][0]
            assert first["id"] == image.pk, edit
            assert first["match"] in COPY, (edit, first)
            assert first["explanation"] and first["explanation"] != "similar colours and shape"


def test_a_tiny_low_quality_thumbnail_and_a_sticker_over_the_photo_still_find_it_first(client, products):
    """Beyond the hash lookup's radius: the item whose hash is by far the nearest leads, and a
    thumbnail is labelled a smaller copy when its pixels, compared at its size, say so."""
    labelled = 0
    for image, data in (products[0], products[4], products[21]):
        picture = _open(data)
        tiny = picture.resize((picture.width // 3, picture.height // 3), PILImage.Resampling.BILINEAR)
        first = _search(client, _jpeg(tiny, quality=30))["results"][0]
        assert first["id"] == image.pk
        if first["match"] in COPY:
            assert first["explanation"] == "a smaller copy of this photo"
            labelled += 1
    for image, data in (products[5], products[17], products[23]):
        picture = _open(data)
        big = picture.resize((picture.width * 4, picture.height * 4), PILImage.Resampling.BICUBIC)
        draw = ImageDraw.Draw(big)
        radius = big.width // 5
        draw.ellipse(
            (40, 60, 40 + 2 * radius, 60 + 2 * radius), fill=(255, 205, 0), outline=(0, 0, 0), width=3
        )
        assert _search(client, _jpeg(big))["results"][0]["id"] == image.pk
    assert labelled >= 2


def _under_marks(picture: PILImage.Image, banner_tenths: int) -> PILImage.Image:
    big = picture.resize((picture.width * 4, picture.height * 4), PILImage.Resampling.BICUBIC)
    draw = ImageDraw.Draw(big)
    h = big.height * banner_tenths // 10
    draw.rectangle((0, big.height - h, big.width, big.height), fill=(30, 30, 30))
    draw.text((10, big.height - h + 5), "ONLY TODAY 30% OFF", fill=(255, 255, 255))
    r = big.width // 4
    draw.ellipse((big.width - 2 * r - 5, 10, big.width - 5, 10 + 2 * r), fill=(250, 200, 0))
    return big


def test_a_copy_under_a_banner_and_a_sticker_is_labelled_by_the_pixels_it_shows(client, products):
    """Local features alone miss some (a plain item, a third of it hidden): most of the item's
    own pixels are still there, unchanged, in the photo's frame."""
    for n in (0, 35):
        image, data = products[n]
        first = _search(client, _jpeg(_under_marks(_open(data), n % 3 + 2)))["results"][0]
        assert first["id"] == image.pk
        assert first["match"] == "near_duplicate", first
        # Told by the pixels it shows, or by local features whose laid-over colours agree.
        assert "marks" in first["explanation"], first


def test_a_close_up_of_a_detail_is_found_by_its_pixels_and_labelled(client, products):
    """A zoom on part of the photo (its vector is far from the whole photo's; too few pixels
    for local features): the photo's pixels are found in it, without the details index."""
    found = 0
    for n, share, (left, top) in (
        (5, 0.35, (0.5, 0.1)),
        (17, 0.4, (0.2, 0.4)),
        (23, 0.35, (0.0, 0.5)),
        (31, 0.4, (0.6, 0.6)),
    ):
        image, data = products[n]
        picture = _open(data)
        w, h = round(picture.width * share), round(picture.height * share)
        x, y = round(picture.width * left), round(picture.height * top)
        close_up = picture.crop((x, y, x + w, y + h)).resize((w * 3, h * 3), PILImage.Resampling.BICUBIC)
        first = _search(client, _jpeg(close_up, quality=75))["results"][0]
        if first["id"] == image.pk:
            assert first["match"] == "near_duplicate"
            assert first["explanation"] == "a close-up of part of this photo"
            found += 1
    assert found >= 3


def test_a_close_up_s_item_is_searched_for_its_pixels_before_candidates_of_regions_only(products):
    """The region search adds many candidates of high cosine for parts of the picture; the
    pixel checks compare the whole picture, so its own candidates (its item, often 30th-100th
    by its vector for a close-up) are screened first and not pushed off the list."""
    from gallery.embedders import copy_model, get_embedder
    from gallery.retrieval.hashes import pdq_dihedral
    from gallery.retrieval.params import RetrievalParams
    from gallery.retrieval.regions import Box
    from gallery.selectors.search import index_reader
    from gallery.selectors.search_checks import Candidate, Query, match_pixels

    image, data = products[17]
    picture = _open(data)
    w, h = round(picture.width * 0.4), round(picture.height * 0.4)
    x, y = round(picture.width * 0.2), round(picture.height * 0.4)
    close_up = _open(_jpeg(picture.crop((x, y, x + w, y + h)).resize((w * 3, h * 3)), quality=75))
    index = index_reader(copy_model()).get()
    assert index is not None
    query = Query(close_up, index, get_embedder(copy_model()).embed([close_up])[0], pdq_dihedral(close_up)[0])
    query.candidates[image.pk] = Candidate(cosine=0.2)  # the whole picture's, far down
    for other, _ in products[20:32]:  # found by regions only, nearer by far
        query.candidates[other.pk] = Candidate(cosine=0.99, region=Box(0, 0, 10, 10))
    params = RetrievalParams(pixel_candidates=3, pixel_region_candidates=0, pixel_nearest_checked=0)
    found = match_pixels(query, params)
    close = [label for label, m in found if m.check == "close_up"]
    assert close == [image.pk], found


def test_a_large_catalogue_photo_is_screened_for_a_close_up_s_pixels_in_its_thumbnail(products, settings):
    """The pixel checks read up to 280 photos a query: a photo larger than its thumbnail is
    read as the thumbnail (when that is still twice their side), and a close-up of it is found."""
    from gallery.embedders import copy_model, get_embedder
    from gallery.retrieval.hashes import pdq_dihedral
    from gallery.retrieval.params import RetrievalParams
    from gallery.selectors.search import index_reader
    from gallery.selectors.search_checks import Candidate, Query, match_pixels, pixel_source

    _, data = products[17]
    large = _open(data).resize((1200, 1600), PILImage.Resampling.BICUBIC)
    image, _ = services.image_create(data=_jpeg(large), title="large", category="products")
    assert pixel_source(image.file.name, image.thumbnail.name, 1600) == image.thumbnail.name
    assert pixel_source("a.jpg", "t.jpg", 300) == "a.jpg"  # no larger than its thumbnail
    settings.THUMBNAIL_SIZE = 160
    assert pixel_source("a.jpg", "t.jpg", 1600) == "a.jpg"  # too small a thumbnail for the checks
    settings.THUMBNAIL_SIZE = 320
    w, h = round(large.width * 0.4), round(large.height * 0.4)
    x, y = round(large.width * 0.2), round(large.height * 0.4)
    close_up = _open(_jpeg(large.crop((x, y, x + w, y + h)).resize((360, 480)), quality=75))
    index = index_reader(copy_model()).get()
    assert index is not None
    query = Query(close_up, index, get_embedder(copy_model()).embed([close_up])[0], pdq_dihedral(close_up)[0])
    query.candidates[image.pk] = Candidate(cosine=0.2)
    for other, _ in products[20:24]:
        query.candidates[other.pk] = Candidate(cosine=0.5)
    params = RetrievalParams(pixel_candidates=5, pixel_region_candidates=0, pixel_nearest_checked=0)
    found = match_pixels(query, params)
    assert [label for label, m in found if m.check == "close_up"] == [image.pk], found


@pytest.fixture
def details_kept(settings):
    settings.COPY_DETAILS = True


def test_a_close_up_of_a_detail_finds_its_item_through_the_details_index(client, details_kept, products):
    """A zoom on 40 % of each side, enlarged 3x: the details index holds the corner it is in,
    so the item comes first, labelled a close-up."""
    from gallery.embedders import detail_model, get_embedder
    from gallery.selectors.search import index_reader

    details = detail_model()
    assert details is not None and details.views == 4
    held = index_reader(details).get()
    assert held is not None and len(held) == GALLERY_SIZE
    found = 0
    for n in (5, 17, 23, 31):
        image, data = products[n]
        picture = _open(data)
        w, h = round(picture.width * 0.4), round(picture.height * 0.4)
        x, y = round(picture.width * 0.08), round(picture.height * 0.55)
        close_up = picture.crop((x, y, x + w, y + h)).resize((w * 3, h * 3), PILImage.Resampling.BICUBIC)
        query = _jpeg(close_up)
        view = get_embedder(details).embed([close_up])
        assert held.query(view[0], 1)[0][0] == image.pk
        first = _search(client, query)["results"][0]
        if first["id"] == image.pk and first["match"] in COPY:
            found += 1
            assert first["explanation"] in ("a close-up of part of this photo", "a crop of this photo")
    assert found >= 3


def test_results_after_the_copies_are_labelled_similar(client, products):
    _, data = products[9]
    results = _search(client, _jpeg(_open(data)))["results"]
    labels = [r["match"] for r in results]
    assert labels[0] in COPY and "similar" in labels
    assert labels == sorted(labels, key=lambda m: m not in COPY)  # copies first
    assert all(r["explanation"] == "similar colours and shape" for r in results if r["match"] == "similar")


def test_photos_from_outside_the_gallery_are_never_labelled_copies(client, products):
    outside = [data for _, data in _zip_pictures("cifar10-jpg.zip", 100, 8)]
    others = [data for _, data in _zip_pictures("fashion-products-6k.zip", GALLERY_SIZE, 4)]
    outside += others + [_jpeg(_fitted_into_page(_open(data))[0]) for data in others]
    for data in outside:
        results = _search(client, data)["results"]
        assert results, "look-alikes are still shown"
        assert all(r["match"] == "similar" for r in results), results[0]


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> PILImage.Image:
    t = np.linspace(0.0, 1.0, 1024)[:, None, None]
    colours = (1 - t) * np.array(top) + t * np.array(bottom)
    return PILImage.fromarray(np.repeat(colours, 768, axis=1).astype(np.uint8))


def _quadratic_terms(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    x, y = x.ravel() / w - 0.5, y.ravel() / h - 0.5
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def _shading_with_a_caption(photo: PILImage.Image) -> PILImage.Image:
    """The smoothest 18x24 window of the photo (its shading, as a quadratic surface) at
    768x1024, with a caption over it: a ramp that is the photo's, detail that is not."""
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    terms = _quadratic_terms(24, 18)
    best: tuple[float, np.ndarray] | None = None
    for y0 in range(0, grey.shape[0] - 24 + 1, 2):
        for x0 in range(0, grey.shape[1] - 18 + 1, 2):
            window = grey[y0 : y0 + 24, x0 : x0 + 18].ravel()
            fit, *_ = np.linalg.lstsq(terms, window, rcond=None)
            if window.std() >= 8:
                smooth = float((window - terms @ fit).std() / window.std())
                if best is None or smooth < best[0]:
                    best = (smooth, fit)
    assert best is not None
    levels = (_quadratic_terms(1024, 768) @ best[1]).reshape(1024, 768)
    picture = PILImage.fromarray(np.clip(levels, 0, 255).astype(np.uint8)).convert("RGB")
    ImageDraw.Draw(picture).text((30, 960), "photo by someone", fill=(255, 255, 255), font_size=28)
    return picture


def _edge_as_bands(photo: PILImage.Image) -> PILImage.Image:
    """The photo's 15x20 window (a quarter of its side) best told by its rows alone (an edge
    across it), as horizontal bands at 768x1024: the photo's own edge, nothing else."""
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    best: tuple[float, np.ndarray] | None = None
    for y0 in range(grey.shape[0] - 20 + 1):
        for x0 in range(grey.shape[1] - 15 + 1):
            window = grey[y0 : y0 + 20, x0 : x0 + 15]
            rows = window.mean(axis=1, keepdims=True)
            if window.std() >= 20:
                left = float(np.sqrt(((window - rows) ** 2).mean()) / window.std())
                if best is None or left < best[0]:
                    best = (left, rows.ravel())
    assert best is not None
    column = np.interp(np.linspace(0, 19, 1024), np.arange(20), best[1])
    return PILImage.fromarray(np.repeat(column[:, None], 768, axis=1).astype(np.uint8)).convert("RGB")


def test_a_picture_without_detail_of_the_photo_is_no_close_up_of_a_smooth_photo(client, clean_index):
    """A gradient correlates with any smooth part of a photo (this bottle's shading at 0.986):
    its pixels identify nothing, so it is no copy; nor is the photo's own shading under a
    caption (its detail is not the photo's), nor a small part's edge as bands (too simple to
    tell one photo). The bottle's own close-up still is a copy."""
    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        bottle = zf.read("other/1554.jpg")
    image, _ = services.image_create(data=bottle, title="bottle", category="products")
    embed_and_index(image.pk)
    photo = _open(bottle)
    plain = (_gradient((0, 0, 255), (255, 128, 0)), _shading_with_a_caption(photo), _edge_as_bands(photo))
    for outside in plain:
        results = _search(client, _jpeg(outside))["results"]
        assert results and all(r["match"] == "similar" for r in results), results[0]
    close_up = photo.crop((8, 30, 44, 78)).resize((540, 720), PILImage.Resampling.BICUBIC)
    first = _search(client, _jpeg(close_up))["results"][0]
    assert first["match"] == "near_duplicate", first


def test_an_item_inside_a_scene_is_found_with_the_visitors_box_and_suggested_without(client, products):
    image, data = products[11]
    scene, (x, y, w, h) = _scene(_open(data), 0.4)
    query = _jpeg(scene)
    boxed = _search(client, query, box=f"{x - 10},{y - 10},{w + 20},{h + 20}")
    assert boxed["results"][0]["id"] == image.pk
    assert boxed["results"][0]["match"] in COPY
    whole = _search(client, query)
    assert image.pk in [r["id"] for r in whole["results"][:5]]
    item_box = (x, y, w, h)
    assert any(_iou(region["box"], item_box) >= 0.3 for region in whole["regions"]), whole["regions"]
    found = next(r for r in whole["results"] if r["id"] == image.pk)
    if found["box"] is not None:  # a verified copy says where it is, in pixels of the upload
        assert _iou(found["box"], item_box) >= 0.5
        if found["match"] in COPY:  # ...and its outline is the first region suggested
            assert whole["regions"][0]["box"] == found["box"], whole["regions"]


def _listing_page(photos: list[PILImage.Image]) -> tuple[PILImage.Image, list[tuple[int, int, int, int]]]:
    """A shop's listing page: a title bar, then the photos three to a row on white, each
    enlarged into a 150x200 cell with a caption and a price under it."""
    rows = (len(photos) + 2) // 3
    page = PILImage.new("RGB", (3 * 150 + 4 * 14, 44 + rows * 236), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, page.width, 32), fill=(120, 40, 70))
    draw.text((10, 10), "Shop - New arrivals", fill="white")
    boxes = []
    for i, photo in enumerate(photos):
        scale = min(150 / photo.width, 200 / photo.height)
        w, h = round(photo.width * scale), round(photo.height * scale)
        x = 14 + (i % 3) * 164 + (150 - w) // 2
        y = 44 + (i // 3) * 236 + (200 - h) // 2
        page.paste(photo.resize((w, h), PILImage.Resampling.BICUBIC), (x, y))
        draw.text((14 + (i % 3) * 164, 44 + (i // 3) * 236 + 206), f"Item {i + 1}  $19.99", fill="black")
        boxes.append((x, y, w, h))
    return page, boxes


def test_every_product_on_a_listing_page_is_found_labelled_where_it_is(client, products):
    """Several catalogue photos on one page (a screenshot of a shop, a collage): each comes
    back a copy with its outline, not only the first one found; no other item is a copy."""
    chosen = [products[i] for i in (2, 9, 15, 21, 28, 36)]
    page, boxes = _listing_page([_open(data) for _, data in chosen])
    answer = _search(client, _jpeg(page))
    found = {r["id"]: r for r in answer["results"]}
    for (image, _), box in zip(chosen, boxes):
        hit = found.get(image.pk)
        assert hit is not None and hit["match"] == "near_duplicate", (image.title, hit)
        assert hit["explanation"] == "this photo, inside a larger picture"
        assert _iou(hit["box"], box) >= 0.5, (image.title, hit["box"], box)
    wanted = {image.pk for image, _ in chosen}
    assert [r["id"] for r in answer["results"] if r["match"] in COPY and r["id"] not in wanted] == []
    for box in boxes:  # each product is a region the visitor can pick
        assert any(_iou(region["box"], box) >= 0.5 for region in answer["regions"]), (box, answer["regions"])


def test_products_too_plain_to_verify_on_a_listing_page_are_copies_by_their_content(client, products):
    """Products with too few local features to verify, small on a listing page (each boxed
    with its caption by the object search): each object's content, without the caption,
    is its photo's content; labelled copies where they are."""
    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        plain = []
        for name in ("other/18059.jpg", "topwear/31178.jpg", "other/21611.jpg", "other/55164.jpg"):
            data = zf.read(name)
            image, _ = services.image_create(data=data, title=name.rsplit("/", 1)[-1], category="products")
            plain.append((image, data))
    embed_and_index(*(image.pk for image, _ in plain))
    chosen = [*plain, products[2], products[9]]
    page, boxes = _listing_page([_open(data) for _, data in chosen])
    answer = _search(client, _jpeg(page))
    found = {r["id"]: r for r in answer["results"]}
    labelled = 0
    for (image, _), box in zip(plain, boxes):
        hit = found.get(image.pk)
        if hit is not None and hit["match"] == "near_duplicate":
            assert hit["explanation"] == "this photo, inside a larger picture"
            assert _inside(hit["box"], box), (image.title, hit["box"], box)  # (its content, or all of it)
            labelled += 1
    assert labelled >= 3, [found.get(image.pk) for image, _ in plain]
    wanted = {image.pk for image, _ in chosen}
    assert [r["id"] for r in answer["results"] if r["match"] in COPY and r["id"] not in wanted] == []


def _inside(inner, outer, slack: int = 8) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[0] + inner[2] <= outer[0] + outer[2] + slack
        and inner[1] + inner[3] <= outer[1] + outer[3] + slack
    )


def test_a_product_photo_small_in_a_desktop_screenshot_is_found_labelled_where_it_is(client, products):
    """A screenshot of a shop's product page on a desktop: the photo is a small part of a
    wide page under a header bar (no plain margin around the picture), beside text."""
    for image, data in (products[17], products[31]):
        photo = _open(data)
        page = PILImage.new("RGB", (1920, 1080), "white")
        draw = ImageDraw.Draw(page)
        draw.rectangle((0, 0, 1920, 60), fill=(20, 70, 150))
        draw.text((20, 22), "MyShop   Men  Women  Kids  Sale", fill="white")
        h = 260
        w = round(h * photo.width / photo.height)
        page.paste(photo.resize((w, h), PILImage.Resampling.BICUBIC), (300, 180))
        for line in range(12):
            words = "Cotton slim fit, free delivery  Rs. 1299"
            draw.text((300 + w + 60, 120 + 28 * line), words, fill=(30, 30, 30))
        draw.rectangle((300 + w + 60, 800, 300 + w + 260, 850), fill=(230, 60, 90))
        first = _search(client, _jpeg(page, quality=80))["results"][0]
        assert first["id"] == image.pk and first["match"] == "near_duplicate", (image.title, first)
        assert first["explanation"] == "this photo, inside a larger picture"
        assert _iou(first["box"], (300, 180, w, h)) >= 0.5, first["box"]


def test_a_photo_of_two_objects_on_a_canvas_ends_the_search_at_its_copy(client, products):
    """A catalogue photo of a pair (two objects on white), fitted into a larger canvas: its
    copy, verified first, holds both objects; no region search follows."""
    pictures = [
        _open(data).resize((128, 128), PILImage.Resampling.BICUBIC)
        for _, data in (_zip_pictures("cifar10-jpg.zip", 40, 2))
    ]
    pair = PILImage.new("RGB", (360, 200), "white")
    pair.paste(pictures[0], (24, 36))
    pair.paste(pictures[1], (208, 36))
    image, _ = services.image_create(data=_jpeg(pair), title="pair", category="products")
    embed_and_index(image.pk)
    canvas = PILImage.new("RGB", (1024, 768), "white")
    canvas.paste(pair.resize((720, 400), PILImage.Resampling.BICUBIC), (200, 180))
    answer = _search(client, _jpeg(canvas))
    first = answer["results"][0]
    assert first["id"] == image.pk and first["match"] == "near_duplicate", first
    assert first["explanation"] == "this photo, inside a larger picture"
    assert "regions" not in answer["stages_ms"], answer["stages_ms"]


def test_a_product_photo_fitted_into_a_larger_canvas_is_found_by_its_content_unverified(client, products):
    """A shop's page fits a 60x80 product photo into 1024x768 on white: the photo's own
    margins vanish into the canvas. Its content, compared with the photos' content, makes it
    a copy inside a larger picture at once, with no local-feature verification."""
    unverified = 0
    for image, data in products[3:9]:
        canvas, (x, w) = _fitted_into_page(_open(data))
        answer = _search(client, _jpeg(canvas))
        first = answer["results"][0]
        assert first["id"] == image.pk and first["match"] == "near_duplicate", (image.title, first)
        assert first["explanation"] == "this photo, inside a larger picture", first
        bx, _, bw, _ = first["box"]
        assert x - 8 <= bx and bx + bw <= x + w + 8, (first["box"], x, w)  # within the photo's place
        unverified += "verify" not in answer["stages_ms"]
        assert any(_iou(region["box"], first["box"]) >= 0.9 for region in answer["regions"]), answer[
            "regions"
        ]
    assert unverified >= 5, unverified  # (all 6 on this machine)


def test_photos_on_a_backdrop_or_with_thin_margins_fitted_into_a_page_are_found_by_content(client, products):
    """Photos on a grey studio backdrop (on a white page, the whole photo is the content) and
    one whose item nearly fills it: found by their content at once, no verification."""
    with zipfile.ZipFile(dataset("fashion-products-6k.zip")) as zf:
        added = []
        for stem in ("7452", "5716", "5137"):
            data = zf.read(f"topwear/{stem}.jpg")
            image, _ = services.image_create(data=data, title=stem, category="products")
            added.append((image, data))
    embed_and_index(*(image.pk for image, _ in added))
    for image, data in added:
        canvas, _ = _fitted_into_page(_open(data))
        answer = _search(client, _jpeg(canvas))
        first = answer["results"][0]
        assert first["id"] == image.pk and first["match"] == "near_duplicate", (image.title, first)
        assert first["explanation"] == "this photo, inside a larger picture", first
        assert "verify" not in answer["stages_ms"], (image.title, answer["stages_ms"])


def _fitted_into_page(photo: PILImage.Image) -> tuple[PILImage.Image, tuple[int, int]]:
    """The photo fitted into 1024x768 on white, centred: (the page, (its left, its width))."""
    w = round(768 * photo.width / photo.height)
    page = PILImage.new("RGB", (1024, 768), "white")
    x = (1024 - w) // 2
    page.paste(photo.resize((w, 768), PILImage.Resampling.BICUBIC), (x, 0))
    return page, (x, w)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


BAD_BOXES = {
    "1,2,3": "four numbers",
    "a,b,c,d": "four numbers",
    "0,0,0,10": "positive width and height",
    "0,0,-5,10": "positive width and height",
    "5000,5000,10,10": "inside the image",
    "0,0,4,4": "at least 8x8",
}


def test_a_bad_box_gets_a_400_in_words(client, clean_index):
    data = _zip_pictures("fashion-products-6k.zip", 0, 1)[0][1]
    for box, words in BAD_BOXES.items():
        response = client.post("/api/search", {"image": SimpleUploadedFile("q.jpg", data), "box": box})
        assert response.status_code == 400, box
        assert words in response.json()["error"], box


def test_a_box_is_in_pixels_of_the_upload_even_when_the_query_is_decoded_smaller(client, products):
    """Queries are decoded at about 1024 px; boxes go both ways in the upload's own pixels."""
    image, data = products[13]
    scene, (x, y, w, h) = _scene(_open(data), 0.35)
    big = scene.resize((scene.width * 3, scene.height * 3))
    body = _search(client, _jpeg(big), box=f"{3 * x},{3 * y},{3 * w},{3 * h}")
    assert body["results"][0]["id"] == image.pk
    for region in body["regions"]:
        rx, ry, rw, rh = region["box"]
        assert rx >= 0 and ry >= 0 and rx + rw <= big.width + 1 and ry + rh <= big.height + 1


def test_upload_dedupe_similar_items_and_duplicates_page_use_the_tiers(client, admin_client, products):
    original, data = products[21]
    copy, created = services.image_create(
        data=_jpeg(_open(data).resize((200, 266)), quality=40), title="copy", category="products"
    )
    assert created
    embed_and_index(copy.pk)
    copy.refresh_from_db()
    assert copy.near_duplicate_of_id == original.pk

    similar = client.get(f"/api/images/{original.pk}/similar").json()["results"]
    assert similar[0]["id"] == copy.pk and similar[0]["match"] in COPY
    assert "stretched" not in similar[0]["explanation"]  # the same shape, smaller
    assert all(r["match"] == "similar" for r in similar[1:])

    groups = {tuple(im.pk for im in g.images): g for g in selectors.near_duplicate_groups()}
    assert (original.pk, copy.pk) in groups
    services.duplicate_scan_run(services.duplicate_scan_start().pk)  # the staff page's scan, in-process
    page = admin_client.get(reverse("gallery:duplicates")).content.decode()
    assert groups[original.pk, copy.pk].explanations[copy.pk] in page

    other = products[22][0]
    assert Image.objects.get(pk=other.pk).near_duplicate_of_id is None


def _on_canvas(im: PILImage.Image) -> PILImage.Image:
    """The photo off-centre on a larger grey canvas (a screenshot's margins, a poster)."""
    canvas = PILImage.new("RGB", (im.width * 5, im.height * 4), (205, 205, 205))
    canvas.paste(im, (im.width // 3, im.height // 2))
    return canvas


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ("turned 8 degrees", "turned"),
        ("off-centre crop", "crop"),
        ("mirrored", "mirrored"),
        ("on a canvas", "inside a larger picture"),
    ],
)
def test_an_upload_turned_or_cropped_is_noted_a_copy_by_the_whole_pipeline(client, products, edit, words):
    """A copy whose hash is far (turned, cropped, mirrored) is noted by the same stages as a
    search's (local features verified), with search's words, on the item, its similar items
    and the duplicates page; its original's other look-alikes are not."""
    original, data = products[5]
    edited = _jpeg({**EDITS, "on a canvas": _on_canvas}[edit](_open(data)))
    searched = _search(client, edited)["results"][0]
    assert searched["id"] == original.pk and searched["match"] == "near_duplicate", searched
    upload, _ = services.image_create(data=edited, title="copy", category="products")
    embed_and_index(upload.pk)
    upload.refresh_from_db()
    assert upload.near_duplicate_of_id == original.pk, edit
    assert words in upload.near_duplicate_explanation, (upload.near_duplicate_explanation, searched)

    detail = client.get(f"/api/images/{upload.pk}").json()
    assert detail["near_duplicate_of"] == original.pk
    assert detail["near_duplicate_explanation"] == upload.near_duplicate_explanation
    similar = client.get(f"/api/images/{original.pk}/similar").json()["results"]
    assert similar[0]["id"] == upload.pk and similar[0]["match"] == "near_duplicate"
    assert similar[0]["explanation"] == upload.near_duplicate_explanation
    theirs = client.get(f"/api/images/{upload.pk}/similar").json()["results"]
    assert theirs[0]["id"] == original.pk and theirs[0]["match"] == "near_duplicate"
    page = client.get(reverse("gallery:item", args=[upload.pk])).content.decode()
    assert upload.near_duplicate_explanation in page

    groups = {tuple(im.pk for im in g.images): g for g in selectors.near_duplicate_groups()}
    assert groups[original.pk, upload.pk].explanations[upload.pk] == upload.near_duplicate_explanation
    assert not Image.objects.filter(near_duplicate_of=original).exclude(pk=upload.pk).exists()


def test_boxes_are_in_pixels_of_the_photo_as_shown_when_it_is_turned_by_exif(client, products):
    """A phone photo stored on its side with an EXIF orientation: the browser shows it
    upright, and the visitor's box and the answer's boxes are in those upright pixels."""
    image, data = products[15]
    scene, (x, y, w, h) = _scene(_open(data), 0.4)  # 800x600 as shown
    stored = scene.transpose(PILImage.Transpose.ROTATE_90)  # 600x800 as stored
    exif = PILImage.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: upright again
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=90, exif=exif.tobytes())
    body = _search(client, out.getvalue(), box=f"{x},{y},{w},{h}")
    assert body["results"][0]["id"] == image.pk
    whole = _search(client, out.getvalue())
    for region in whole["regions"]:
        rx, ry, rw, rh = region["box"]
        assert rx + rw <= 801 and ry + rh <= 601, region
    assert any(_iou(region["box"], (x, y, w, h)) >= 0.3 for region in whole["regions"]), whole["regions"]
    found = next(r for r in whole["results"] if r["id"] == image.pk)
    assert found["box"] is not None and _iou(found["box"], (x, y, w, h)) >= 0.5
