"""The shipped stack, run: deploy/compose.yaml's services as local processes, with deploy/'s files.

There is no Docker engine here, so the services of ``deploy/compose.yaml``
run as processes on this machine, each configured from the repository's
own files, read when the test runs (nothing of them is copied here, so a
change to compose.yaml, prometheus.yml, rules.yml or alertmanager.yml can
break this test):

- **kafka**: Apache Kafka (``start_kafka``) with the broker settings of the
  service's ``KAFKA_*`` environment (those about listeners, node and data
  folder are the test's own: loopback, free ports).
- **worker**: as many replicas as ``deploy.replicas`` says, each running the
  image's entrypoint with the service's command (``viralwatch worker``) and
  its environment as compose gives it: the image's ``ENV``, then the env
  file (the example secrets), then ``environment``. Rewritten: service
  ``host:port`` addresses to the loopback address of the process serving
  them, the HTTP host to ``127.0.0.1``, the HTTP port to a free port per
  replica, and container paths to what the service's volumes mount there.
- **prometheus**: Debian's ``prometheus`` with the service's command line,
  on ``prometheus.yml`` and its ``rule_files``. Rewritten: the targets (a
  DNS service discovery of the worker service becomes the replicas'
  loopback addresses) and the Alertmanager address; the scrape and
  evaluation intervals to 1 s and the ``for:`` of the worker-down rule to
  5 s, so the test waits seconds, not minutes (how long each rule waits is
  promtool's to test: deploy/prometheus/tests.yml).
- **alertmanager**: Debian's ``prometheus-alertmanager`` with the service's
  command line and ``alertmanager.yml``, every webhook pointed at a
  receiver in this test (the pager and chat gateways' stand-in), grouping
  waits cut to 1 s.
- grafana is not started: it only reads Prometheus (its dashboards are
  checked in tests/test_deploy.py).

It shows: both workers become ready (``/readyz`` 503, then 200) and
Prometheus scrapes both (``up == 1``) and evaluates every rule; a fast
banked cluster reaches the receiver through Alertmanager; SIGKILLing a
worker fires the worker-down rule, which Alertmanager notifies, and it
resolves once the worker is back (``/readyz`` 503 -> 200 across the restart).

Everything started here binds 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from eventgen import Traffic, pdq_hex
from kafka import KafkaProducer
from kafka_helpers import (
    TopicReader,
    WorkerProcess,
    create_topics,
    produce_lines,
    require_kafka,
    stats_lines,
)
from programs import (
    Program,
    WebhookReceiver,
    alertmanager_binary,
    free_ports,
    get_json,
    http_get,
    prometheus_binary,
    receivers_pointed_at,
    start_alertmanager,
    start_prometheus,
    wait_until,
)

from streams.banks import BankEntry, BankUpdate
from streams.runtime.kafka_server import KafkaBroker, start_kafka
from streams.settings import Settings
from streams.sinks.alertmanager import ALERTNAME as SPREAD_ALERT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra)")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
#: What compose needs from the deploying machine: the example secrets stand in.
COMPOSE_VARS = {
    "VIRALWATCH_ENV_FILE": "./secrets/viralwatch.env.example",
    "GRAFANA_ADMIN_PASSWORD_FILE": "./secrets/grafana-admin-password.example",
}
#: The seconds the test waits instead of the files' minutes (see the module doc).
FAST_INTERVAL = "1s"
FAST_FOR = "5s"
FAST_GROUPING = "1s"
#: KAFKA_* settings of the compose service that are about where Kafka listens and
#: keeps its data: the test's own (loopback, free ports, a temporary folder).
KAFKA_PLACEMENT = re.compile(
    r"KAFKA_(NODE_ID|PROCESS_ROLES|CONTROLLER_.*|LISTENERS|ADVERTISED_LISTENERS|"
    r"LISTENER_SECURITY_PROTOCOL_MAP|INTER_BROKER_LISTENER_NAME|LOG_DIRS)"
)


# -- reading compose.yaml as Docker Compose would ----------------------------------


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME-default}``, everywhere in ``value``.

    >>> interpolate({"a": ["${X:-1}", "${Y}"]}, {"Y": "2"})
    {'a': ['1', '2']}
    """
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        got = variables.get(name)
        if op == ":-":
            return got if got else default
        if op == "-":
            return got if got is not None else default
        return got or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", one, value)


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # YAML anchors resolved here
    return interpolate(doc, COMPOSE_VARS)  # type: ignore[no-any-return]


