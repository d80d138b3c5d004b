"""Small builders of share events for tests: readable cascades in a few lines."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def pdq_hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flip(pdq: str, bits: int, rng: random.Random) -> str:
    """``pdq`` with ``bits`` distinct bits flipped: a near-duplicate at exactly that distance."""
    v = int(pdq, 16)
    for b in rng.sample(range(256), bits):
        v ^= 1 << b
    return f"{v:064x}"


@dataclass
class Traffic:
    """Builds events; ``lines()`` gives JSON lines in the order they were made."""

    rng: random.Random = field(default_factory=lambda: random.Random(1))
    events: list[dict[str, object]] = field(default_factory=list)
    _n: int = 0

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def upload(
        self,
        ts: int,
        *,
        pdq: str | None = None,
        md5: str | None = None,
        quality: int = 90,
        user: str = "uploader",
        post: str | None = None,
        vpdq: list[str] | None = None,
    ) -> str:
        post = post or self._id("p")
        content: dict[str, object] = {}
        if pdq:
            content["pdq"] = pdq
            content["pdq_quality"] = quality
        if md5:
            content["md5"] = md5
        if vpdq:
            content["vpdq"] = vpdq
        self.events.append(
            {
                "event_id": self._id("e"),
                "type": "upload",
                "ts": ts,
                "post_id": post,
                "user_id": user,
                "content": content,
            }
        )
        return post

    def share(
        self,
        ts: int,
        parent: str,
        *,
        user: str | None = None,
        post: str | None = None,
        followers: int = 100,
    ) -> str:
        post = post or self._id("p")
        self.events.append(
            {
                "event_id": self._id("e"),
                "type": "share",
                "ts": ts,
                "post_id": post,
                "parent_post_id": parent,
                "user_id": user or f"user{self.rng.randrange(10_000)}",
                "followers": followers,
            }
        )
        return post

    def takedown(self, ts: int, post: str) -> None:
        self.events.append(
            {
                "event_id": self._id("e"),
                "type": "takedown",
                "ts": ts,
                "post_id": post,
                "user_id": "moderator",
            }
        )

    def burst(self, root: str, start: int, count: int, every_ms: int) -> list[str]:
        """``count`` reshares of a growing tree under ``root``, one every ``every_ms``."""
        posts = [root]
        for i in range(count):
            parent = posts[self.rng.randrange(len(posts))]
            posts.append(self.share(start + i * every_ms, parent))
        return posts[1:]

    def lines(self) -> list[bytes]:
        return [orjson.dumps(e) for e in self.events]
