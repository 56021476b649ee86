"""Import sources: every refused entry is reported with its reason and the rest goes on."""

import json
import os
import stat
import zipfile

import pytest

from gallery.importing import Limits, SourceError, SourceReader, guess_kind, list_entries
from tests.images import make_image_bytes

LIMITS = Limits(max_file_bytes=1_000_000, max_total_bytes=10_000_000, max_ratio=100)


def errors(entries):
    return {e.path: e.error for e in entries if e.error}


def test_zip_refuses_each_kind_of_bad_entry(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("shoes/ok.jpg", make_image_bytes(1))
        zf.writestr("../escape.jpg", make_image_bytes(2))
        zf.writestr("/abs/root.jpg", make_image_bytes(3))
        zf.writestr("inner/more.zip", b"PK\x03\x04")
        zf.writestr("readme.txt", "hello")
        zf.writestr("bomb.png", b"\0" * 900_000)  # compresses about 1000:1
        link = zipfile.ZipInfo("shoes/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("__MACOSX/shoes/._ok.jpg", b"junk")
    entries = list_entries("zip", archive, limits=LIMITS)
    assert [e.path for e in entries if not e.error] == ["shoes/ok.jpg"]
    assert entries[0].category == "shoes" and entries[0].title == "ok"
    found = errors(entries)
    assert "unsafe path" in found["../escape.jpg"]
    assert "unsafe path" in found["/abs/root.jpg"]
    assert "nested archive" in found["inner/more.zip"]
    assert "not an image" in found["readme.txt"]
    assert "compression ratio" in found["bomb.png"]
    assert "symbolic link" in found["shoes/link.jpg"]
    assert not any("__MACOSX" in p for p in found)


def test_zip_total_size_limit(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"x/{i}.jpg", make_image_bytes(i, size=(400, 300)))
    size = zipfile.ZipFile(archive).infolist()[0].file_size
    entries = list_entries("zip", archive, limits=Limits(1_000_000, int(size * 2.5), 100))
    assert [bool(e.error) for e in entries] == [False, False, True, True]
    assert "total uncompressed size" in entries[-1].error


def test_reader_caps_what_it_reads_whatever_the_header_says(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.jpg", b"\0" * 5000)
    with SourceReader("zip", archive) as reader:
        with pytest.raises(ValueError, match="too large"):
            reader.read("a.jpg", 1000)
        assert len(reader.read("a.jpg", 5000)) == 5000


def test_folder_refuses_links_and_reports_other_files(tmp_path):
    root = tmp_path / "cat"
    (root / "bags").mkdir(parents=True)
    (root / "bags" / "tote.jpg").write_bytes(make_image_bytes(1))
    (root / "bags" / "notes.md").write_text("x")
    (tmp_path / "secret.jpg").write_bytes(make_image_bytes(2))
    os.symlink(tmp_path / "secret.jpg", root / "bags" / "link.jpg")
    entries = list_entries("folder", root, category="sale", limits=LIMITS)
    assert [(e.path, e.category) for e in entries if not e.error] == [("bags/tote.jpg", "sale")]
    assert "symbolic link" in errors(entries)["bags/link.jpg"]
    assert "not an image" in errors(entries)["bags/notes.md"]


def test_manifests_csv_and_jsonl(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(make_image_bytes(1))
    (tmp_path / "outside.jpg").write_bytes(make_image_bytes(2))
    sub = tmp_path / "m"
    sub.mkdir()
    os.symlink(tmp_path / "img", sub / "img")
    (sub / "real.jpg").write_bytes(make_image_bytes(3))
    csv_path = sub / "list.csv"
    csv_path.write_text(
        "file,title,category,tags,external_id\n"
        'real.jpg,Real one,shoes,"red, leather",SKU-1\n'
        "../outside.jpg,Out,x,,\n"
        "missing.jpg,Missing,x,,\n"
    )
    entries = list_entries("manifest", csv_path, limits=LIMITS)
    ok = entries[0]
    assert (ok.title, ok.category, ok.tags, ok.external_id, ok.error) == (
        "Real one",
        "shoes",
        ["red", "leather"],
        "SKU-1",
        "",
    )
    assert "unsafe path" in entries[1].error and entries[2].error == "file not found"
    jsonl = sub / "list.jsonl"
    jsonl.write_text(json.dumps({"file": "real.jpg", "tags": ["a"], "external_id": 7}) + "\n\n")
    (entry,) = list_entries("manifest", jsonl, limits=LIMITS)
    assert entry.title == "real" and entry.tags == ["a"] and entry.external_id == "7"
    jsonl.write_text("{not json")
    with pytest.raises(SourceError, match="line 1"):
        list_entries("manifest", jsonl, limits=LIMITS)


def test_guess_kind(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(SourceError, match="neither a folder nor a ZIP"):
        guess_kind(tmp_path / "x.txt")
    assert guess_kind(tmp_path) == "folder"