def env_dict(environment: Any) -> dict[str, str]:
    """A service's ``environment``: a mapping, or a list of ``NAME=value``."""
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def dockerfile_env() -> dict[str, str]:
    """The final stage's ``ENV`` (what the image gives every container)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stage = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in stage.splitlines():
        if line.strip().startswith("ENV "):
            for pair in line.split()[1:]:
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_entrypoint() -> list[str]:
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT ")]
    return list(orjson.loads(line.split(" ", 1)[1]))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """What a container of ``service`` sees: image ENV, env files, then ``environment``."""
    env = dockerfile_env() if service.get("build") else {}
    for entry in service.get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        env.update(env_file(DEPLOY / path))
    env.update(env_dict(service.get("environment")))
    return env


@dataclass
class Mounts:
    """Where a service's container paths are on this machine: bind mounts and scratch folders."""

    binds: dict[str, Path] = field(default_factory=dict)
    scratch: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def of(cls, service: dict[str, Any], scratch_dir: Path) -> Mounts:
        mounts = cls()
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts.binds[target] = (DEPLOY / source).resolve()
            else:  # a named volume: an empty folder of the test's
                mounts.scratch[target] = scratch_dir / source
        for tmpfs in service.get("tmpfs", []):
            target = tmpfs.split(":")[0]
            mounts.scratch[target] = scratch_dir / target.strip("/").replace("/", "-")
        return mounts

    def host_path(self, container_path: str) -> Path | None:
        """The host path of ``container_path``, or ``None`` when nothing is mounted there."""
        for table in (self.binds, self.scratch):
            for target, source in sorted(table.items(), key=lambda kv: -len(kv[0])):
                if container_path == target or container_path.startswith(target + "/"):
                    path = source / container_path[len(target) :].lstrip("/")
                    if table is self.scratch:
                        (path if container_path == target else path.parent).mkdir(
                            parents=True, exist_ok=True
                        )
                    return path
        return None


def flags_with_host_paths(argv: list[str], mounts: Mounts) -> list[str]:
    """``--flag=/container/path`` arguments with the host paths mounted there."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        path = mounts.host_path(value) if eq and value.startswith("/") else None
        out.append(f"{flag}={path}" if path is not None else arg)
    return out


def flag(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return value


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) if not isinstance(p, dict) else int(p["target"])
            for p in service.get("ports", [])}  # fmt: skip


class Addresses:
    """Compose's ``service:port`` addresses and the loopback ``host:port`` serving each here."""

    def __init__(self, services: dict[str, Any]) -> None:
        self.services = set(services)
        self.table: dict[tuple[str, int], list[str]] = {}

    def add(self, service: str, port: int, *loopback: str) -> None:
        self.table.setdefault((service, port), []).extend(loopback)

    def one(self, service: str, port: int) -> str:
        (address,) = self.table[(service, port)]
        return address

    def rewrite(self, text: str) -> str:
        """Every ``service:port`` in ``text`` as its loopback address (one replica's)."""

        def sub(m: re.Match[str]) -> str:
            key = (m.group(1), int(m.group(2)))
            if key not in self.table:
                raise AssertionError(f"{m.group(0)} names a service port the stack does not run")
            return self.table[key][0]

        names = "|".join(sorted(map(re.escape, self.services), key=len, reverse=True))
        return re.sub(rf"\b({names}):(\d+)\b", sub, text)


# -- the stack ---------------------------------------------------------------------


@dataclass
class Worker:
    """One replica of the worker service: its process, its HTTP port, its environment."""

    index: int
    env: dict[str, str]
    argv: list[str]
    log: Path
    process: WorkerProcess | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.env['VIRALWATCH_HTTP_PORT']}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.env['VIRALWATCH_HTTP_PORT']}"

    def start(self) -> None:
        self.process = WorkerProcess(self.env, self.log, argv=self.argv).start()

    def ready_status(self) -> int:
        """``/readyz``'s status, 0 when nothing answers."""
        try:
            return http_get(f"{self.http}/readyz", timeout=2)[0]
        except OSError:
            return 0

    def tail(self) -> str:
        assert self.process is not None
        return self.process.log_tail(60)


