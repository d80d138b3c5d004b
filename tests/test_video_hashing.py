"""Hashing videos into vPDQ with PyAV, and matching what a video becomes as it spreads.

The videos are made here (tests/videos.py): a synthetic original, and the
variants a reshared clip goes through (another codec and bitrate, half size,
3GP/H.263 at 176x144, trimmed, a logo over it). Each must match the banked
original by vPDQ's rule; a different video must not; a flat colour matches
nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import av
import orjson
import pytest
import videos
from PIL import Image
from test_hashing import viralwatch

from streams.banks import BankEntry, HashBanks
from streams.events import Content
from streams.hashing import FileHashes, HashError, hash_file, hash_files
from streams.videohash import VideoHashes, VideoLimits
from streams.vpdq import format_vpdq, parse_vpdq


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    original = videos.synthetic(d / "original.mp4", seed=1)
    return {
        "original": original,
        "mpeg4_low_bitrate": videos.variant(
            original, d / "mpeg4.avi", codec="mpeg4", bit_rate=250_000
        ),
        "vp9": videos.variant(original, d / "vp9.webm", codec="libvpx-vp9", bit_rate=150_000),
        "half_size": videos.variant(original, d / "half.mp4", size=(160, 120)),
        "3gp_h263": videos.variant(
            original, d / "mms.3gp", codec="h263", size=(176, 144), bit_rate=64_000, fmt="3gp"
        ),
        "trimmed": videos.variant(original, d / "trimmed.mkv", trim=(2.0, 1.0)),
        "logo": videos.variant(original, d / "logo.mp4", logo=True),
        "other": videos.synthetic(d / "other.mov", seed=2),
        "flat": videos.flat(d / "flat.mp4", (90, 120, 200)),
    }


@pytest.fixture(scope="module")
def hashed(clips: dict[str, Path]) -> dict[str, VideoHashes]:
    out = {}
    for name, path in clips.items():
        rec = hash_file(path)
        assert isinstance(rec, VideoHashes), rec
        out[name] = rec
    return out


@pytest.fixture(scope="module")
def banks(hashed: dict[str, VideoHashes]) -> HashBanks:
    b = HashBanks()
    b.add(BankEntry("ncii", "vpdq", format_vpdq(hashed["original"].frames), "case-1"))
    return b


def test_a_video_gets_its_md5_and_one_frame_a_second(
    clips: dict[str, Path], hashed: dict[str, VideoHashes]
) -> None:
    rec = hashed["original"]
    assert rec.md5 == hashlib.md5(clips["original"].read_bytes()).hexdigest()
    assert rec.fps == 25.0
    assert [f.timestamp for f in rec.frames] == [float(s) for s in range(8)]
    assert all(f.quality == 100 for f in rec.frames)
    assert len({f.pdq for f in rec.frames}) == 8  # the frames move
    d = rec.to_dict()
    assert parse_vpdq(d["vpdq"]) == rec.frames and d["frames"] == 8
    assert hashed["trimmed"].frames[0].timestamp == 0.0 and len(hashed["trimmed"].frames) == 5


def test_the_sampling_rate_is_a_setting(clips: dict[str, Path]) -> None:
    rec = hash_file(clips["original"], seconds_per_hash=0.5)
    assert isinstance(rec, VideoHashes)
    # every int(0.5 * 25) = 12th frame, stamped frame / fps as the reference hasher does
    assert [f.timestamp for f in rec.frames[:4]] == [0.0, 0.48, 0.96, 1.44]
    assert len(rec.frames) == 17


@pytest.mark.parametrize(
    "variant", ["mpeg4_low_bitrate", "vp9", "half_size", "3gp_h263", "trimmed", "logo"]
)
def test_each_variant_matches_its_original(
    variant: str, hashed: dict[str, VideoHashes], banks: HashBanks
) -> None:
    m = banks.match(Content(md5=hashed[variant].md5, vpdq=hashed[variant].frames))
    assert m is not None, variant
    assert m.kind == "vpdq" and m.entry.label == "case-1" and m.video is not None
    assert m.video.query_match_pct >= 80.0
    assert m.distance <= 31


def test_a_different_video_and_a_flat_one_match_nothing(
    hashed: dict[str, VideoHashes], banks: HashBanks
) -> None:
    assert banks.match(Content(vpdq=hashed["other"].frames)) is None
    flat = hashed["flat"]
    assert {f.quality for f in flat.frames} == {0}
    assert banks.match(Content(vpdq=flat.frames)) is None
    # banked, a flat video matches nothing either, not even itself
    flat_bank = HashBanks()
    flat_bank.add(BankEntry("ncii", "vpdq", format_vpdq(flat.frames)))
    assert flat_bank.videos.frames == 0
    assert flat_bank.match(Content(vpdq=flat.frames)) is None


def test_a_screenshot_of_the_video_matches_it(
    clips: dict[str, Path], tmp_path: Path, banks: HashBanks
) -> None:
    with av.open(str(clips["3gp_h263"])) as src:
        frame = next(f for n, f in enumerate(src.decode(video=0)) if n == 75)
    shot = tmp_path / "screenshot.png"
    Image.fromarray(frame.to_ndarray(format="rgb24")).resize((352, 288)).save(shot)
    rec = hash_file(shot)
    assert isinstance(rec, FileHashes)
    m = banks.match(Content(pdq=rec.pdq, pdq_quality=rec.quality, md5=rec.md5))
    assert m is not None and m.kind == "video_frame" and m.video is None


def test_the_kind_of_file_is_decided_by_content(clips: dict[str, Path], tmp_path: Path) -> None:
    disguised = tmp_path / "notes.txt"
    shutil.copy(clips["3gp_h263"], disguised)
    rec = hash_file(disguised)
    assert isinstance(rec, VideoHashes) and len(rec.frames) == 8
    picture = tmp_path / "clip.mp4"
    Image.new("RGB", (64, 64), "red").save(picture, format="PNG")
    assert isinstance(hash_file(picture), FileHashes)


def test_files_that_are_no_video_get_their_md5_and_a_reason(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    audio = tmp_path / "voice.m4a"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("aac", rate=16_000)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.rate = 16_000
        for p in frame.planes:
            p.update(bytes(p.buffer_size))
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clips["original"].read_bytes()[:3000])
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    recs = list(hash_files([audio, cut, text, clips["vp9"]]))
    errors = [r for r in recs[:3] if isinstance(r, HashError)]
    assert len(errors) == 3 and isinstance(recs[3], VideoHashes)
    for e, path in zip(errors, (audio, cut, text), strict=True):
        assert e.md5 == hashlib.md5(path.read_bytes()).hexdigest()
        assert e.error and "\n" not in e.error
    assert "no video stream" in errors[0].error
    assert "not an image" in errors[2].error


def test_a_long_stream_is_bounded_with_a_clear_message(clips: dict[str, Path]) -> None:
    rec = hash_file(clips["original"], limits=VideoLimits(max_frames=3))
    assert isinstance(rec, VideoHashes) and len(rec.frames) == 3
    assert rec.truncated is not None and "frame limit" in rec.truncated
    assert rec.to_dict()["truncated"] == rec.truncated
    rec = hash_file(clips["original"], limits=VideoLimits(max_seconds=1e-9))
    assert isinstance(rec, VideoHashes) and len(rec.frames) == 1
    assert rec.truncated is not None and "time limit" in rec.truncated
    seen: list[tuple[float, float | None]] = []
    hash_file(clips["half_size"], progress=lambda s, total: seen.append((s, total)))
    assert [s for s, _ in seen] == [float(i) for i in range(8)]
    assert seen[0][1] is not None and 7.9 < seen[0][1] < 8.2


def test_hashing_leaves_ffmpeg_no_log_callback_into_python(clips: dict[str, Path]) -> None:
    """PyAV's log callback (any level set: PANIC still passes FFmpeg's errors on) takes the
    GIL in the decoder's frame threads; a stream cut short by a limit frees its codec holding
    the GIL and waits for them: a frame thread logging then hung the test above (once at
    load 15; 20 rounds of two cut hashes hung at the 7th at load 9). None is set: FFmpeg's
    threads never enter Python."""
    av.logging.set_level(av.logging.PANIC)  # what hash_video set before
    rec = hash_file(clips["original"], limits=VideoLimits(max_frames=2))
    assert isinstance(rec, VideoHashes) and rec.truncated is not None
    assert av.logging.get_level() is None


def test_hash_command_on_videos_and_bank_match(clips: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    r = viralwatch("hash", str(clips["original"]), str(bad), str(clips["3gp_h263"]))
    assert r.returncode == 1
    out = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert [o["file"] for o in out] == [str(clips["original"]), str(clips["3gp_h263"])]
    assert set(out[0]) == {"file", "md5", "vpdq", "frames", "fps"}
    err = orjson.loads(r.stderr.splitlines()[0])
    assert err["file"] == str(bad) and err["md5"] == hashlib.md5(bad.read_bytes()).hexdigest()
    # the original banked (its signal as a CSV field), the 3GP's hash line as a query
    signal = format_vpdq(parse_vpdq(out[0]["vpdq"])).replace('"', '""')
    bank = tmp_path / "bank.csv"
    bank.write_text(f'signal_type,signal,bank,label\nvpdq,"{signal}",ncii,case-1\n')
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(r.stdout.splitlines()[1] + b"\n")
    r = viralwatch("bank", "match", "--bank", str(bank), str(queries))
    assert r.returncode == 0, r.stderr
    (row,) = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert row["query"] == str(clips["3gp_h263"]) and row["kind"] == "vpdq"
    assert row["query_match_pct"] >= 80 and row["bank"] == "ncii"


def test_hash_command_flags(clips: dict[str, Path]) -> None:
    r = viralwatch(
        "hash", "--progress", "--seconds-per-hash", "2", "--max-frames", "3", str(clips["original"])
    )
    assert r.returncode == 0, r.stderr
    rec = orjson.loads(r.stdout)
    assert [s.rsplit(",", 1)[1] for s in rec["vpdq"]] == ["0.0", "2.0", "4.0"]
    assert "frame limit" in rec["truncated"] and b"frame limit" in r.stderr
