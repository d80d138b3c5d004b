"""Synthetic share traffic, realistic enough to exercise the whole core.

Why a simulator: real NCII traffic cannot leave a platform, and a demo, the
tests and the benchmarks all need a stream with the shape of the real thing
and a known answer. :func:`simulate` plants cascades whose event-time rates
are known (so a test can say which clusters must alert) inside background
traffic with the statistics of real reshare data:

- **Background cascades** are a branching process. Each post's number of
  reshares is Poisson with a mean proportional to its author's followers
  (the SEISMIC model of Zhao et al. 2015); followers are log-normal
  (log-mean 4.5, log-sd 1.6, close to the follower counts of the SEISMIC
  example cascade), so offspring counts are heavy-tailed and the process is
  kept subcritical (mean offspring ``background_r``): most cascades are one
  upload, a few grow to hundreds of posts.
- **Reaction times** (upload to reshare) are log-normal with a median of two
  minutes: the shape of retweet and Weibo reaction times, compressed so a
  30-minute run holds whole cascades.
- **Users** come from a Zipf–Mandelbrot population: a few accounts reshare a
  lot (bots, super-spreaders), most appear once.
- **Planted cascades** follow a shares-per-minute profile; each share picks
  its parent among the live posts with weight ``(1 + followers) ** 0.6``
  decayed by the post's age (a Hawkes-process cluster), which grows deep
  reshare trees, not stars. Some new posts are independent re-uploads:
  exact copies, or near-identical ones (a few PDQ bits flipped, a new MD5).
  Moderators take down some posts of banked cascades; a taken-down post
  gets no further reshares.
- **Videos** (when asked for): ``video_banked`` of the fast banked cascades
  are videos, banked by their vPDQ signal; their first upload is the banked
  file (same MD5, same frames) and their independent re-uploads are
  re-encodes (every frame a few PDQ bits off, a few seconds trimmed at
  either end, a new MD5), matched by vPDQ's rule. ``video_fraction`` of the
  background uploads are unbanked videos, and ``extra_video_entries`` videos
  sit in the bank, so lookups miss as well as hit. Their content comes from a
  second random stream, so a scenario without videos is unchanged.
- **Arrival order** is event time, except: some events arrive a minute or two
  late (so reshares can precede their parent in the file), a few arrive
  20 minutes late, some lines are delivered twice (Kafka is at-least-once),
  a few reshares name a parent from before the run (orphans) or form a cycle,
  and a few lines are malformed, one kind each of the parser's reasons.

The same :class:`Scenario` always gives byte-identical lines: all randomness
comes from one ``random.Random(seed)``.

Examples
--------
>>> sim = three_cascades(seed=7)
>>> [c["kind"] for c in sim.truth["cascades"]]
['high', 'slow', 'unbanked']
>>> [c["expected_severity"] for c in sim.truth["cascades"]]
['high', None, None]
>>> sim.lines == three_cascades(seed=7).lines
True
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from bisect import bisect
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import orjson

from streams.banks import BankEntry
from streams.vpdq import VpdqFrame, format_vpdq

#: 2026-01-01T00:00:00Z, the default start of event time.
DEFAULT_START_MS: Final = 1_767_225_600_000
MINUTE_MS: Final = 60_000

#: The issue's documented default policy, as (severity, shares, window minutes),
#: highest first. Only used to say which planted cascades should alert.
DEFAULT_THRESHOLDS: Final = (("critical", 500, 15), ("high", 100, 5), ("warning", 25, 5))

#: Shares per minute of event time after the first upload, for each planted
#: kind (jittered by +-10% per minute). The margins keep each kind inside one
#: severity of :data:`DEFAULT_THRESHOLDS` however a detector counts (shares
#: alone or with re-uploads; exact copies alone or near-identical ones too):
#: ``warning`` peaks near 50 per 5 minutes and cannot pass 6 * 11 = 66;
#: ``high`` passes 150 per 5 minutes but totals under 280; ``critical`` passes
#: 750 per 15 minutes. ``slow`` (2-3 per minute, at most 18 per 5 minutes) and
#: ``quiet`` (0-2 per minute) never reach 25.
PROFILES: Final[dict[str, tuple[int, ...]]] = {
    "critical": (10, 25, 45, 70, 90, 100, 100, 95, 85, 70, 55, 40, 30, 20, 15, 10, 8, 6, 4, 3),
    "high": (5, 10, 20, 30, 35, 35, 35, 30, 20, 12, 8, 5, 3, 2, 1),
    "warning": (3, 5, 8, 10, 10, 10, 10, 10, 8, 5, 3, 2, 1),
    "unbanked": (8, 20, 40, 50, 50, 45, 35, 25, 15, 10, 5, 3, 2),
}

#: The parser's reasons that the planted malformed lines exercise.
MALFORMED_KINDS: Final = (
    "not_json",
    "bad_hex",
    "bad_hash_length",
    "missing_field",
    "unknown_type",
    "self_reshare",
    "bad_ts",
)

_PDQ_BANK: Final = "stopncii"
_MD5_BANK: Final = "internal"
_FOLLOWERS_MU: Final = 4.5
_FOLLOWERS_SIGMA: Final = 1.6
_DELAY_MEDIAN_MS: Final = 120_000
_DELAY_SIGMA: Final = 1.2
_MAX_NEAR_BITS: Final = 24
#: Parent-choice weight of a planted cascade's first upload, as for ~10,000 followers.
_SEED_WEIGHT: Final = 250.0
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSETS: Final = (
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
)


@dataclass(frozen=True)
class Scenario:
    """What to simulate. Every field has a default; ``Scenario()`` is the demo run.

    ``scale`` multiplies the background rate, the number of planted cascades of
    each kind, the orphans, cycles and malformed lines: a benchmark at
    ``scale=30`` is 30 times the traffic with the same mix. ``minutes``
    stretches event time at the same rate. Counts of planted cascades are per
    run (not per minute); ``md5_banked`` of the fast banked ones are banked by
    MD5 (their PDQ is too flat to use), the rest by PDQ.
    """

    seed: int = 7
    minutes: int = 30
    start_ms: int = DEFAULT_START_MS
    scale: float = 1.0
    background_per_minute: float = 300.0
    background_r: float = 0.8
    background_max_size: int = 500
    users: int = 100_000
    critical_banked: int = 1
    high_banked: int = 2
    warning_banked: int = 3
    slow_banked: int = 1
    quiet_banked: int = 20
    fast_unbanked: int = 2
    md5_banked: int = 1
    reupload_rate: float = 0.03
    near_duplicate_share: float = 0.4
    takedown_rate: float = 0.08
    background_takedown_rate: float = 0.005
    late_fraction: float = 0.01
    very_late: int = 2
    duplicate_fraction: float = 0.002
    malformed_per_kind: int = 2
    orphans: int = 3
    cycles: int = 1
    low_quality_fraction: float = 0.08
    extra_bank_entries: int = 300
    video_banked: int = 0
    video_fraction: float = 0.0
    extra_video_entries: int = 0

    def __post_init__(self) -> None:
        if self.minutes < 1:
            raise ValueError("minutes must be at least 1")
        if not 946_684_800_000 <= self.start_ms <= 4_000_000_000_000:
            raise ValueError("start_ms must be epoch milliseconds between 2000 and 2096")
        if not 0 < self.scale <= 1000:
            raise ValueError("scale must be in (0, 1000]")
        if self.background_per_minute < 0:
            raise ValueError("background_per_minute must be >= 0")
        if not 0 <= self.background_r < 1:
            raise ValueError("background_r must be in [0, 1): the background must die out")
        if self.background_max_size < 1 or self.users < 10:
            raise ValueError("background_max_size must be >= 1 and users >= 10")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_rate", "_fraction", "_share")) and not 0 <= value <= 1:
                raise ValueError(f"{f.name} must be in [0, 1]")
            if isinstance(value, int) and f.name not in ("seed", "start_ms") and value < 0:
                raise ValueError(f"{f.name} must be >= 0")
        if self.md5_banked > self.critical_banked + self.high_banked + self.warning_banked:
            raise ValueError("md5_banked cannot exceed the number of fast banked cascades")
        fast_pdq = self.critical_banked + self.high_banked + self.warning_banked - self.md5_banked
        if self.video_banked > fast_pdq:
            raise ValueError("video_banked cannot exceed the fast banked cascades banked by PDQ")

    def scaled(self, n: int) -> int:
        """``n`` times :attr:`scale`, rounded (at least 1 when ``n`` is)."""
        return max(1, round(n * self.scale)) if n else 0


@dataclass(frozen=True)
class Simulation:
    """A simulated run: the input lines, the bank they imply, and what was planted.

    ``lines`` are JSON lines without the newline, in arrival order. ``truth``
    is JSON-serialisable; its keys are described in :func:`simulate`.
    """

    lines: list[bytes]
    bank: list[BankEntry]
    truth: dict[str, Any]


def simulate(scenario: Scenario | None = None) -> Simulation:
    """Generate the traffic of ``scenario`` (the default :class:`Scenario` if none).

    ``truth`` (JSON-serialisable) holds:

    - ``scenario``, ``lines`` (all lines), ``events`` (valid events by type,
      redeliveries not counted), ``bank_entries``;
    - ``malformed``: planted bad lines by the parser's reject reason;
    - ``duplicates``: lines delivered a second time (same bytes);
    - ``late`` (events arriving 30-150 s after their event time),
      ``very_late`` (20-25 minutes), ``shares_before_parent`` (reshare lines
      before their parent's line, cycles aside);
    - ``orphans`` (reshares of a post from before the run, which never comes)
      and ``cycles`` (pairs of reshares of each other);
    - ``background``: cascade count and ``sizes`` as ``[size, count]`` pairs;
    - ``cascades``: one dict per planted cascade with ``name``, ``kind``,
      ``banked``, the bank ``entry`` and its ``cluster_id``, the hashes, the
      exact-copy ``root_post_ids`` and ``near_duplicates``, figures, peak
      counts (``peak_shares_5m``/``_15m`` over all its shares,
      ``..._exact`` over shares under exact copies only, ``peak_posts_...``
      with re-uploads too) and ``expected_severity`` under
      :data:`DEFAULT_THRESHOLDS` (``severity_robust``: every way of counting
      agrees);
    - ``fast_banked``, ``fast_unbanked``, ``slow_banked``: cascade names.

    >>> sim = simulate(Scenario(minutes=5, background_per_minute=10, quiet_banked=1))
    >>> sim.truth["lines"] == len(sim.lines)
    True
    """
    gen = _Generator(scenario or Scenario())
    lines = list(gen.lines())
    return Simulation(lines=lines, bank=gen.bank, truth=gen.truth)


def iter_lines(scenario: Scenario, truth: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The lines of ``scenario`` one at a time, for runs too big to hold in memory.

    Memory stays near the events of the cascades still growing, not the run.
    ``truth``, if given, is filled in (as in :func:`simulate`) once the
    iterator is exhausted.

    >>> sc = Scenario(minutes=3, background_per_minute=5, quiet_banked=0)
    >>> list(iter_lines(sc)) == simulate(sc).lines
    True
    """
    gen = _Generator(scenario)
    yield from gen.lines()
    if truth is not None:
        truth.update(gen.truth)


def scenario_bank(scenario: Scenario) -> list[BankEntry]:
    """The bank that ``scenario``'s traffic implies, without generating the traffic."""
    return _Generator(scenario).bank


def write_bank(bank: list[BankEntry], bank_path: str | Path) -> None:
    """Write bank entries as CSV with header ``signal_type,signal,bank,label``."""
    with open(bank_path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(("signal_type", "signal", "bank", "label"))
        for e in bank:
            out.writerow((e.signal_type, e.signal, e.bank, e.label or ""))


def write_simulation(sim: Simulation, events_path: str | Path, bank_path: str | Path) -> None:
    """Write the events (one JSON line each) and the bank CSV of ``sim``."""
    with open(events_path, "wb") as fh:
        for line in sim.lines:
            fh.write(line)
            fh.write(b"\n")
    write_bank(sim.bank, bank_path)


def write_scenario(
    scenario: Scenario, events_path: str | Path, bank_path: str | Path
) -> dict[str, Any]:
    """Generate ``scenario`` straight to files (constant memory); returns the truth."""
    truth: dict[str, Any] = {}
    gen = _Generator(scenario)
    write_bank(gen.bank, bank_path)
    with open(events_path, "wb") as fh:
        buf: list[bytes] = []
        for line in gen.lines():
            buf.append(line)
            if len(buf) >= 4096:
                fh.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    truth.update(gen.truth)
    return truth


def three_cascades_scenario(seed: int = 7) -> Scenario:
    """One fast banked, one fast unbanked and one slow banked cascade, in light noise."""
    return Scenario(
        seed=seed,
        background_per_minute=20.0,
        critical_banked=0,
        high_banked=1,
        warning_banked=0,
        slow_banked=1,
        quiet_banked=0,
        fast_unbanked=1,
        md5_banked=0,
        very_late=0,
        orphans=0,
        cycles=0,
        malformed_per_kind=1,
        extra_bank_entries=50,
    )


def three_cascades(seed: int = 7) -> Simulation:
    """The acceptance run: replay must alert on the fast banked cascade only.

    The fast banked cascade passes 100 shares in 5 minutes, the fast unbanked
    one too (but its content is in no bank and over 60 bits from every banked
    PDQ), and the slow banked one grows by 2-3 shares a minute for the whole
    run, never 25 in 5 minutes.
    """
    return simulate(three_cascades_scenario(seed))


def severity_for(peak_5m: int, peak_15m: int) -> str | None:
    """The severity :data:`DEFAULT_THRESHOLDS` give to these peak share counts.

    >>> severity_for(30, 60), severity_for(120, 300), severity_for(120, 520), severity_for(9, 9)
    ('warning', 'high', 'critical', None)
    """
    for severity, shares, minutes in DEFAULT_THRESHOLDS:
        if (peak_15m if minutes == 15 else peak_5m) >= shares:
            return severity
    return None


def peak_count(ts_ms: list[int], window_ms: int) -> int:
    """Most events in any window ``(t - window, t]``, over sorted event times.

    >>> peak_count([0, 1_000, 2_000, 60_000, 61_000], 60_000)
    3
    """
    best = lo = 0
    for hi, t in enumerate(ts_ms):
        while t - ts_ms[lo] >= window_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def flip_bits(pdq: str, bits: int, rng: random.Random) -> str:
    """``pdq`` with ``bits`` distinct random bits flipped (a near-identical image).

    >>> from streams.banks import hamming
    >>> hamming(flip_bits("0" * 64, 9, random.Random(1)), "0" * 64)
    9
    """
    chosen: set[int] = set()
    while len(chosen) < bits:
        chosen.add(rng.randrange(256))
    value = int(pdq, 16)
    for b in sorted(chosen):
        value ^= 1 << b
    return f"{value:064x}"


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        limit = math.exp(-lam)
        k = 0
        p = rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def _dumps(ev: dict[str, Any]) -> bytes:
    # orjson's bytes keep a 4 KB allocation whatever their length; a copy of the
    # exact size keeps a held line near its ~250 bytes.
    return bytes(memoryview(orjson.dumps(ev)))


def _rfc3339(ms: int, tz: timezone | None) -> str:
    dt = _EPOCH + timedelta(milliseconds=ms)
    if tz is None:
        return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"
    return dt.astimezone(tz).isoformat(timespec="milliseconds")


@dataclass
class _Plant:
    name: str
    kind: str
    start_ms: int
    profile: tuple[int, ...]
    pdq: str
    pdq_quality: int
    md5: str
    entry: BankEntry | None
    video: tuple[VpdqFrame, ...] | None = None


@dataclass
class _Post:
    post_id: str
    ts_ms: int
    weight: float
    removed_ms: int
    exact: bool
    depth: int
    tau_ms: float


class _Generator:
    """One run's state. Cascades are generated in order of their first upload;
    their events wait in a heap keyed by arrival time and leave it once no
    cascade still to come can precede them."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = rng = random.Random(sc.seed)
        # videos' frames come from their own stream: asking for videos changes no other event
        self.vrng = random.Random(f"video-{sc.seed}")
        self.end_ms = sc.start_ms + sc.minutes * MINUTE_MS
        self._heap: list[tuple[int, int, bytes, str | None, str | None]] = []
        self._seq = 0
        self._posts = 0
        self._events = 0
        self._pending_late: set[str] = set()
        self._very_late_at: list[int] = []
        self._tag = f"{sc.seed & 0xFFFF:04x}"
        # Users: a shuffled id space, Zipf-Mandelbrot activity, log-normal followers.
        n_users = sc.users
        # rank -> id by an affine bijection of [0, n): activity rank does not show in the id.
        mult = rng.randrange(1, n_users)
        while math.gcd(mult, n_users) != 1:
            mult += 1
        shift = rng.randrange(n_users)
        self._user_ids = [f"u{(r * mult + shift) % n_users:07d}" for r in range(n_users)]
        gauss, exp = rng.gauss, math.exp
        self._followers = [
            min(50_000_000, int(exp(_FOLLOWERS_MU + _FOLLOWERS_SIGMA * gauss())))
            for _ in range(n_users)
        ]
        cum: list[float] = []
        total = 0.0
        weighted = 0.0
        for rank in range(n_users):
            w = 1.0 / (rank + 10.0)
            total += w
            weighted += w * self._followers[rank]
            cum.append(total)
        self._cum = cum
        self._cum_total = total
        # Mean followers of an *active* user, so mean offspring is exactly background_r.
        self._mean_followers = weighted / total
        self.counts: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.bg_sizes: Counter[int] = Counter()
        self.cascades: list[dict[str, Any]] = []
        self._plan()
        self.truth: dict[str, Any] = {}

    # ----- ids, users, content -------------------------------------------------

    def _post_id(self) -> str:
        self._posts += 1
        return f"p{self._tag}{self._posts:08x}"

    def _event_id(self) -> str:
        self._events += 1
        return f"e{self._tag}{self._events:08x}"

    def _user(self) -> int:
        return bisect(self._cum, self.rng.random() * self._cum_total)

    def _quality(self, low_ok: bool = True) -> int:
        rng = self.rng
        if low_ok and rng.random() < self.sc.low_quality_fraction:
            return rng.randint(5, 49)
        return rng.randint(50, 100)

    def _md5(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _video(self, first: str | None = None) -> tuple[VpdqFrame, ...]:
        """A video's vPDQ: 20-60 frames a second apart, a flat one (a fade) now and then."""
        vr = self.vrng
        frames = []
        for i in range(vr.randint(20, 60)):
            if i == 0 and first is not None:
                pdq, quality = first, 100
            elif vr.random() < 0.05:
                pdq, quality = "0" * 64, 0
            else:
                pdq, quality = f"{vr.getrandbits(256):064x}", vr.randint(60, 100)
            frames.append(VpdqFrame(pdq, quality, float(i)))
        return tuple(frames)

    def _reencode(self, frames: tuple[VpdqFrame, ...], bits: int) -> list[str]:
        """What a re-encode's hasher sees: every frame up to ``bits`` bits off, ends trimmed."""
        vr = self.vrng
        cut = len(frames) // 10
        head, tail = vr.randint(0, cut), vr.randint(0, cut)
        out = []
        for f in frames[head : len(frames) - tail]:
            pdq = flip_bits(f.pdq, vr.randint(0, bits), vr) if f.quality else f.pdq
            quality = min(100, max(0, f.quality + vr.randint(-10, 5))) if f.quality else 0
            out.append(str(VpdqFrame(pdq, quality, f.timestamp - head)))
        return out

    def _pdq_far(self, avoid: list[int], min_bits: int) -> str:
        while True:
            value = self.rng.getrandbits(256)
            if all((value ^ a).bit_count() > min_bits for a in avoid):
                return f"{value:064x}"

    def _plan(self) -> None:
        """Choose the planted cascades, their content and the bank, before any traffic."""
        sc, rng = self.sc, self.rng
        kinds: list[str] = []
        for kind, n in (
            ("critical", sc.critical_banked),
            ("high", sc.high_banked),
            ("warning", sc.warning_banked),
            ("slow", sc.slow_banked),
            ("unbanked", sc.fast_unbanked),
            ("quiet", sc.quiet_banked),
        ):
            kinds += [kind] * sc.scaled(n)
        n_fast = sum(k in ("critical", "high", "warning") for k in kinds)
        # The last fast banked cascades (warning-level first) are the MD5-banked ones.
        md5_from = n_fast - min(sc.scaled(sc.md5_banked), n_fast)
        fast_seen = 0
        # Planted content is kept 90+ bits apart, so near-identical copies (<= 24
        # bits off) of one never come within 31 bits of another. Other pairs of
        # random 256-bit hashes are 128 +- 8 bits apart: one within 55 bits has
        # a probability under 1e-12, so the bank's other entries go unchecked.
        planted_pdqs: list[int] = []
        banked_pdqs: list[int] = []
        bank: list[BankEntry] = []
        for _ in range(sc.scaled(sc.extra_bank_entries)):
            label = f"case-{rng.randrange(10**6):06d}"
            if rng.random() < 0.8:
                pdq = f"{rng.getrandbits(256):064x}"
                banked_pdqs.append(int(pdq, 16))
                bank.append(BankEntry(_PDQ_BANK, "pdq", pdq, label))
            else:
                bank.append(BankEntry(_MD5_BANK, "md5", self._md5(), label))
        for _ in range(sc.scaled(sc.extra_video_entries)):
            label = f"case-{self.vrng.randrange(10**6):06d}"
            bank.append(BankEntry(_PDQ_BANK, "vpdq", format_vpdq(self._video()), label))
        videos_left = sc.scaled(sc.video_banked) if sc.video_banked else 0
        counters: Counter[str] = Counter()
        plants: list[_Plant] = []
        minutes = sc.minutes
        # Unbanked content comes last so it can be kept 84+ bits from all banked
        # PDQs: its near-identical copies then stay over 60 bits away.
        order = sorted(range(len(kinds)), key=lambda i: kinds[i] == "unbanked")
        for i in order:
            kind = kinds[i]
            counters[kind] += 1
            name = f"{kind}-{counters[kind]}"
            if kind == "slow":
                profile = tuple(rng.choice((2, 3)) for _ in range(max(1, minutes - 1)))
                start = sc.start_ms + rng.randint(0, 30_000)
            elif kind == "quiet":
                profile = tuple(rng.choice((0, 0, 1, 1, 2)) for _ in range(rng.randint(3, 10)))
                start = sc.start_ms + rng.randint(0, max(0, minutes * MINUTE_MS - 60_000))
            else:
                profile = tuple(max(0, round(c * rng.uniform(0.9, 1.1))) for c in PROFILES[kind])
                room = max(0, minutes * MINUTE_MS - len(profile) * MINUTE_MS - 60_000)
                start = sc.start_ms + 30_000 + rng.randint(0, room)
            banked = kind != "unbanked"
            by_md5 = False
            if kind in ("critical", "high", "warning"):
                by_md5 = fast_seen >= md5_from
                fast_seen += 1
            pdq = self._pdq_far(planted_pdqs, 90)
            if not banked:
                while any((int(pdq, 16) ^ b).bit_count() <= 84 for b in banked_pdqs):
                    pdq = self._pdq_far(planted_pdqs, 90)
            planted_pdqs.append(int(pdq, 16))
            quality = rng.randint(5, 45) if by_md5 else rng.randint(60, 100)
            md5 = self._md5()
            entry = None
            video = None
            if banked:
                label = f"case-{rng.randrange(10**6):06d}"
                if by_md5:
                    entry = BankEntry(_MD5_BANK, "md5", md5, label)
                elif videos_left and kind in ("critical", "high", "warning"):
                    videos_left -= 1
                    video = self._video(first=pdq)
                    entry = BankEntry(_PDQ_BANK, "vpdq", format_vpdq(video), label)
                else:
                    entry = BankEntry(_PDQ_BANK, "pdq", pdq, label)
                    banked_pdqs.append(int(pdq, 16))
                bank.append(entry)
            plants.append(_Plant(name, kind, start, profile, pdq, quality, md5, entry, video))
        self.bank = sorted(bank, key=lambda e: (e.bank, e.signal_type, e.signal))
        # Planted cascades in the order the kinds were listed (stable truth order).
        rank = {k: i for i, k in enumerate(("critical", "high", "warning", "slow", "unbanked"))}
        self._plants = sorted(plants, key=lambda p: (rank.get(p.kind, 9), p.name))

    # ----- output ---------------------------------------------------------------

    def _ts(self, ms: int) -> int | str:
        r = self.rng.random()
        if r < 0.6:
            return ms
        if r < 0.92:
            return _rfc3339(ms, None)
        return _rfc3339(ms, _OFFSETS[int(r * 1000) % len(_OFFSETS)])

    def _event(
        self,
        kind: str,
        ts: int,
        post_id: str,
        user: str,
        parent: str | None = None,
        followers: int | None = None,
        content: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_id": event_id or self._event_id(),
            "type": kind,
            "ts": self._ts(ts),
            "post_id": post_id,
        }
        if parent is not None:
            ev["parent_post_id"] = parent
        ev["user_id"] = user
        if followers is not None and self.rng.random() < 0.95:
            ev["followers"] = followers
        if content is not None:
            ev["content"] = content
        return ev

    def _push(
        self,
        ev: dict[str, Any],
        ts: int,
        *,
        creates: str | None = None,
        parent: str | None = None,
        delay_ms: int | None = None,
    ) -> None:
        """Queue one valid event for arrival, maybe late, maybe delivered twice."""
        rng = self.rng
        self.counts[ev["type"]] += 1
        arrival = ts
        if delay_ms is not None:
            arrival += delay_ms
            self.counts["very_late"] += 1
        elif rng.random() < self.sc.late_fraction:
            arrival += rng.randint(30_000, 150_000)
            self.counts["late"] += 1
        line = _dumps(ev)
        late_post = creates if (creates is not None and arrival > ts) else None
        if late_post is not None:
            self._pending_late.add(late_post)
        self._seq += 1
        heapq.heappush(self._heap, (arrival, self._seq, line, late_post, parent))
        if rng.random() < self.sc.duplicate_fraction:
            self.counts["duplicates"] += 1
            self._seq += 1
            again = arrival + rng.randint(1_000, 60_000)
            heapq.heappush(self._heap, (again, self._seq, line, None, None))

    def _push_raw(self, arrival: int, line: bytes, reason: str) -> None:
        self.malformed[reason] += 1
        self._seq += 1
        heapq.heappush(self._heap, (arrival, self._seq, line, None, None))

    def _flush(self, before: int | None) -> Iterator[bytes]:
        heap = self._heap
        pending = self._pending_late
        while heap and (before is None or heap[0][0] < before):
            _, _, line, late_post, parent = heapq.heappop(heap)
            if parent is not None and parent in pending:
                self.counts["shares_before_parent"] += 1
            if late_post is not None:
                pending.discard(late_post)
            self.counts["lines"] += 1
            yield line

    # ----- cascades -------------------------------------------------------------

    def _delay(self) -> int:
        return max(1_000, int(_DELAY_MEDIAN_MS * math.exp(_DELAY_SIGMA * self.rng.gauss())))

    def _background(self, t0: int) -> None:
        sc, rng, end = self.sc, self.rng, self.end_ms
        content: dict[str, Any] = {
            "pdq": f"{rng.getrandbits(256):064x}",
            "pdq_quality": self._quality(),
        }
        content["md5"] = self._md5()
        if sc.video_fraction and self.vrng.random() < sc.video_fraction:
            content = {"vpdq": [str(f) for f in self._video()], "md5": content["md5"]}
        u = self._user()
        root = self._post_id()
        self._push(
            self._event("upload", t0, root, self._user_ids[u], None, self._followers[u], content),
            t0,
            creates=root,
        )
        queue: deque[tuple[str, int, int]] = deque([(root, t0, u)])
        size = 1
        r_per_follower = sc.background_r / self._mean_followers
        while queue and size < sc.background_max_size:
            pid, t, owner = queue.popleft()
            removed = end
            if rng.random() < sc.background_takedown_rate:
                removed = t + self._delay()
                if removed < end:
                    self._push(
                        self._event("takedown", removed, pid, self._user_ids[owner]), removed
                    )
            for _ in range(_poisson(rng, r_per_follower * self._followers[owner])):
                if size >= sc.background_max_size:
                    break
                tc = t + self._delay()
                if tc >= removed:
                    continue
                u = self._user()
                child = self._post_id()
                ev = self._event("share", tc, child, self._user_ids[u], pid, self._followers[u])
                very_late = None
                if self._very_late_at and tc >= self._very_late_at[-1]:
                    self._very_late_at.pop()
                    very_late = rng.randint(20 * MINUTE_MS, 25 * MINUTE_MS)
                self._push(ev, tc, creates=child, parent=pid, delay_ms=very_late)
                queue.append((child, tc, u))
                size += 1
        self.bg_sizes[size] += 1

    def _planted(self, p: _Plant) -> None:
        sc, rng, end = self.sc, self.rng, self.end_ms
        t0 = p.start_ms
        content: dict[str, Any] = {"pdq": p.pdq, "pdq_quality": p.pdq_quality, "md5": p.md5}
        if p.video is not None:
            content = {"vpdq": [str(f) for f in p.video], "md5": p.md5}
        banked = p.entry is not None
        takedown_rate = sc.takedown_rate if banked else sc.takedown_rate / 4
        reupload_rate = 0.0 if p.kind == "quiet" else sc.reupload_rate
        near_share = (
            0.0
            if (p.entry is not None and p.entry.signal_type == "md5")
            else (sc.near_duplicate_share)
        )
        roots: list[_Post] = []
        recent: deque[_Post] = deque(maxlen=100)
        users: set[int] = set()
        exact_roots: list[str] = []
        near_roots: list[dict[str, Any]] = []
        share_ts: list[tuple[int, bool]] = []
        upload_ts: list[tuple[int, bool]] = []
        takedowns = 0
        depth = 0
        pending_takedowns: list[tuple[int, str, str]] = []

        # A post is seen in feeds for a few minutes; the first upload, spread by its
        # author's audience and by search, for longer.
        tau_share, tau_root = 4.0 * MINUTE_MS, 10.0 * MINUTE_MS

        def new_post(t: int, u: int, exact: bool, d: int, tau: float = tau_share) -> _Post:
            nonlocal takedowns
            removed = end
            if rng.random() < takedown_rate:
                # Moderators act once the cascade is noticed, a few minutes in.
                removed = max(t, t0 + 5 * MINUTE_MS) + self._delay()
            weight = (1.0 + self._followers[u]) ** 0.6
            post = _Post(self._post_id(), t, weight, removed, exact, d, tau)
            if removed < end:
                takedowns += 1
                mod = f"mod-{rng.randrange(40):02d}"
                pending_takedowns.append((removed, post.post_id, mod))
            return post

        def upload(t: int, exact: bool, tau: float = tau_share) -> None:
            u = self._user()
            users.add(u)
            post = new_post(t, u, exact, 0, tau)
            if not roots:
                # The post a viral cascade grows from has a wide audience (its
                # author's, or one that picked it up at once): otherwise a later
                # copy from a well-followed account takes over the whole cascade.
                post.weight = max(post.weight, _SEED_WEIGHT)
            body = content
            if not exact:
                bits = rng.randint(2, _MAX_NEAR_BITS)
                body = {
                    "pdq": flip_bits(p.pdq, bits, rng),
                    "pdq_quality": rng.randint(55, 100),
                    "md5": self._md5(),
                }
                if p.video is not None:  # a re-encode: the frames a few bits off, trimmed
                    body = {"vpdq": self._reencode(p.video, bits), "md5": body["md5"]}
                near_roots.append({"post_id": post.post_id, "pdq": body.get("pdq"), "bits": bits})
            else:
                exact_roots.append(post.post_id)
            ev = self._event(
                "upload", t, post.post_id, self._user_ids[u], None, self._followers[u], body
            )
            self._push(ev, t, creates=post.post_id)
            roots.append(post)
            upload_ts.append((t, exact))

        upload(t0, True, tau_root)
        times = sorted(
            t0 + i * MINUTE_MS + rng.randint(1, MINUTE_MS - 1)
            for i, c in enumerate(p.profile)
            for _ in range(c)
        )
        for t in times:
            if t >= end:
                break
            # Copies are saved and re-uploaded once the content has been around a while.
            if t - t0 >= 2 * MINUTE_MS and rng.random() < reupload_rate:
                upload(t, rng.random() >= near_share)
                continue
            cands = roots + list(recent)
            weights = [
                0.0 if c.removed_ms <= t else c.weight * math.exp((c.ts_ms - t) / c.tau_ms)
                for c in cands
            ]
            if not any(weights):
                continue
            parent = rng.choices(cands, weights)[0]
            u = self._user()
            users.add(u)
            post = new_post(t, u, parent.exact, parent.depth + 1)
            depth = max(depth, post.depth)
            ev = self._event(
                "share", t, post.post_id, self._user_ids[u], parent.post_id, self._followers[u]
            )
            self._push(ev, t, creates=post.post_id, parent=parent.post_id)
            recent.append(post)
            share_ts.append((t, parent.exact))
        for removed, pid, mod in pending_takedowns:
            self._push(self._event("takedown", removed, pid, mod), removed)

        all_shares = [t for t, _ in share_ts]
        exact_shares = [t for t, ex in share_ts if ex]
        all_posts = sorted(all_shares + [t for t, _ in upload_ts])
        peaks = {
            "peak_shares_5m": peak_count(all_shares, 5 * MINUTE_MS),
            "peak_shares_15m": peak_count(all_shares, 15 * MINUTE_MS),
            "peak_shares_5m_exact": peak_count(exact_shares, 5 * MINUTE_MS),
            "peak_shares_15m_exact": peak_count(exact_shares, 15 * MINUTE_MS),
            "peak_posts_5m": peak_count(all_posts, 5 * MINUTE_MS),
            "peak_posts_15m": peak_count(all_posts, 15 * MINUTE_MS),
        }
        severity = None
        robust = True
        if banked:
            severity = severity_for(peaks["peak_shares_5m_exact"], peaks["peak_shares_15m_exact"])
            robust = (
                severity
                == severity_for(peaks["peak_shares_5m"], peaks["peak_shares_15m"])
                == severity_for(peaks["peak_posts_5m"], peaks["peak_posts_15m"])
            )
        entry = p.entry
        self.cascades.append(
            {
                "name": p.name,
                "kind": p.kind,
                "banked": banked,
                "entry": None if entry is None else asdict(entry),
                "cluster_id": None if entry is None else entry.cluster_id,
                "pdq": p.pdq,
                "pdq_quality": p.pdq_quality,
                "md5": p.md5,
                "video": p.video is not None,
                "start_ms": t0,
                "root_post_ids": exact_roots,
                "near_duplicates": near_roots,
                "shares": len(share_ts),
                "uploads": len(upload_ts),
                "takedowns": takedowns,
                "unique_users": len(users),
                "depth": depth,
                **peaks,
                "expected_severity": severity,
                "severity_robust": robust,
            }
        )

    # ----- noise ----------------------------------------------------------------

    def _plant_noise(self) -> None:
        """Orphans, cycles and malformed lines, at random arrival times."""
        sc, rng = self.sc, self.rng
        span = self.end_ms - sc.start_ms

        def when() -> int:
            return sc.start_ms + rng.randrange(span)

        def user() -> tuple[str, int]:
            u = self._user()
            return self._user_ids[u], self._followers[u]

        for i in range(sc.scaled(sc.orphans)):
            t = when()
            uid, f = user()
            gone = f"p{self._tag}gone{i:04x}"
            pid = self._post_id()
            self._push(self._event("share", t, pid, uid, gone, f), t, creates=pid, parent=gone)
            self.counts["orphans"] += 1
        for _ in range(sc.scaled(sc.cycles)):
            t = when()
            a, b = self._post_id(), self._post_id()
            for post, parent, dt in ((a, b, 0), (b, a, 2_000)):
                uid, f = user()
                self._push(self._event("share", t + dt, post, uid, parent, f), t + dt)
            self.counts["cycles"] += 1
        for _ in range(sc.scaled(sc.malformed_per_kind)):
            for reason in MALFORMED_KINDS:
                t = when()
                uid, f = user()
                content: dict[str, Any] = {
                    "pdq": f"{rng.getrandbits(256):064x}",
                    "pdq_quality": self._quality(),
                    "md5": self._md5(),
                }
                ev = self._event("upload", t, self._post_id(), uid, None, f, content)
                if reason == "not_json":
                    line = _dumps(ev)
                    line = line[: rng.randint(10, len(line) - 10)]
                elif reason == "bad_hex":
                    content["pdq"] = "zz" + content["pdq"][2:]
                elif reason == "bad_hash_length":
                    content["md5"] = content["md5"][: rng.randint(20, 31)]
                elif reason == "missing_field":
                    del ev[rng.choice(("event_id", "post_id", "user_id"))]
                elif reason == "unknown_type":
                    ev["type"] = rng.choice(("like", "comment", "view"))
                elif reason == "self_reshare":
                    ev = self._event("share", t, ev["post_id"], uid, ev["post_id"], f)
                elif reason == "bad_ts":
                    ev["ts"] = t // 1000  # epoch seconds: a producer's unit mistake
                if reason != "not_json":
                    line = _dumps(ev)
                self._push_raw(t, line, reason)

    # ----- the run ----------------------------------------------------------------

    def lines(self) -> Iterator[bytes]:
        sc, rng = self.sc, self.rng
        span = self.end_ms - sc.start_ms
        self._very_late_at = sorted(
            (
                sc.start_ms + rng.randrange(max(1, span - 5 * MINUTE_MS))
                for _ in range(sc.scaled(sc.very_late))
            ),
            reverse=True,
        )
        self._plant_noise()
        plants = sorted(self._plants, key=lambda p: p.start_ms)
        rate = sc.background_per_minute * sc.scale / MINUTE_MS
        next_bg = sc.start_ms + (rng.expovariate(rate) if rate > 0 else span)
        i = 0
        while True:
            if i < len(plants) and plants[i].start_ms <= next_bg:
                start = plants[i].start_ms
                yield from self._flush(start)
                self._planted(plants[i])
                i += 1
            elif next_bg < self.end_ms:
                t0 = int(next_bg)
                yield from self._flush(t0)
                self._background(t0)
                next_bg += rng.expovariate(rate)
            else:
                break
        yield from self._flush(None)
        self._finish()

    def _finish(self) -> None:
        counts = self.counts
        order = {p.name: i for i, p in enumerate(self._plants)}
        cascades = sorted(self.cascades, key=lambda c: order[c["name"]])

        def names(*kinds: str) -> list[str]:
            return [c["name"] for c in cascades if c["kind"] in kinds]

        self.truth = {
            "scenario": asdict(self.sc),
            "lines": counts["lines"],
            "events": {k: counts[k] for k in ("upload", "share", "takedown")},
            "malformed": {k: self.malformed[k] for k in MALFORMED_KINDS if self.malformed[k]},
            "duplicates": counts["duplicates"],
            "late": counts["late"],
            "very_late": counts["very_late"],
            "shares_before_parent": counts["shares_before_parent"],
            "orphans": counts["orphans"],
            "cycles": counts["cycles"],
            "background": {
                "cascades": sum(self.bg_sizes.values()),
                "sizes": [[size, n] for size, n in sorted(self.bg_sizes.items())],
            },
            "bank_entries": len(self.bank),
            "cascades": cascades,
            "fast_banked": names("critical", "high", "warning"),
            "fast_unbanked": names("unbanked"),
            "slow_banked": names("slow"),
        }