def statuses_until_ready(
    workers: list[Worker], timeout: float, stats: Callable[[], str] = lambda: ""
) -> list[list[int]]:
    """Poll each worker's ``/readyz`` from now until each says 200: the statuses each gave,
    in order (0: nothing answered), a repeat noted once. A timeout says ``stats()`` too
    (:func:`workers_stats`: where each worker stands, as the stream tests' timeouts do)."""
    seen: list[list[int]] = [[] for _ in workers]
    deadline = time.monotonic() + timeout
    while not all(s and s[-1] == 200 for s in seen):
        for worker, statuses in zip(workers, seen, strict=True):
            assert worker.process is not None and worker.process.alive(), worker.tail()
            if statuses and statuses[-1] == 200:
                continue
            status = worker.ready_status()
            if not statuses or statuses[-1] != status:
                statuses.append(status)
        if time.monotonic() > deadline:
            tails = "\n".join(w.tail() for w in workers)
            pytest.fail(f"not all ready after {timeout:.0f}s ({seen}):\n{stats()}\n{tails}")
        time.sleep(0.1)
    return seen


def workers_stats(broker: KafkaBroker, settings: Settings, wait_s: float = 5.0) -> str:
    """Each worker's last stats record (its ``waits``, ``progress``, ``stalled``: what a
    partition that never gets ready waits for), read from the ``stats`` topic; what went
    wrong reading it, rather than nothing, if it could not be read."""
    try:
        reader = TopicReader(broker, settings.topic("stats"))
        try:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and (reader.poll(0.5) or not reader.records):
                pass  # to the topic's end (a worker writes one a second), within wait_s
            return stats_lines(reader.records)
        finally:
            reader.close()
    except Exception as err:  # a diagnostic: never hide the failure it explains
        return f"(the stats topic could not be read: {err!r})"


@dataclass
class Stack:
    broker: KafkaBroker
    receiver: WebhookReceiver
    workers: list[Worker]
    settings: Settings
    prometheus: str
    alertmanager: str
    worker_job: str
    worker_down: str
    first_ready: list[list[int]]
    programs: list[Program] = field(default_factory=list)


