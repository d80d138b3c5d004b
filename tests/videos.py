"""Synthetic test videos made with PyAV: moving shapes over a panning gradient field.

Nothing is downloaded: each video is drawn from a seed (a field of smooth
random colour blobs that pans, and bright shapes that move across it), then
encoded by FFmpeg's encoders inside the ``av`` wheel. :func:`variant` makes
what a video becomes as it spreads: re-encoded by another codec at another
bitrate, scaled, cut to 3GP/H.263 at 176x144, trimmed, a logo laid over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

Frame = np.ndarray


def _field(seed: int, width: int, height: int) -> Frame:
    """A smooth random colour field twice the frame's width (the pan's room)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 24, 3), dtype=np.uint8)
    return np.asarray(
        Image.fromarray(coarse).resize((2 * width, height), Image.Resampling.BICUBIC),
        dtype=np.uint8,
    )


def frames(seed: int, seconds: float, fps: int, width: int, height: int) -> Iterator[Frame]:
    """The video of ``seed``: RGB frames, a pan across the field and three moving shapes."""
    field = _field(seed, width, height)
    rng = np.random.default_rng(seed + 1)
    shapes = [
        (rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.4), rng.integers(0, 256, 3))
        for _ in range(3)
    ]
    yy, xx = np.mgrid[0:height, 0:width]
    n = round(seconds * fps)
    for i in range(n):
        t = i / fps
        x0 = int(width * t / 20) % width  # a slow pan: a frame's width in 20 seconds, again
        img = field[:, x0 : x0 + width].copy()
        for k, (phase, speed, colour) in enumerate(shapes):
            cx = width * (0.5 + 0.35 * np.cos(phase + speed * t))
            cy = height * (0.5 + 0.35 * np.sin(phase + 1.3 * speed * t))
            r = height * (0.08 + 0.03 * k)
            if k % 2:
                img[(np.abs(xx - cx) < r) & (np.abs(yy - cy) < r)] = colour
            else:
                img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = colour
        yield img


def write(
    path: Path,
    images: Iterator[Frame],
    *,
    fps: int,
    codec: str = "libx264",
    bit_rate: int | None = None,
    fmt: str | None = None,
) -> Path:
    """Encode RGB frames into ``path`` (the container from its suffix, or ``fmt``)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.pix_fmt = "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        if codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        first = True
        for img in images:
            if first:
                stream.height, stream.width = img.shape[:2]
                first = False
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def synthetic(
    path: Path, seed: int, *, seconds: float = 8, fps: int = 25, size: tuple[int, int] = (320, 240)
) -> Path:
    """A synthetic H.264 MP4 video."""
    return write(path, frames(seed, seconds, fps, *size), fps=fps)


def decoded(path: Path) -> Iterator[Frame]:
    with av.open(str(path)) as src:
        for frame in src.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _logo(img: Frame) -> Frame:
    """A platform's watermark: a small white badge with red bars, top right."""
    h, w = img.shape[:2]
    img = img.copy()
    bh, bw = h // 12, w // 8
    top, left = h // 20, w - bw - w // 20
    badge = img[top : top + bh, left : left + bw]
    badge[:] = (badge * 0.3 + 175).astype(np.uint8)
    badge[bh // 3 : 2 * bh // 3, np.arange(bw) % 8 < 3] = (200, 0, 0)
    return img


def variant(
    src: Path,
    dst: Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] | None = None,
    trim: tuple[float, float] = (0.0, 0.0),
    logo: bool = False,
    bit_rate: int | None = None,
    fps: int = 25,
    fmt: str | None = None,
) -> Path:
    """``src`` decoded and re-encoded: scaled to ``size``, ``trim`` seconds cut from each end,
    a logo laid over the top right corner."""
    images = list(decoded(src))
    first, last = round(trim[0] * fps), len(images) - round(trim[1] * fps)
    out = []
    for img in images[first:last]:
        if size is not None:
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
        out.append(_logo(img) if logo else img)
    return write(dst, iter(out), fps=fps, codec=codec, bit_rate=bit_rate, fmt=fmt)


def flat(path: Path, colour: tuple[int, int, int], *, seconds: float = 4, fps: int = 25) -> Path:
    """A video of one flat colour (every frame's PDQ quality is 0)."""
    img = np.zeros((240, 320, 3), dtype=np.uint8)
    img[:] = colour
    return write(path, (img for _ in range(round(seconds * fps))), fps=fps)
