"""vPDQ, Meta's video signal: one PDQ hash per sampled frame, and the rule that matches two.

A video is re-encoded, resized, trimmed and watermarked on every hop, so no
file hash survives; its frames still look alike. vPDQ (facebook/ThreatExchange,
``vpdq/``) hashes one frame a second (by default) with PDQ and treats the
video as an unordered bag of frame hashes. This module is its pure part: the
signal's text form, validation, and the comparison; decoding lives in
:mod:`streams.videohash`, the bank of videos in :mod:`streams.videobank`.

The text form is python-threatexchange's ``VideoVPDQSignal``: a JSON list of
``"pdqhex,quality,timestamp"`` strings, written with Python's ``json.dumps``
and each timestamp formatted as ``f"{t:.3}"`` (three *significant* digits,
their quirk: 12.345 s is written ``12.3``, 123.4 s ``1.23e+02``). A signal
read here and written back is byte for byte what python-threatexchange writes
for it, so a video's bank entry, its cluster id and its ``bank`` topic key
are the same whoever hashed it.

The match rule (``vpdq/README.md``; python-threatexchange's ``VPDQIndex``):

- frames under quality :data:`QUALITY_MIN` (50) are ignored, then repeated
  hashes are counted once (python-threatexchange's ``prepare_vpdq_feature``);
- a query frame *matches* a compared video when one of its frames is within
  the PDQ distance (31 by default, the bank's threshold), and the other way;
- query percentage = matched unique query frames * 100 / unique query frames,
  compared percentage likewise for the compared (banked) video;
- a match when the query percentage is at least 80 and the compared one at
  least 0 (both settings of the bank), and at least one frame matched (a
  video no frame of which is near is not a candidate, as in the index).

Timestamps and frame order play no part.

>>> sig = '["' + "f" * 64 + ',100,0.0", "' + "0" * 64 + ',20,1.0"]'
>>> frames = parse_vpdq(sig)
>>> [f.quality for f in frames], format_vpdq(frames) == sig
([100, 20], True)
>>> usable_hashes(frames) == ["f" * 64]          # the quality-20 frame is ignored
True
>>> compare(["f" * 64], ["f" * 63 + "0", "0" * 64], distance=31)
VideoScore(query_match_pct=100.0, compared_match_pct=50.0, query_frames=1, compared_frames=2)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

#: Frames under this PDQ quality are too flat to compare (vPDQ's filter F).
QUALITY_MIN: Final = 50
#: vPDQ's frame distance D, the default of a bank's PDQ threshold.
DISTANCE_DEFAULT: Final = 31
#: Share of the query's unique frames that must match (python-threatexchange's default).
QUERY_MATCH_PCT_DEFAULT: Final = 80.0
#: Share of the banked video's unique frames that must match (python-threatexchange's default).
COMPARED_MATCH_PCT_DEFAULT: Final = 0.0
#: Most frames a signal may carry: an hour at one frame a second (an upload event's size limit).
MAX_FRAMES: Final = 3600
#: Significant digits of python-threatexchange's timestamp format (``f"{t:.3}"``).
TIMESTAMP_PRECISION: Final = 3

#: Why a vPDQ signal was refused (the ``reason`` of a rejected upload event).
REASONS: Final = (
    "bad_vpdq",  # not a list of "hash,quality,timestamp" strings
    "bad_vpdq_hash",  # a frame's PDQ hash is not 64 hex digits
    "bad_vpdq_quality",  # a frame's quality is not an integer 0..100
    "bad_vpdq_timestamp",  # a frame's timestamp is not a finite number >= 0
    "vpdq_empty",  # no frame at all
    "vpdq_too_long",  # more than MAX_FRAMES frames
)

_HEX_DIGITS: Final = frozenset("0123456789abcdef")
_CANONICAL: Final = re.compile(r"([0-9a-f]{64}),([0-9]{1,3}),([0-9]+\.[0-9]+(?:e[+-][0-9]+)?)")


class VpdqError(ValueError):
    """A malformed vPDQ signal, with the machine-readable ``reason`` (one of :data:`REASONS`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VpdqFrame:
    """One sampled frame: its PDQ hash (64 lowercase hex), quality 0..100, time in seconds."""

    pdq: str
    quality: int
    timestamp: float

    def __str__(self) -> str:
        """python-threatexchange's ``VpdqCompactFeature.__str__``, to the byte.

        >>> str(VpdqFrame("a" * 64, 99, 61.25))[-8:]
        ',99,61.2'
        """
        return f"{self.pdq},{self.quality},{self.timestamp:.{TIMESTAMP_PRECISION}}"

    @classmethod
    def parse(cls, text: object, where: str = "frame") -> VpdqFrame:
        """One ``"pdqhex,quality,timestamp"`` string; raises :class:`VpdqError`.

        >>> VpdqFrame.parse("AB" * 32 + ",100,2.0").pdq[:4]
        'abab'
        >>> VpdqFrame.parse("ab,100,2.0").quality
        Traceback (most recent call last):
        streams.vpdq.VpdqError: frame: the PDQ hash must be 64 hex digits, not 2
        """
        if not isinstance(text, str):
            raise VpdqError("bad_vpdq", f"{where} must be a string 'pdqhex,quality,timestamp'")
        fast = _CANONICAL.fullmatch(text)  # the common case: already in canonical form
        if fast is not None and int(fast[2]) <= 100:
            return cls(fast[1], int(fast[2]), float(f"{float(fast[3]):.{TIMESTAMP_PRECISION}}"))
        parts = text.split(",")
        if len(parts) != 3:
            raise VpdqError(
                "bad_vpdq", f"{where} must be 'pdqhex,quality,timestamp', not {len(parts)} fields"
            )
        pdq, quality, ts = (p.strip() for p in parts)
        pdq = pdq.lower()
        if len(pdq) != 64:
            raise VpdqError(
                "bad_vpdq_hash", f"{where}: the PDQ hash must be 64 hex digits, not {len(pdq)}"
            )
        if not _HEX_DIGITS.issuperset(pdq):
            raise VpdqError("bad_vpdq_hash", f"{where}: the PDQ hash is not hexadecimal")
        if not (quality.isascii() and quality.isdigit()) or int(quality) > 100:
            raise VpdqError("bad_vpdq_quality", f"{where}: quality must be an integer 0..100")
        try:
            seconds = float(ts)
        except ValueError:
            raise VpdqError("bad_vpdq_timestamp", f"{where}: timestamp is not a number") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise VpdqError(
                "bad_vpdq_timestamp", f"{where}: timestamp must be a finite number >= 0"
            )
        # kept as the text form keeps it, so a frame read back from its text is equal to it
        return cls(pdq, int(quality), float(f"{seconds:.{TIMESTAMP_PRECISION}}"))


@dataclass(frozen=True, slots=True)
class VideoScore:
    """How much of two videos matched: the percentages vPDQ's rule compares, and their bases."""

    query_match_pct: float
    compared_match_pct: float
    query_frames: int
    compared_frames: int

    def passes(self, query_pct_min: float, compared_pct_min: float) -> bool:
        """vPDQ's decision, given the bank's two thresholds (and at least one frame matched).

        >>> VideoScore(80.0, 5.0, 10, 100).passes(80.0, 0.0)
        True
        >>> VideoScore(0.0, 0.0, 10, 100).passes(0.0, 0.0)
        False
        """
        return (
            self.query_match_pct > 0
            and self.query_match_pct >= query_pct_min
            and self.compared_match_pct >= compared_pct_min
        )


def parse_vpdq(
    signal: str | Sequence[object], *, max_frames: int = MAX_FRAMES
) -> tuple[VpdqFrame, ...]:
    """The frames of a signal: its JSON text, or the list itself; raises :class:`VpdqError`.

    >>> parse_vpdq("[]")
    Traceback (most recent call last):
    streams.vpdq.VpdqError: a vPDQ signal has no frame
    >>> try:
    ...     parse_vpdq('{"0": {"quality": 100}}')   # the old python-threatexchange form
    ... except VpdqError as exc:
    ...     print(exc.reason)
    bad_vpdq
    """
    if isinstance(signal, str):
        try:
            value: object = json.loads(signal)
        except ValueError:
            raise VpdqError("bad_vpdq", "a vPDQ signal is a JSON list of strings") from None
    else:
        value = signal
    if not isinstance(value, list | tuple):
        raise VpdqError("bad_vpdq", "a vPDQ signal is a list of 'pdqhex,quality,timestamp' strings")
    if not value:
        raise VpdqError("vpdq_empty", "a vPDQ signal has no frame")
    if len(value) > max_frames:
        raise VpdqError(
            "vpdq_too_long", f"a vPDQ signal has {len(value)} frames, over {max_frames}"
        )
    return tuple(VpdqFrame.parse(item, f"frame {n}") for n, item in enumerate(value))


def format_vpdq(frames: Iterable[VpdqFrame]) -> str:
    """The signal's text, as python-threatexchange's ``vpdq_to_json`` writes it.

    >>> format_vpdq([VpdqFrame("0" * 64, 0, 0.0)])[-9:]
    '0,0,0.0"]'
    """
    return json.dumps([str(f) for f in frames])


def canonical_vpdq(signal: str | Sequence[object]) -> str:
    """A signal in its one canonical text (lowercase hex, python-threatexchange's format).

    >>> canonical_vpdq(['AA' * 32 + ', 90 ,1']) == '["' + "aa" * 32 + ',90,1.0"]'
    True
    """
    return format_vpdq(parse_vpdq(signal))


def usable_hashes(frames: Iterable[VpdqFrame], quality_min: int = QUALITY_MIN) -> list[str]:
    """The frame hashes the match rule compares: quality >= ``quality_min``, each hash once.

    In the order of first appearance (python-threatexchange filters by
    quality first, then drops repeated hashes).
    """
    seen: dict[str, None] = {}
    for f in frames:
        if f.quality >= quality_min:
            seen.setdefault(f.pdq)
    return list(seen)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two PDQ hex hashes.

    >>> hamming("0" * 64, "0" * 63 + "7")
    3
    """
    return (int(a, 16) ^ int(b, 16)).bit_count()


def compare(query: Sequence[str], compared: Sequence[str], distance: int) -> VideoScore:
    """vPDQ's brute-force comparison of two videos' usable unique frame hashes.

    The pseudocode of ``vpdq/README.md``, pair by pair: the reference answer
    that the indexed search of :mod:`streams.videobank` must give. An empty
    side scores 0 (python-threatexchange never reports such a video).
    """
    qv = [int(h, 16) for h in query]
    cv = [int(h, 16) for h in compared]
    q_hit = sum(any((a ^ b).bit_count() <= distance for b in cv) for a in qv)
    c_hit = sum(any((a ^ b).bit_count() <= distance for a in qv) for b in cv)
    return VideoScore(
        q_hit * 100 / len(qv) if qv else 0.0,
        c_hit * 100 / len(cv) if cv else 0.0,
        len(qv),
        len(cv),
    )
