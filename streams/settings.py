"""Settings: one frozen object, built once from flags and ``VIRALWATCH_*`` variables.

Every knob of a worker is here, with its default, so the README's table and
the code cannot disagree. Flags win over the environment, the environment
over the defaults: ``Settings.from_env(**flags)`` ignores flags left at
``None``. Secrets (the pseudonym key, the SASL password) come from the
environment only and never appear in ``repr``.

>>> s = Settings.from_env({"VIRALWATCH_PARTITIONS": "8", "VIRALWATCH_LATENESS": "5s"},
...                       topic_prefix="test.")
>>> s.partitions, s.lateness_ms, s.topic("shares")
(8, 5000, 'test.shares')
>>> Settings.from_env({"VIRALWATCH_PARTITIONS": "zero"})
Traceback (most recent call last):
ValueError: VIRALWATCH_PARTITIONS: not an integer: 'zero'
>>> Settings.from_env({"VIRALWATCH_METRICS_PORT": "9108"}).http_port   # a deprecated alias
9108
>>> Settings.from_env({"VIRALWATCH_HTTP_PORT": "99999"})
Traceback (most recent call last):
ValueError: VIRALWATCH_HTTP_PORT: not a port (0..65535): '99999'
>>> "hunter2" in repr(Settings(security=KafkaSecurity("SASL_SSL", "PLAIN", "u", "hunter2")))
False
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from streams.access import AccessTokens
from streams.alerts import parse_duration
from streams.wire import LATEST_WIRE, WireVersion

#: Makes pseudonyms reproducible in demos and tests. Production sets
#: ``VIRALWATCH_PSEUDONYM_KEY``; commands warn when it is missing.
DEV_PSEUDONYM_KEY: Final = b"viralwatch-development-key-not-secret"

#: The topics of the pipeline, by their name after the prefix.
TOPICS: Final = (
    "shares",
    "resolve",
    "clusters",
    "alerts",
    "actions",
    "deadletter",
    "bank",
    "stats",
    "audit",
)

#: The worker's state-log tables (``streams.runtime.worker``). Faust names each one's
#: changelog topic ``<app_id>-<table>-changelog`` (see :meth:`Settings.state_log_changelogs`).
STATE_LOG_TABLES: Final = ("resolve-log", "cluster-log")

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach a secured Kafka cluster (SASL and TLS), passed through from the environment."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"Kafka security protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"not {self.protocol!r}"
            )
        if self.sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"SASL mechanism must be one of {', '.join(SASL_MECHANISMS)}, "
                    f"not {self.sasl_mechanism!r}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("SASL needs VIRALWATCH_KAFKA_SASL_USERNAME and _PASSWORD")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context (system CAs, or the configured CA file), ``None`` without TLS."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx

    def kafka_python_config(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients.

        >>> KafkaSecurity().kafka_python_config()
        {'security_protocol': 'PLAINTEXT'}
        """
        out = self._common_config()
        if self.tls:
            out.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
            )
        return out

    def aiokafka_config(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (TLS as a context, not files)."""
        out = self._common_config()
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        return out

    def _common_config(self) -> dict[str, Any]:
        """The protocol and SASL keywords, which both clients name alike."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return out


@dataclass(frozen=True)
class Settings:
    """A worker's settings. Build with :meth:`from_env`; pass the one object down.

    Times are milliseconds of event time unless named ``_s`` (seconds of
    wall-clock time).
    """

    #: ``kafka://HOST:PORT`` (several separated by ``;``); ``None``: none configured (a
    #: worker then refuses to start, unless told ``embedded_broker``).
    broker: str | None = None
    #: With no broker configured, start the bundled in-memory broker (``demo``, a laptop);
    #: never in production: everything it holds is lost when the command ends.
    embedded_broker: bool = False
    #: Prefix of every topic name, so several deployments can share a cluster.
    topic_prefix: str = "viralwatch."
    #: Kafka consumer group and Faust application id.
    app_id: str = "viralwatch"
    #: Partitions of every topic the worker creates (its unit of scale-out).
    partitions: int = 4
    #: Replication factor of the topics the worker creates.
    replicas: int = 1
    #: Standby copies of each table partition kept by other workers: a worker taking a
    #: partition over has its table already, instead of reading its changelog then. Off
    #: by default: they cost CPU all the time (every worker applies the others'
    #: changelogs) and bought no faster takeover where measured (docs/performance.md,
    #: "Standby replicas").
    standby_replicas: int = 0
    #: Bank CSV files loaded at start (live updates come on the ``bank`` topic).
    bank_files: tuple[Path, ...] = ()
    #: Alert policy TOML; ``None``: the documented defaults (``streams/policy.toml``).
    policy_file: Path | None = None
    #: Per-bank settings TOML (thresholds, vPDQ percentages; ``streams/bank_settings.py``).
    bank_settings_file: Path | None = None
    #: Key of the user pseudonyms on alerts.
    pseudonym_key: bytes = field(default=DEV_PSEUDONYM_KEY, repr=False)
    #: Allowed lateness: how far behind its partition's newest event an event may come
    #: and still be applied in event-time order (later ones are applied and counted late).
    lateness_ms: int = 60_000
    #: How long (event time) a reshare waits for its parent before it is dead-lettered.
    hold_ms: int = 1_800_000
    #: Most reshares held waiting for their parents, per worker.
    max_held: int = 100_000
    #: Most events waiting for the watermark in the clusters partitions a worker holds
    #: before its ``shares`` reader reads only its slowest partition (backpressure: nothing
    #: is refused; see :func:`streams.runtime.shares_reader.held_back`).
    max_pending: int = 50_000
    #: A cluster with no event for this long (event time) is evicted from memory.
    idle_ms: int = 3_600_000
    #: A partition's log table is cut back to a snapshot once this many bytes (and at
    #: least as many as the last snapshot kept) were written to it since the last cut.
    log_compact_bytes: int = 16 * 1024 * 1024
    #: ... and once at least this share of it is garbage (events of evicted clusters, posts
    #: forgotten, duplicates): a compaction that would keep nearly everything is skipped.
    #: 0: the bytes alone decide (a compaction each time the log doubles).
    log_compact_garbage: float = 0.5
    #: Topic configs of the state logs' changelog topics (Faust creates them compacted),
    #: ``key=value`` pairs separated by ``,``: e.g. ``segment.ms=3600000`` for how soon
    #: Kafka's log cleaner may compact them. Empty: the broker's defaults.
    changelog_config: str = ""
    #: An input partition silent for this long (wall clock) stops holding event time back;
    #: when every partition is silent, everything held is applied.
    partition_idle_s: float = 2.0
    #: Most records handled in one batch, and how long to wait to fill one. A batch has
    #: fixed costs (its envelopes, their records on the internal topics, a checkpoint):
    #: two workers from a backlog spent about 30 us an event at 4,000 against 35-46 at
    #: 1,000. The shares reader reads 1,000 at most when a whole batch could overflow a
    #: held store (:func:`streams.runtime.shares_reader.read_limit`); a live stream's
    #: batches are what came in ``batch_wait_s``, far fewer.
    batch_size: int = 4_000
    batch_wait_s: float = 0.05
    #: How long the worker's producer waits to fill a request before sending it. Every
    #: stage hands records on through Kafka; sent one request at a time, at a live rate,
    #: the requests' system calls cost more CPU than the stages (``bench/bench_pipeline.py``
    #: reports CPU per event). A few ms per hop is little beside the latency target.
    linger_s: float = 0.005
    #: The wire version this worker writes on the ``resolve`` and ``clusters`` topics (it
    #: reads every one up to the latest): 1 during a rolling update from a release that
    #: wrote version 1, whose workers dead-letter version 2's records (README, "Rolling
    #: updates"); the latest once none of them runs.
    wire_version: WireVersion = LATEST_WIRE
    #: How long a worker's (or ``produce``'s) start waits for the configured broker to
    #: accept a connection before it says none answers there (exit status 2): one starting
    #: beside it (a compose file, pods on Kubernetes) has that long to come up.
    broker_wait_s: float = 5.0
    #: Kafka consumer group session timeout and heartbeat.
    session_timeout_s: float = 6.0
    heartbeat_s: float = 1.0
    #: Interface of the worker's HTTP server (``/metrics``, ``/livez``, ``/readyz``): loopback
    #: unless told otherwise; the image sets ``0.0.0.0`` so Prometheus and probes reach it.
    http_host: str = "127.0.0.1"
    #: Port of the worker's HTTP server (0: any free port); ``None``: no server.
    http_port: int | None = None
    #: The URL other workers reach this one's HTTP port at (a cascade view asked of one
    #: worker is forwarded to the worker holding the cluster); ``None``: the interface it
    #: listens on, or the host name when that is every interface. Kubernetes: the pod IP.
    http_advertise: str | None = None
    #: Tokens of the views, ``role:token`` (roles ``viewer``, ``reviewer``; ``role@name:token``
    #: names the holder in the audit trail), separated by ``,``. A secret: never printed.
    web_tokens: str = field(default="", repr=False)
    #: A file of such tokens (one or more a line), re-read when it changes: a mounted Secret.
    web_tokens_file: Path | None = None
    #: Alertmanager base URL to post alerts to; ``None``: none.
    alertmanager_url: str | None = None
    #: How often every firing alert is posted to Alertmanager again (it resolves an alert
    #: not posted again within 4 times this): the receiver's ``resolve_timeout`` logic.
    alertmanager_repost_s: float = 60.0
    #: Webhook URL to POST alerts to (signed with ``VIRALWATCH_WEBHOOK_SECRET``); ``None``: none.
    webhook_url: str | None = None
    #: Where the worker keeps its local files.
    data_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "viralwatch")
    #: The broker is the bundled one: apply its workarounds (see ``docs``/BROKER notes).
    local_broker: bool = False
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        if self.broker is not None:
            parse_bootstrap(self.broker)  # raises ValueError with the reason
        for name in (
            "partitions",
            "replicas",
            "batch_size",
            "max_held",
            "max_pending",
            "log_compact_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("lateness_ms", "hold_ms", "idle_ms", "standby_replicas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        for name in ("partition_idle_s", "batch_wait_s", "linger_s", "heartbeat_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative")
        positive_seconds(str(self.broker_wait_s), "broker_wait_s")  # raises ValueError
        if self.alertmanager_repost_s <= 0:
            raise ValueError("alertmanager_repost_s must be more than 0")
        if not 0.0 <= self.log_compact_garbage < 1.0:
            raise ValueError("log_compact_garbage must be at least 0 and under 1")
        _ = self.changelog_configs  # raises ValueError with the reason
        if self.session_timeout_s <= self.heartbeat_s:
            raise ValueError("session_timeout_s must be longer than heartbeat_s")
        if not self.pseudonym_key:
            raise ValueError("the pseudonym key must not be empty")
        if not self.app_id or any(c.isspace() for c in self.app_id):
            raise ValueError("app_id must be a non-empty name without spaces")
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(self.topic_prefix) <= allowed:
            raise ValueError("topic_prefix may use only letters, digits, '.', '_' and '-'")
        try:
            if self.http_port is not None:
                parse_port(str(self.http_port))
            parse_host(self.http_host)
            if self.http_advertise is not None:
                parse_http_url(self.http_advertise)
        except ValueError as exc:
            raise ValueError(f"http settings: {exc}") from None
        if self.alertmanager_url is not None:
            parse_post_url("Alertmanager", self.alertmanager_url)
        if self.webhook_url is not None:
            parse_post_url("webhook", self.webhook_url)
        AccessTokens.parse(self.web_tokens)  # raises ValueError naming the bad entry
        if not isinstance(self.wire_version, WireVersion):
            raise ValueError(f"wire_version must be a WireVersion, not {self.wire_version!r}")

    # -- derived ------------------------------------------------------------

    @property
    def changelog_configs(self) -> dict[str, str]:
        """:attr:`changelog_config` as a mapping (validated when the settings are made).

        >>> s = Settings(changelog_config="segment.ms=100, min.cleanable.dirty.ratio=0.01")
        >>> s.changelog_configs
        {'segment.ms': '100', 'min.cleanable.dirty.ratio': '0.01'}
        >>> Settings(changelog_config="segment.ms")
        Traceback (most recent call last):
        ValueError: changelog_config: 'segment.ms' is not key=value
        """
        out: dict[str, str] = {}
        for part in self.changelog_config.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value or any(c.isspace() for c in key + value):
                raise ValueError(f"changelog_config: {part.strip()!r} is not key=value")
            out[key] = value
        return out

    @property
    def state_log_configs(self) -> dict[str, str]:
        """The topic configs of the state logs' changelog topics: compacted (a log is cut
        back by deleting its older keys: tombstones), and :attr:`changelog_config` on top.

        The one definition: the worker creates these topics with it before Faust starts
        (:meth:`state_log_changelogs`), and gives Faust's tables the same, so whichever
        creates a topic first creates the same one.

        >>> Settings(changelog_config="segment.ms=100").state_log_configs
        {'cleanup.policy': 'compact', 'segment.ms': '100'}
        """
        return {"cleanup.policy": "compact", **self.changelog_configs}

    def state_log_changelogs(self) -> dict[str, dict[str, str]]:
        """Each state log's changelog topic (as Faust names it) and its topic configs.

        >>> list(Settings(app_id="vw").state_log_changelogs())
        ['vw-resolve-log-changelog', 'vw-cluster-log-changelog']
        """
        configs = self.state_log_configs
        return {f"{self.app_id}-{table}-changelog": configs for table in STATE_LOG_TABLES}

    def topic(self, name: str) -> str:
        """A topic's full name: the prefix and ``name``."""
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap(self) -> list[str]:
        """``host:port`` list for kafka-python and aiokafka; ``ValueError`` without a broker."""
        if self.broker is None:
            raise ValueError("no broker is configured")
        return parse_bootstrap(self.broker)

    @property
    def uses_dev_key(self) -> bool:
        return self.pseudonym_key == DEV_PSEUDONYM_KEY

    def to_env(self) -> dict[str, str]:
        """The ``VIRALWATCH_*`` variables that configure a worker process like these settings.

        For the processes this project starts itself (the demo, tests,
        benchmarks); secrets are not included: they stay in the environment.

        >>> env = Settings(partitions=8, lateness_ms=5000, batch_wait_s=0.02).to_env()
        >>> Settings.from_env(env).partitions, env["VIRALWATCH_LATENESS"]
        (8, '5000ms')
        >>> Settings.from_env(env) == Settings(partitions=8, lateness_ms=5000, batch_wait_s=0.02)
        True
        """
        env: dict[str, str] = {}
        for var, (name, parse) in _ENV.items():
            value = getattr(self, name)
            if value is None or parse in (_bytes, _secret):  # unset, or a secret
                continue
            if parse is _paths:
                env[var] = os.pathsep.join(str(p) for p in value)
            elif parse is _bool:
                env[var] = "1" if value else "0"
            elif parse is parse_duration:
                env[var] = f"{value}ms"
            else:
                env[var] = str(value)
        return env

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # -- construction -------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``VIRALWATCH_*`` variables, then ``overrides`` (``None`` ones ignored).

        Raises ``ValueError`` naming the variable of the first bad value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, (name, convert) in _ENV.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = convert(raw.strip())
            except ValueError as exc:
                raise ValueError(f"{var}: {exc}") from None
        sec = {}
        for var, name in _SECURITY_ENV.items():
            raw = env.get(var)
            if raw:
                sec[name] = raw if name == "sasl_password" else raw.strip()
        if "protocol" in sec:
            sec["protocol"] = sec["protocol"].upper()
        if "sasl_mechanism" in sec:
            sec["sasl_mechanism"] = sec["sasl_mechanism"].upper()
        if sec:
            values["security"] = KafkaSecurity(**sec)
        for old, new in DEPRECATED_ENV.items():
            _alias(env, values, old, new)
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise TypeError(f"Settings has no field {key!r}")
            if value is not None:
                values[key] = value
        if "bank_files" in values:
            values["bank_files"] = tuple(Path(p) for p in values["bank_files"])
        for key in ("policy_file", "data_dir", "web_tokens_file", "bank_settings_file"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if isinstance(values.get("pseudonym_key"), str):
            values["pseudonym_key"] = values["pseudonym_key"].encode()
        for key in ("lateness_ms", "hold_ms", "idle_ms"):
            if isinstance(values.get(key), str):
                values[key] = parse_duration(values[key])
        return cls(**values)


#: Kafka's well-known port, used when a broker address names no port.
DEFAULT_KAFKA_PORT: Final = 9092


def parse_bootstrap(url: str) -> list[str]:
    """``host:port`` strings from ``kafka://host:port`` URLs separated by ``;`` or ``,``.

    Raises ``ValueError`` for an empty list, another scheme, or a bad port.

    >>> parse_bootstrap("h1:1,h2:2")
    ['h1:1', 'h2:2']
    >>> parse_bootstrap("http://h:1")
    Traceback (most recent call last):
    ValueError: broker 'http://h:1': the scheme must be kafka://
    """
    out = []
    for part in url.replace(",", ";").split(";"):
        text = part.strip()
        if not text:
            continue
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme.lower() != "kafka":
                raise ValueError(f"broker {part.strip()!r}: the scheme must be kafka://")
        text = text.rstrip("/")
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, str(DEFAULT_KAFKA_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"broker {part.strip()!r}: expected kafka://HOST:PORT")
        out.append(f"{host}:{int(port)}")
    if not out:
        raise ValueError("the broker address is empty")
    return out


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _seconds(text: str) -> float:
    """Seconds from ``"2s"``, ``"500ms"`` or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        return parse_duration(text) / 1000


def positive_seconds(text: str, what: str = "a wait") -> float:
    """Seconds, as :func:`_seconds` reads them, more than 0 and finite (a wait that ends).

    >>> positive_seconds("2m"), positive_seconds("1.5"), positive_seconds("500ms")
    (120.0, 1.5, 0.5)
    >>> positive_seconds("0")
    Traceback (most recent call last):
    ValueError: a wait must be more than 0 seconds and finite, not '0'
    >>> positive_seconds("inf", "broker_wait_s")
    Traceback (most recent call last):
    ValueError: broker_wait_s must be more than 0 seconds and finite, not 'inf'
    """
    seconds = _seconds(text)
    if not 0 < seconds < float("inf"):  # NaN too
        raise ValueError(f"{what} must be more than 0 seconds and finite, not {text!r}")
    return seconds


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in text.split(os.pathsep) if p.strip())


def _str(text: str) -> str:
    return text


def parse_port(text: str) -> int:
    """A TCP port to listen on: 0 (any free port) to 65535.

    >>> parse_port("6066"), parse_port("0")
    (6066, 0)
    >>> parse_port("70000")
    Traceback (most recent call last):
    ValueError: not a port (0..65535): '70000'
    """
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port (0..65535): {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"not a port (0..65535): {text!r}")
    return port


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_host(text: str) -> str:
    """An interface to listen on: an IP address (``0.0.0.0``, ``::``) or a host name.

    >>> parse_host("0.0.0.0"), parse_host("::1"), parse_host("worker-0.local")
    ('0.0.0.0', '::1', 'worker-0.local')
    >>> parse_host("http://0.0.0.0:6066")
    Traceback (most recent call last):
    ValueError: not an IP address or host name: 'http://0.0.0.0:6066'
    """
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise ValueError(f"not an IP address or host name: {text!r}")
    return text


def _alias(env: Mapping[str, str], values: dict[str, Any], old: str, new: str) -> None:
    """Read deprecated variable ``old`` as ``new`` when ``new`` is not set; refuse a conflict."""
    raw = (env.get(old) or "").strip()
    if not raw:
        return
    name, convert = _ENV[new]
    try:
        value = convert(raw)
    except ValueError as exc:
        raise ValueError(f"{old}: {exc}") from None
    if name in values and values[name] != value:
        others = [new, *(o for o, n in DEPRECATED_ENV.items() if n == new and o != old)]
        other = next(v for v in others if (env.get(v) or "").strip())
        raise ValueError(
            f"{old}={raw} (deprecated, read as {new}) disagrees with {other}={env[other].strip()}: "
            f"set {new} only"
        )
    values[name] = value


def deprecated_in(env: Mapping[str, str] | None = None) -> list[str]:
    """One line for each deprecated variable set in ``env``, saying what replaces it.

    >>> deprecated_in({"VIRALWATCH_METRICS_PORT": "9108"})
    ['VIRALWATCH_METRICS_PORT is deprecated: use VIRALWATCH_HTTP_PORT']
    """
    env = os.environ if env is None else env
    return [
        f"{old} is deprecated: use {new}"
        for old, new in DEPRECATED_ENV.items()
        if (env.get(old) or "").strip()
    ]


def _bytes(text: str) -> bytes:
    return text.encode()


def _secret(text: str) -> str:
    return text


def parse_http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (and no path): how a worker is reached.

    >>> parse_http_url("http://10.1.2.3:6066/")
    'http://10.1.2.3:6066'
    >>> parse_http_url("10.1.2.3:6066")
    Traceback (most recent call last):
    ValueError: not an http:// URL of a host: '10.1.2.3:6066'
    """
    scheme, sep, rest = text.strip().partition("://")
    rest = rest.rstrip("/")
    if not sep or scheme.lower() not in ("http", "https") or not rest or "/" in rest:
        raise ValueError(f"not an http:// URL of a host: {text!r}")
    return f"{scheme.lower()}://{rest}"


def parse_post_url(what: str, text: str) -> str:
    """A URL alerts can be POSTed to (``what``'s: Alertmanager's, a webhook's): http(s), a
    host, a port that is a number. Checked where it is given: the HTTP client said a bad
    one only at the first post, and for ever after (no host: a retry every backoff; a port
    that is no number: a traceback each round).

    >>> parse_post_url("webhook", "https://hooks.example/T1/B2?x=1")
    'https://hooks.example/T1/B2?x=1'
    >>> parse_post_url("webhook", "http:///alerts")
    Traceback (most recent call last):
    ValueError: webhook URL 'http:///alerts' names no host
    >>> parse_post_url("Alertmanager", "http://am:x")
    Traceback (most recent call last):
    ValueError: Alertmanager URL 'http://am:x': Port could not be cast to integer value as 'x'
    """
    import urllib.parse

    split = urllib.parse.urlsplit(text)
    if split.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} URL must be http(s)://..., not {text!r}")
    try:
        split.port  # noqa: B018 (it raises for a port that is no number, or out of range)
    except ValueError as exc:
        raise ValueError(f"{what} URL {text!r}: {exc}") from None
    if not split.hostname:
        raise ValueError(f"{what} URL {text!r} names no host")
    return text


_ENV: Final[dict[str, tuple[str, Any]]] = {
    "VIRALWATCH_BROKER": ("broker", _str),
    "VIRALWATCH_TOPIC_PREFIX": ("topic_prefix", _str),
    "VIRALWATCH_APP_ID": ("app_id", _str),
    "VIRALWATCH_PARTITIONS": ("partitions", _int),
    "VIRALWATCH_REPLICAS": ("replicas", _int),
    "VIRALWATCH_STANDBY_REPLICAS": ("standby_replicas", _int),
    "VIRALWATCH_BANKS": ("bank_files", _paths),
    "VIRALWATCH_POLICY": ("policy_file", Path),
    "VIRALWATCH_BANK_SETTINGS": ("bank_settings_file", Path),
    "VIRALWATCH_PSEUDONYM_KEY": ("pseudonym_key", _bytes),
    "VIRALWATCH_LATENESS": ("lateness_ms", parse_duration),
    "VIRALWATCH_ORPHAN_HOLD": ("hold_ms", parse_duration),
    "VIRALWATCH_MAX_HELD": ("max_held", _int),
    "VIRALWATCH_MAX_PENDING": ("max_pending", _int),
    "VIRALWATCH_IDLE_EVICT": ("idle_ms", parse_duration),
    "VIRALWATCH_LOG_COMPACT_BYTES": ("log_compact_bytes", _int),
    "VIRALWATCH_LOG_COMPACT_GARBAGE": ("log_compact_garbage", float),
    "VIRALWATCH_CHANGELOG_CONFIG": ("changelog_config", _str),
    "VIRALWATCH_PARTITION_IDLE": ("partition_idle_s", _seconds),
    "VIRALWATCH_BATCH_SIZE": ("batch_size", _int),
    "VIRALWATCH_BATCH_WAIT": ("batch_wait_s", _seconds),
    "VIRALWATCH_PRODUCER_LINGER": ("linger_s", _seconds),
    "VIRALWATCH_WIRE_VERSION": ("wire_version", WireVersion.parse),
    "VIRALWATCH_BROKER_WAIT": ("broker_wait_s", positive_seconds),
    "VIRALWATCH_SESSION_TIMEOUT": ("session_timeout_s", _seconds),
    "VIRALWATCH_HEARTBEAT": ("heartbeat_s", _seconds),
    "VIRALWATCH_HTTP_HOST": ("http_host", parse_host),
    "VIRALWATCH_HTTP_PORT": ("http_port", parse_port),
    "VIRALWATCH_HTTP_ADVERTISE": ("http_advertise", parse_http_url),
    "VIRALWATCH_WEB_TOKENS": ("web_tokens", _secret),
    "VIRALWATCH_WEB_TOKENS_FILE": ("web_tokens_file", Path),
    "VIRALWATCH_ALERTMANAGER": ("alertmanager_url", _str),
    "VIRALWATCH_ALERTMANAGER_REPOST": ("alertmanager_repost_s", _seconds),
    "VIRALWATCH_WEBHOOK": ("webhook_url", _str),
    "VIRALWATCH_DATA_DIR": ("data_dir", Path),
    "VIRALWATCH_LOCAL_BROKER": ("local_broker", _bool),
    "VIRALWATCH_EMBEDDED_BROKER": ("embedded_broker", _bool),
    "VIRALWATCH_LOG_LEVEL": ("log_level", str.upper),
}

_SECURITY_ENV: Final = {
    "VIRALWATCH_KAFKA_SECURITY_PROTOCOL": "protocol",
    "VIRALWATCH_KAFKA_SASL_MECHANISM": "sasl_mechanism",
    "VIRALWATCH_KAFKA_SASL_USERNAME": "sasl_username",
    "VIRALWATCH_KAFKA_SASL_PASSWORD": "sasl_password",
    "VIRALWATCH_KAFKA_SSL_CAFILE": "ssl_cafile",
    "VIRALWATCH_KAFKA_SSL_CERTFILE": "ssl_certfile",
    "VIRALWATCH_KAFKA_SSL_KEYFILE": "ssl_keyfile",
}

#: Variables still read, as the one they name, when that one is not set (a worker says so).
#: Both served ``/metrics`` before the worker had one HTTP port.
DEPRECATED_ENV: Final = {
    "VIRALWATCH_METRICS_PORT": "VIRALWATCH_HTTP_PORT",
    "VIRALWATCH_WEB_PORT": "VIRALWATCH_HTTP_PORT",
}

#: Every variable the settings read, for the README and ``--help``.
ENV_VARS: Final = tuple(_ENV) + tuple(_SECURITY_ENV) + tuple(DEPRECATED_ENV)
