"""Who may see the views and who may act: bearer tokens with a role, and same-site checks.

The views show where harmful content spreads (pseudonyms only, but still
sensitive) and let a reviewer change the banks, so every view needs a token
and every action a *reviewer's* token. Tokens come from
``VIRALWATCH_WEB_TOKENS`` (``role:token`` pairs separated by ``,``) and from
a file of the same form (one pair a line or several per line, ``#``
comments), for secrets Kubernetes mounts; the settings and the runtime read
those, this module only parses and decides.

A token is compared with every known token in constant time
(:func:`hmac.compare_digest`, and never an early exit), so the time an
answer takes says nothing about how much of a guess was right. A person is
named in the audit trail (:attr:`Grant.who`) by the name given with the
role (``reviewer@alice:<token>``), else by a fingerprint of the token:
never by the token.

Actions are ``POST`` only and must not come from another site (a page
elsewhere making the reviewer's browser post): :func:`cross_site` reads the
``Sec-Fetch-Site`` and ``Origin`` headers browsers send.

>>> tokens = AccessTokens.parse("viewer:look-only-1234, reviewer:may-act-5678")
>>> tokens.grant("may-act-5678").role, tokens.grant("look-only-1234").may_act
('reviewer', False)
>>> tokens.grant("guess") is None
True
>>> AccessTokens.parse("reviewer@alice:a-long-token").grant("a-long-token").who
'alice'
>>> "may-act" in repr(tokens)
False
>>> AccessTokens.parse("admin:x1234567")
Traceback (most recent call last):
ValueError: web tokens: entry 1: role must be viewer or reviewer, not 'admin'
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

Role = Literal["viewer", "reviewer"]
ROLES: Final = ("viewer", "reviewer")
#: A token shorter than this is refused: it could be guessed.
MIN_TOKEN_LEN: Final = 8
#: The cookie a browser keeps the token in after ``/login`` (``HttpOnly``, ``SameSite=Strict``).
COOKIE: Final = "viralwatch_token"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows, and who it names (a fingerprint, never the token)."""

    role: Role
    who: str

    @property
    def may_act(self) -> bool:
        return self.role == "reviewer"


