"""Hashing a video file into its vPDQ signal, the way Meta's reference hasher does.

Decoding is PyAV's (``av`` on PyPI): FFmpeg's own decoders, shipped inside
the wheel (H.264, H.263, MPEG-4, VP8/9, AV1...), so no system FFmpeg and no
home-made decoder. Whether a file is a video is decided by its content
(FFmpeg probes the bytes), not by its name.

The sampling follows ``vpdq/cpp/vpdq/cpp/hashing/filehasher.cpp`` so a hash
made here matches one made by ``vpdq-hash-video`` or HMA for the same file:

- the frame rate is the stream's average frame rate, or FFmpeg's guess
  (``r_frame_rate``) when that is unknown;
- every ``int(seconds_per_hash * fps)``-th decoded frame is hashed (at least
  every frame), counting frames in the order the decoder gives them, from 0;
- a frame's timestamp is ``float32(n) / float32(fps)`` (frame number over the
  rate, in single precision as the reference computes it), and its PDQ hash
  is computed on the whole frame converted to RGB24 with swscale's area
  filter, with the PDQ core that hashes images (``pdqhash``).

A huge or endless stream is bounded: a limit on the frames hashed and on the
seconds spent; past either the hash stops there, saying so in ``truncated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pdqhash

from streams.vpdq import MAX_FRAMES, VpdqFrame

#: vPDQ's default: one frame hashed per second of video.
SECONDS_PER_HASH: Final = 1.0
#: PDQ needs at least this many pixels each way (the reference refuses smaller frames).
MIN_FRAME_SIDE: Final = 5

#: Called as ``progress(seconds_of_video_done, seconds_in_the_video_or_None)``.
Progress = Callable[[float, float | None], None]


@dataclass(frozen=True, slots=True)
class VideoLimits:
    """How far one file is hashed: frames hashed at most, wall-clock seconds at most."""

    max_frames: int = MAX_FRAMES  # an hour at one frame a second: what a bank or event takes
    max_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.max_frames < 1 or not self.max_seconds > 0:
            raise ValueError("video limits must be positive")


@dataclass(frozen=True, slots=True)
class VideoHashes:
    """The signals of one video file: its MD5 and its vPDQ frames."""

    file: str
    md5: str
    frames: tuple[VpdqFrame, ...]
    fps: float
    seconds_per_hash: float = SECONDS_PER_HASH
    truncated: str | None = None
    decoded: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "md5": self.md5,
            "vpdq": [str(f) for f in self.frames],
            "frames": len(self.frames),
            "fps": round(self.fps, 3),
        }
        if self.truncated:
            out["truncated"] = self.truncated
        return out


def _rate(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if not fps > 0:
        raise ValueError("not a video: its frame rate is unknown")
    return fps


def frame_pdq(rgb: np.ndarray[Any, Any]) -> tuple[str, int]:
    """PDQ hex and quality of one RGB24 frame (``(height, width, 3)`` uint8)."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def hash_video(
    path: str | Path,
    md5: str,
    *,
    seconds_per_hash: float = SECONDS_PER_HASH,
    limits: VideoLimits = VideoLimits(),
    progress: Progress | None = None,
) -> VideoHashes:
    """vPDQ of a video file; raises ``ValueError`` with a one-line reason when it is not one.

    ``md5`` is the file's, computed by the caller while it read the bytes.
    """
    import av

    if not seconds_per_hash > 0:
        raise ValueError("seconds_per_hash must be positive")
    started = time.monotonic()
    # No log callback at all (a damaged file says so through its error): PyAV's callback,
    # set by any level (PANIC too: it still passes FFmpeg's errors on), takes the GIL in
    # the decoder's frame threads, while closing the stream early (a limit) frees the codec
    # holding the GIL and waits for those threads: a frame thread logging an error then
    # hung both for ever (avcodec_free_context on a lock, av_log on the GIL; one truncated
    # hash in about 16 at load 10). Without one, FFmpeg's threads never enter Python.
    av.logging.set_level(None)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"not an image, nor a video FFmpeg can read ({_why(exc)})") from None
    frames: list[VpdqFrame] = []
    truncated = None
    n = -1
    try:
        if not container.streams.video:
            raise ValueError("no video stream (an audio file, or a container without video)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _rate(stream)
        every = max(1, int(seconds_per_hash * fps))
        fps32 = np.float32(fps)
        duration = float(container.duration) / 1e6 if container.duration else None
        for n, frame in enumerate(container.decode(stream)):
            if n % every:
                continue
            if frame.width < MIN_FRAME_SIDE or frame.height < MIN_FRAME_SIDE:
                raise ValueError(f"frames of {frame.width}x{frame.height} are too small to hash")
            pdq, quality = frame_pdq(frame.to_ndarray(format="rgb24", interpolation="AREA"))
            ts = float(np.float32(n) / fps32)
            frames.append(VpdqFrame(pdq, quality, float(f"{ts:.3}")))
            if progress is not None:
                progress(ts, duration)
            if len(frames) >= limits.max_frames:
                truncated = f"stopped at the frame limit: {len(frames)} frames hashed ({ts:.0f} s)"
                break
            if time.monotonic() - started > limits.max_seconds:
                truncated = (
                    f"stopped at the time limit of {limits.max_seconds:g} s, "
                    f"{ts:.0f} s into the video"
                )
                break
    except av.FFmpegError as exc:
        raise ValueError(f"cannot decode the video at frame {n + 1}: {_why(exc)}") from None
    finally:
        container.close()
    if not frames:
        raise ValueError("a video without a decodable frame")
    return VideoHashes(str(path), md5, tuple(frames), fps, seconds_per_hash, truncated, n + 1)


def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(": '", 1)[0][:160]
