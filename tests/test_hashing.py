"""Hashing media: Meta's reference vectors, every Pillow mode, bad files, `viralwatch hash`."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image
from programs import viralwatch
from shared_data import SHARED, absent

from streams.banks import hamming
from streams.hashing import FileHashes, HashError, hash_file, hash_files, hash_image_bytes

PDQ_DATA = SHARED / "data" / "pdq"
NO_DATA = absent(PDQ_DATA, "PDQ reference data")


def reference_rows() -> list[dict[str, str]]:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    with (PDQ_DATA / "expected.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_reference_image_hashes_within_its_max_hamming() -> None:
    rows = reference_rows()
    assert len(rows) == 32
    for row in rows:
        path = PDQ_DATA / "images" / row["file"]
        rec = hash_file(path)
        assert isinstance(rec, FileHashes), rec
        assert hamming(rec.pdq, row["pdq_hex"]) <= int(row["max_hamming"]), row["file"]
        if row["quality"]:
            assert rec.quality == int(row["quality"]), row["file"]
        assert rec.md5 == hashlib.md5(path.read_bytes()).hexdigest()
        assert rec.file == str(path)


def synthetic_photo(size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth picture with structure (a flat one has PDQ quality 0)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    r = (128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint8)
    g = ((x * 255) // w).astype(np.uint8)
    b = ((y * 255) // h).astype(np.uint8)
    return Image.fromarray(np.dstack([r, g, b]))


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_modes_convert_to_the_hash_of_their_rgb_image() -> None:
    rgb = synthetic_photo()
    want = hash_image_bytes(encode(rgb), "rgb")
    assert want.quality >= 50
    same = {
        "RGBA": rgb.convert("RGBA"),
        "RGBA half transparent": Image.merge("RGBA", (*rgb.split(), Image.new("L", rgb.size, 128))),
        "CMYK": rgb.convert("CMYK"),
    }
    for name, image in same.items():
        fmt = "TIFF" if image.mode == "CMYK" else "PNG"
        got = hash_image_bytes(encode(image, fmt), name)
        assert got.pdq == want.pdq, name
        assert got.quality == want.quality, name
    # palette: hashed as the RGB image of its palette colours
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    got = hash_image_bytes(encode(pal), "P")
    assert got.pdq == hash_image_bytes(encode(pal.convert("RGB")), "P as RGB").pdq


def test_a_palette_photo_stays_near_the_original() -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    photo = Image.open(PDQ_DATA / "images" / "bridge-mods-aaa-orig.jpg")
    want = hash_image_bytes(encode(photo), "rgb")
    pal = hash_image_bytes(encode(photo.convert("P", palette=Image.Palette.ADAPTIVE)), "P")
    assert hamming(pal.pdq, want.pdq) <= 31


def test_gray_modes_agree() -> None:
    gray = synthetic_photo().convert("L")
    want = hash_image_bytes(encode(gray), "L")
    assert want.quality >= 50
    assert hash_image_bytes(encode(gray.convert("RGB")), "RGB").pdq == want.pdq
    assert hash_image_bytes(encode(gray.convert("LA")), "LA").pdq == want.pdq
    # 16-bit gray holding 0..255 values: Pillow's conversion keeps them as they are
    wide = Image.fromarray(np.asarray(gray).astype(np.uint16))
    assert wide.mode == "I;16"
    assert hash_image_bytes(encode(wide), "I;16").pdq == want.pdq
    # 1-bit: hashes, and stays near its own gray rendering
    bw = gray.convert("1")
    assert (
        hamming(
            hash_image_bytes(encode(bw), "1").pdq,
            hash_image_bytes(encode(bw.convert("L")), "L").pdq,
        )
        == 0
    )


def test_reference_16_bit_and_la_images() -> None:
    if not PDQ_DATA.is_dir():
        pytest.skip(NO_DATA)
    i16 = Image.open(PDQ_DATA / "images" / "pytx-I16.png")
    la = Image.open(PDQ_DATA / "images" / "pytx-LA.png")
    assert (i16.mode, la.mode) == ("I;16", "LA")


def test_bad_files_give_errors_and_the_rest_are_hashed(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(synthetic_photo()))
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    recs = list(
        hash_files([text, good, truncated, tmp_path / "missing.jpg", tmp_path, empty, good])
    )
    assert [type(r).__name__ for r in recs] == [
        "HashError",
        "FileHashes",
        "HashError",
        "HashError",
        "HashError",
        "HashError",
        "FileHashes",
    ]
    errors = [r for r in recs if isinstance(r, HashError)]
    assert "not an image" in errors[0].error
    assert "unreadable image" in errors[1].error
    assert "cannot read file" in errors[2].error and "No such file" in errors[2].error
    assert all("\n" not in e.error for e in errors)
    # a file that was read keeps its MD5 beside the error; one that could not be read has none
    md5 = hashlib.md5(text.read_bytes()).hexdigest()
    assert errors[0].to_dict() == {"file": str(text), "md5": md5, "error": errors[0].error}
    assert errors[2].to_dict() == {"file": str(tmp_path / "missing.jpg"), "error": errors[2].error}


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (12_000, 12_000)).save(big)  # 144 Mpixel > Pillow's 89 Mpixel guard
    rec = hash_file(big)
    assert isinstance(rec, HashError) and "too large" in rec.error


# ---------------------------------------------------------------- the command


def test_hash_command_prints_json_lines_and_exits_1_on_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(synthetic_photo()))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 nope")
    r = viralwatch("hash", str(bad), str(good))
    assert r.returncode == 1
    rec = hash_file(good)
    assert isinstance(rec, FileHashes)
    assert [orjson.loads(line) for line in r.stdout.splitlines()] == [
        {"file": str(good), "pdq": rec.pdq, "quality": rec.quality, "md5": rec.md5}
    ]
    errors = [orjson.loads(line) for line in r.stderr.splitlines()]
    assert [e["file"] for e in errors] == [str(bad)] and errors[0]["error"]
    r = viralwatch("hash", str(good))
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and not r.stderr


def test_hash_command_on_the_reference_images() -> None:
    rows = reference_rows()
    files = [str(PDQ_DATA / "images" / row["file"]) for row in rows[:3]]
    r = viralwatch("hash", *files)
    assert r.returncode == 0, r.stderr
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [(o["pdq"], o["quality"]) for o in out] == [
        (row["pdq_hex"], int(row["quality"])) for row in rows[:3]
    ]