def prometheus_config(
    path: Path, addresses: Addresses, workers: list[Worker], tmp: Path
) -> tuple[Path, str, str]:
    """prometheus.yml with loopback targets and fast intervals; its rules, worker-down faster.

    Returns the config written, the job that scrapes the workers, and the
    name of the rule that pages when one of them stops answering.
    """
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = FAST_INTERVAL
    config["global"]["evaluation_interval"] = FAST_INTERVAL
    for am in config["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            static["targets"] = [addresses.rewrite(t) for t in static["targets"]]
    worker_jobs = []
    for job in config["scrape_configs"]:
        targets: list[str] = []
        for static in job.pop("static_configs", []):
            for t in static["targets"]:
                host, _, port = t.partition(":")
                # "localhost" in Prometheus's own config is Prometheus's container
                targets.append(addresses.one("prometheus", int(port)) if host == "localhost"
                               else addresses.rewrite(t))  # fmt: skip
        for sd in job.pop("dns_sd_configs", []):
            for name in sd["names"]:  # one address per replica of that service
                targets += addresses.table[(name, int(sd["port"]))]
                if name == "worker":
                    worker_jobs.append(job["job_name"])
        assert not {k for k in job if k.endswith("_sd_configs")}, f"unhandled discovery: {job}"
        job["static_configs"] = [{"targets": targets}]
    (job_name,) = worker_jobs
    rules_out = []
    worker_down = None
    for name in config.get("rule_files", []):
        rules = yaml.safe_load((path.parent / name).read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                expr = " ".join(str(rule.get("expr", "")).split())
                if re.fullmatch(rf'up\{{job="{job_name}"\}} == 0', expr):
                    worker_down = rule["alert"]
                    rule["for"] = FAST_FOR
        out = tmp / f"rules-{len(rules_out)}.yml"
        out.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
        rules_out.append(str(out))
    assert worker_down, f"no rule pages when a target of job {job_name} is down"
    config["rule_files"] = rules_out
    written = tmp / "prometheus.yml"
    written.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return written, job_name, worker_down


def alertmanager_config(path: Path, receiver_url: str, tmp: Path) -> Path:
    config = receivers_pointed_at(yaml.safe_load(path.read_text(encoding="utf-8")), receiver_url)

    def faster(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = FAST_GROUPING
        for child in route.get("routes", []):
            faster(child)

    faster(config["route"])
    written = tmp / "alertmanager.yml"
    written.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return written


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_kafka()
    prometheus_binary()
    alertmanager_binary()
    tmp = tmp_path_factory.mktemp("stack")
    services = compose()["services"]
    addresses = Addresses(services)
    programs: list[Program] = []
    receiver = WebhookReceiver().start()
    broker: KafkaBroker | None = None
    workers: list[Worker] = []
    try:
        # kafka: the service's broker settings, the test's listeners
        kafka_env = env_dict(services["kafka"]["environment"])
        extra = {
            key[len("KAFKA_") :].lower().replace("_", "."): value
            for key, value in kafka_env.items()
            if not KAFKA_PLACEMENT.fullmatch(key)
        }
        broker = start_kafka(data=tmp / "kafka", log_path=tmp / "kafka.log", extra=extra)
        for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","):
            host, port = listener.split("://", 1)[1].rsplit(":", 1)
            if host in services:  # the listener other services use
                addresses.add(host, int(port), broker.bootstrap)

        # ports of alertmanager and prometheus (what their containers listen on)
        ports = dict(zip(("alertmanager", "prometheus"), free_ports(2), strict=True))
        for name, port in ports.items():
            (inside,) = container_ports(services[name])
            addresses.add(name, inside, f"127.0.0.1:{port}")

        # the worker replicas
        worker = services["worker"]
        replicas = int(worker.get("deploy", {}).get("replicas", 1))
        assert replicas >= 2, "the stack test kills one worker: compose should run two or more"
        base = service_env(worker)
        http_port = int(base["VIRALWATCH_HTTP_PORT"])
        assert http_port in container_ports(worker), "the worker's HTTP port is not published"
        entry = dockerfile_entrypoint()
        assert entry == ["viralwatch"], entry  # the console script of streams.cli
        argv = [sys.executable, "-m", "streams.cli", *worker.get("command", [])]
        for i, port in enumerate(free_ports(replicas, besides=ports.values())):
            addresses.add("worker", http_port, f"127.0.0.1:{port}")
            mounts = Mounts.of(worker, tmp / f"worker-{i}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("VIRALWATCH_")}
            for key, value in base.items():
                path = mounts.host_path(value) if value.startswith("/") else None
                env[key] = str(path) if path is not None else value
            env.update(PYTHONUNBUFFERED="1", VIRALWATCH_HTTP_PORT=str(port))
            workers.append(Worker(i, env, argv, tmp / f"worker-{i}.log"))
        for w in workers:
            w.env = {k: addresses.rewrite(v) for k, v in w.env.items()}
            assert w.env["VIRALWATCH_HTTP_HOST"] == "0.0.0.0"  # the image's: reachable
            w.env["VIRALWATCH_HTTP_HOST"] = "127.0.0.1"  # the test binds loopback only

        # alertmanager, prometheus: the services' command lines, configs rewritten
        am_service = services["alertmanager"]
        am_argv = flags_with_host_paths(am_service["command"], Mounts.of(am_service, tmp))
        am_config = alertmanager_config(Path(flag(am_argv, "--config.file")), receiver.url, tmp)
        am_argv = [a if not a.startswith("--config.file=") else f"--config.file={am_config}"
                   for a in am_argv]  # fmt: skip
        programs.append(start_alertmanager(am_argv, tmp, ports["alertmanager"]))
        prom_service = services["prometheus"]
        prom_argv = flags_with_host_paths(prom_service["command"], Mounts.of(prom_service, tmp))
        prom_config, job, worker_down = prometheus_config(
            Path(flag(prom_argv, "--config.file")), addresses, workers, tmp
        )
        prom_argv = [a if not a.startswith("--config.file=") else f"--config.file={prom_config}"
                     for a in prom_argv]  # fmt: skip
        programs.append(start_prometheus(prom_argv, tmp, ports["prometheus"]))

        # the topics as the workers make them, and a bank entry on the bank topic
        # (compose's workers load no bank file: VIRALWATCH_BANKS is empty by default)
        settings = Settings.from_env(workers[0].env)
        create_topics(settings)
        for w in workers:
            w.start()
        first_ready = statuses_until_ready(workers, 120, lambda: workers_stats(broker, settings))
        yield Stack(
            broker=broker,
            receiver=receiver,
            workers=workers,
            settings=settings,
            prometheus=f"http://127.0.0.1:{ports['prometheus']}",
            alertmanager=f"http://127.0.0.1:{ports['alertmanager']}",
            worker_job=job,
            worker_down=worker_down,
            first_ready=first_ready,
            programs=programs,
        )
    finally:
        for w in workers:
            if w.process is not None:
                with contextlib.suppress(Exception):
                    w.process.stop()
        for program in reversed(programs):
            program.stop()
        receiver.stop()
        if broker is not None:
            broker.stop()


def alertmanager_yml() -> Path:
    """The Alertmanager config the compose service mounts (the repository's file)."""
    service = compose()["services"]["alertmanager"]
    mounts = Mounts.of(service, Path("/nonexistent"))
    path = mounts.host_path(flag(service["command"], "--config.file"))
    assert path is not None
    return path


def prom_query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus}/api/v1/query?query=" + urllib.parse.quote(expr)
    result: list[dict[str, Any]] = get_json(url)["data"]["result"]
    return result


def notified(stack: Stack, alertname: str, status: str, **labels: str) -> list[dict[str, Any]]:
    """Alertmanager's notifications of an alert in ``status`` with ``labels``, with their path."""
    out = []
    for request in stack.receiver.received():
        doc = request.json()
        for alert in doc["alerts"]:
            got = alert["labels"]
            if (
                got.get("alertname") == alertname
                and alert["status"] == status
                and all(got.get(k) == v for k, v in labels.items())
            ):
                out.append({"path": request.path, "receiver": doc["receiver"], "alert": alert})
    return out


def eventually(predicate: Callable[[], Any], timeout: float, what: str, stack: Stack) -> Any:
    try:
        return wait_until(predicate, timeout, what)
    except AssertionError as err:
        logs = "\n".join(f"--- worker {w.index}\n{w.tail()}" for w in stack.workers if w.process)
        got = sorted(
            {
                (r.path, a["labels"].get("alertname"), a["labels"].get("severity"), a["status"])
                for r in stack.receiver.received()
                for a in r.json()["alerts"]
            }
        )
        stats = workers_stats(stack.broker, stack.settings)
        raise AssertionError(f"{err}\nthe receiver got {got}\n{stats}\n{logs}") from None


# -- what the stack must do -----------------------------------------------------------


def test_workers_become_ready_after_saying_they_are_not(stack: Stack) -> None:
    for seen in stack.first_ready:
        assert seen[-1] == 200
        assert 503 in seen, f"/readyz never said 503 before 200: {seen}"
    for w in stack.workers:
        doc = orjson.loads(http_get(f"{w.http}/readyz")[1])
        assert doc["ready"] is True and set(doc["conditions"]) == {"banks", "assigned", "restored"}
        assert http_get(f"{w.http}/livez")[0] == 200


def test_prometheus_scrapes_every_worker_and_evaluates_every_rule(stack: Stack) -> None:
    expected = {w.target for w in stack.workers}

    def all_up() -> bool:
        up = prom_query(stack, f'up{{job="{stack.worker_job}"}}')
        return {r["metric"]["instance"] for r in up if r["value"][1] == "1"} == expected

    eventually(all_up, 60, f"up == 1 for {sorted(expected)}", stack)
    # the workers' own series, as scraped
    events = prom_query(stack, f'viralwatch_events_total{{job="{stack.worker_job}"}}')
    assert {r["metric"]["instance"] for r in events} == expected

    def evaluated() -> list[dict[str, Any]]:
        groups = get_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
        rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else []

    rules = eventually(evaluated, 30, "every rule evaluated, health ok", stack)
    names = {r["name"] for r in rules}
    assert stack.worker_down in names and len(rules) >= 8
    # and Prometheus talks to the stack's Alertmanager
    ams = get_json(f"{stack.prometheus}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
    assert [a["url"].startswith(stack.alertmanager) for a in ams] == [True]


def test_a_fast_banked_cluster_reaches_on_call_through_alertmanager(stack: Stack) -> None:
    traffic, pdq = Traffic(), pdq_hex(random.Random(14))
    entry = BankEntry("stack-test", "pdq", pdq)
    key, value = BankUpdate("add", entry).record()
    producer = KafkaProducer(bootstrap_servers=stack.broker.bootstrap)
    producer.send(stack.settings.topic("bank"), key=key, value=value)
    producer.flush()
    producer.close()
    time.sleep(1.5)  # the workers follow the bank topic as it comes
    now_ms = int(time.time() * 1000)
    root = traffic.upload(now_ms - 40_000, pdq=pdq)
    traffic.burst(root, now_ms - 39_000, 150, 200)  # 150 reshares in 30 s: past every rule
    produce_lines(stack.broker, stack.settings.topic("shares"), traffic.lines())
    cluster = entry.cluster_id

    config = yaml.safe_load(alertmanager_yml().read_text(encoding="utf-8"))
    hooks = {r["name"]: len(r.get("webhook_configs", [])) for r in config["receivers"]}

    def paged() -> list[dict[str, Any]]:
        """The notifications, once a receiver the routing chose got them on every webhook
        (a burst may page a lower severity first: which one the policy reaches is not
        this test's; Alertmanager's routing of each is)."""
        notes = notified(stack, SPREAD_ALERT, "firing", cluster=cluster, bank="stack-test")
        for name in {n["receiver"] for n in notes}:
            paths = {n["path"] for n in notes if n["receiver"] == name}
            if paths == {f"/{name}/{i}" for i in range(1, hooks[name] + 1)}:
                return notes
        return []

    notes = eventually(paged, 60, f"a firing {SPREAD_ALERT} of {cluster} at the receiver", stack)
    assert all(n["path"].startswith(f"/{n['receiver']}/") for n in notes)
    annotations = notes[0]["alert"]["annotations"]
    assert annotations["runbook_url"] and annotations["alert_id"]


def test_a_killed_worker_pages_and_clears_when_it_is_back(stack: Stack) -> None:
    victim, other = stack.workers[0], stack.workers[1]
    assert victim.process is not None
    victim.process.kill()  # SIGKILL, by PID
    down = {"instance": victim.target, "job": stack.worker_job}

    def up_of(target: str) -> str | None:
        rows = prom_query(stack, f'up{{instance="{target}"}}')
        return rows[0]["value"][1] if rows else None

    eventually(lambda: up_of(victim.target) == "0", 30, "up == 0 for the killed worker", stack)
    assert up_of(other.target) == "1"
    eventually(
        lambda: notified(stack, stack.worker_down, "firing", **down),
        60,
        f"{stack.worker_down} firing at the receiver",
        stack,
    )
    # the survivor takes the partitions: not ready during the rebalance, then ready
    eventually(lambda: other.ready_status() == 200, 120, "the survivor ready again", stack)

    victim.start()  # the same environment, the same port
    (seen,) = statuses_until_ready(
        [victim], 120, lambda: workers_stats(stack.broker, stack.settings)
    )
    assert 503 in seen and seen[-1] == 200, f"/readyz across the restart: {seen}"
    eventually(lambda: up_of(victim.target) == "1", 30, "up == 1 again", stack)
    resolved = eventually(
        lambda: notified(stack, stack.worker_down, "resolved", **down),
        60,
        f"{stack.worker_down} resolved at the receiver",
        stack,
    )
    assert (
        resolved[0]["receiver"]
        == notified(stack, stack.worker_down, "firing", **down)[0]["receiver"]
    )
    active = get_json(f"{stack.alertmanager}/api/v2/alerts?active=true")
    assert not [a for a in active if a["labels"].get("alertname") == stack.worker_down]


# -- the test's own diagnostics ------------------------------------------------------


class _NeverReady(Worker):
    """A worker whose ``/readyz`` says 503 for ever (no process, no port)."""

    def ready_status(self) -> int:
        return 503

    def tail(self) -> str:
        return "(the log's tail)"


class _Alive:
    def alive(self) -> bool:
        return True


def test_a_readiness_timeout_says_where_each_worker_stands(tmp_path: Path) -> None:
    """The stack's readiness timeout prints each worker's last stats record (``waits``,
    ``progress``, ``stalled``), as the stream tests' timeouts do: the eighth session's
    flake (a survivor stuck in Faust's recovery) left only the logs' tails to read."""
    worker = _NeverReady(0, {}, [], tmp_path / "worker.log")
    worker.process = _Alive()  # type: ignore[assignment]
    said = 'stats of w-0: {"stalled":["clusters/1"],"progress":{"0":5},"waits":{}}'
    with pytest.raises(pytest.fail.Exception) as failed:
        statuses_until_ready([worker], 0.3, lambda: said)
    assert said in str(failed.value) and "(the log's tail)" in str(failed.value)
