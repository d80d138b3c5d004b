"""Hashing media files into the signals banks hold: MD5, PDQ (with its quality), vPDQ.

Every file gets its MD5 (read in chunks: any size). An image gets its PDQ
hash; a file that is not an image but a video (decided by its content) gets
its vPDQ signal (:mod:`streams.videohash`); anything else an error that still
carries the MD5.

For people who hold files rather than hashes. PDQ is Meta's reference
algorithm through the ``pdqhash`` package (the one python-threatexchange and
Hasher-Matcher-Actioner use), so a hash computed here matches the hashes
partners compute from the same file.

Pillow opens many image modes; ``pdqhash`` wants an RGB array. Each mode is
converted the way python-threatexchange does, because a hash that differs
from the partners' by a conversion detail would miss their banked copies:
RGB as is; gray (``L``) as three equal channels; every other mode (RGBA, LA,
P palette, CMYK, 1-bit, 16-bit ``I;16``, 32-bit ``I``, ``F``) through Pillow's
``convert("RGB")``. Alpha is dropped, not composited. A 16-bit gray image is
clipped to 0..255 by that conversion (not scaled): Meta's test vector for
``I;16`` expects exactly that (quality 36). EXIF orientation is not applied,
as the reference does not. An animated image is hashed by its first frame.

>>> from PIL import Image
>>> rec = hash_image_bytes(_png(Image.new("RGB", (64, 64), "white")), "white.png")
>>> rec.quality, len(rec.pdq), len(rec.md5)
(0, 64, 32)
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pdqhash
from PIL import Image, UnidentifiedImageError

from streams.videohash import SECONDS_PER_HASH, Progress, VideoHashes, VideoLimits, hash_video


@dataclass(frozen=True, slots=True)
class FileHashes:
    """The signals of one media file: PDQ hex (64), its quality 0..100, MD5 hex (32)."""

    file: str
    pdq: str
    quality: int
    md5: str

    def to_dict(self) -> dict[str, str | int]:
        return {"file": self.file, "pdq": self.pdq, "quality": self.quality, "md5": self.md5}


@dataclass(frozen=True, slots=True)
class HashError:
    """A file that could not be hashed, and why (one line); its MD5 when it could be read."""

    file: str
    error: str
    md5: str | None = None

    def to_dict(self) -> dict[str, str]:
        if self.md5 is None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "md5": self.md5, "error": self.error}


def rgb_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    """The ``(height, width, 3)`` uint8 array ``pdqhash`` hashes, per the module's rules.

    >>> rgb_array(Image.new("LA", (3, 2))).shape
    (2, 3, 3)
    """
    if image.mode == "L":
        gray = np.asarray(image, dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def pdq_of_image(image: Image.Image) -> tuple[str, int]:
    """PDQ hash (64 lowercase hex, first bit most significant) and quality of an image.

    >>> pdq_of_image(Image.new("L", (32, 32)))[1]
    0
    """
    bits, quality = pdqhash.compute(rgb_array(image))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


class NotAnImage(ValueError):
    """Pillow does not know the bytes (they may be a video)."""


def image_pdq(source: str | Path | IO[bytes]) -> tuple[str, int]:
    """PDQ and quality of an image file; :class:`NotAnImage`, or ``ValueError`` when unreadable."""
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning is an error here: one file must not eat the memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                return pdq_of_image(image)
    except UnidentifiedImageError:
        raise NotAnImage("not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValueError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, EOFError, ValueError, TypeError) as exc:
        # Truncated or corrupt data, or a mode Pillow cannot convert.
        raise ValueError(f"unreadable image: {exc}") from None


def hash_image_bytes(data: bytes, name: str) -> FileHashes:
    """Hash the bytes of an image file; raises ``ValueError`` when they are not one."""
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    pdq, quality = image_pdq(io.BytesIO(data))
    return FileHashes(name, pdq, quality, md5)


def file_md5(path: str | Path) -> str:
    """The MD5 of a file, read in chunks (a file of any size, in constant memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def hash_file(
    path: str | Path,
    *,
    seconds_per_hash: float = SECONDS_PER_HASH,
    limits: VideoLimits = VideoLimits(),  # noqa: B008 (frozen)
    progress: Progress | None = None,
) -> FileHashes | VideoHashes | HashError:
    """Hash one file; never raises for a bad file, it gives a :class:`HashError` instead."""
    name = str(path)
    try:
        md5 = file_md5(path)
    except OSError as exc:
        return HashError(name, f"cannot read file: {exc.strerror or exc}")
    try:
        pdq, quality = image_pdq(path)
        return FileHashes(name, pdq, quality, md5)
    except NotAnImage:
        pass
    except (ValueError, OSError) as exc:
        return HashError(name, str(exc), md5)
    try:
        return hash_video(
            path, md5, seconds_per_hash=seconds_per_hash, limits=limits, progress=progress
        )
    except (ValueError, OSError) as exc:
        return HashError(name, str(exc), md5)


def hash_files(
    paths: Iterable[str | Path], **options: Any
) -> Iterator[FileHashes | VideoHashes | HashError]:
    """Hash each file in turn; a bad one gives its error and the rest are still hashed."""
    for path in paths:
        yield hash_file(path, **options)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