def fingerprint(token: str) -> str:
    """A short, stable name for a token in logs and the audit trail.

    >>> fingerprint("may-act-5678")
    'tok-306c076c'
    """
    return "tok-" + hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class AccessTokens:
    """The known tokens and their roles. Empty: nobody gets in (every view answers 401)."""

    entries: tuple[tuple[Role, bytes, str], ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, *texts: str) -> AccessTokens:
        """Tokens from ``role:token`` pairs (``,`` or new lines between them, ``#`` comments).

        >>> len(AccessTokens.parse("viewer:abcdefgh\\n# a comment\\nreviewer:ijklmnop,"))
        2
        >>> AccessTokens.parse("viewer:short")
        Traceback (most recent call last):
        ValueError: web tokens: entry 1: a token needs at least 8 characters
        """
        entries: list[tuple[Role, bytes, str]] = []
        n = 0
        for text in texts:
            for line in text.splitlines():
                line = line.split("#", 1)[0]
                for part in line.split(","):
                    part = part.strip()
                    if not part:
                        continue
                    n += 1
                    role, sep, token = part.partition(":")
                    role, _, name = role.partition("@")
                    role, name, token = role.strip().lower(), name.strip(), token.strip()
                    if not sep:
                        raise ValueError(f"web tokens: entry {n}: expected role:token")
                    if role not in ROLES:
                        raise ValueError(
                            f"web tokens: entry {n}: role must be viewer or reviewer, not {role!r}"
                        )
                    if len(token) < MIN_TOKEN_LEN:
                        raise ValueError(
                            f"web tokens: entry {n}: a token needs at least "
                            f"{MIN_TOKEN_LEN} characters"
                        )
                    if any(c.isspace() or c in ';"\\' for c in token):
                        raise ValueError(
                            f"web tokens: entry {n}: a token has no spaces, ';', '\"' or '\\'"
                        )
                    if name and not all(c.isalnum() or c in "._-" for c in name):
                        raise ValueError(
                            f"web tokens: entry {n}: a name has letters, digits, '.', '_', '-'"
                        )
                    who = name or fingerprint(token)
                    entries.append((role, token.encode(), who))  # type: ignore[arg-type]
        return cls(tuple(entries))

    def __len__(self) -> int:
        return len(self.entries)

    def __add__(self, other: AccessTokens) -> AccessTokens:
        return AccessTokens(self.entries + other.entries)

    def grant(self, token: str | None) -> Grant | None:
        """The grant of ``token``; ``None`` when it is not one of ours.

        Every known token is compared, in constant time each, whatever matched:
        the time taken does not depend on which token (or how much of one) was right.
        A token known under both roles is a reviewer's.
        """
        if not token:
            return None
        given = token.encode()
        found: Grant | None = None
        for role, known, who in self.entries:
            if hmac.compare_digest(given, known) and (found is None or role == "reviewer"):
                found = Grant(role, who)
        return found


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (header names any case).

    >>> bearer({"authorization": "Bearer abc"}), bearer({"Authorization": "Basic abc"})
    ('abc', None)
    """
    value = header(headers, "Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def cookie(headers: Mapping[str, str], name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in the ``Cookie`` header, if any.

    >>> cookie({"Cookie": "a=1; viralwatch_token=abc"})
    'abc'
    """
    value = header(headers, "Cookie")
    if not value:
        return None
    for part in value.split(";"):
        key, sep, val = part.strip().partition("=")
        if sep and key == name:
            return val.strip() or None
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever the case of its name (``None`` when absent)."""
    value = headers.get(name)
    if value is not None:
        return value
    low = name.lower()
    for key, val in headers.items():
        if key.lower() == low:
            return val
    return None


def cross_site(headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request must be refused as cross-site; ``None`` when it may go on.

    A browser says where a request comes from: ``Sec-Fetch-Site`` (every
    current browser) and ``Origin`` (on every ``POST``). A request from a
    page of another site (or an opaque ``null`` origin) is refused; one
    whose origin is this very host (the ``Host`` header the browser sent) or
    typed by the user (``none``) goes on. A client that sends neither
    header is not a browser (``curl``, a script with a bearer token), and a
    cross-site attack needs a browser to carry someone's credentials.

    >>> cross_site({"Host": "vw:6066", "Origin": "http://vw:6066", "Sec-Fetch-Site": "same-origin"})
    >>> cross_site({"Host": "vw:6066", "Origin": "https://evil.example"})
    'cross-site request refused: Origin https://evil.example is not this site (vw:6066)'
    >>> cross_site({"Host": "vw:6066", "Sec-Fetch-Site": "cross-site"})
    'cross-site request refused: Sec-Fetch-Site is cross-site'
    >>> cross_site({})
    """
    site = header(headers, "Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"cross-site request refused: Sec-Fetch-Site is {site.strip()}"
    origin = header(headers, "Origin")
    if origin is None:
        return None
    host = (header(headers, "Host") or "").strip().lower()
    origin = origin.strip()
    scheme, sep, rest = origin.partition("://")
    netloc = rest.split("/", 1)[0].lower() if sep and scheme.lower() in ("http", "https") else ""
    if not netloc or netloc != host:
        return f"cross-site request refused: Origin {origin} is not this site ({host})"
    return None


def same_site_path(target: str | None, default: str = "/emerging") -> str:
    """A path on this site to send a browser back to (never another site's URL).

    >>> same_site_path("/cascade/b-1"), same_site_path("https://evil.example/")
    ('/cascade/b-1', '/emerging')
    >>> same_site_path("//evil.example/x")
    '/emerging'
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 32 for c in target):
        return default
    return target
