"""deploy/kubernetes and compose.yaml: schema-valid, offline, and consistent with the image.

Kubernetes objects are validated strictly (unknown fields rejected) with the schemas bundled in
the pip package ``kubernetes-validate``, for the oldest and the newest Kubernetes it ships; the
compose file with the Compose Specification schema bundled in ``check-jsonschema``. Neither
needs the network. The rest checks that the manifests agree with the Dockerfile (user, config
path, port) and that the drain time fits into the grace periods.
"""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from container import dockerfile
from harness import venv_tool
from servers import DOVECOT_LEGACY_CAPABILITY

from imapmoveproxy.config import Config, build

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
ROUTING_COMPOSE = ROOT / "deploy" / "compose" / "routing.yaml"
PRESTOP_MARGIN = 5  # seconds of grace beyond preStop + drain_timeout, at least
LABEL = "app.kubernetes.io/name"
LOCK_APP = "imapmoveproxy-valkey"

try:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError:  # fail (not skip) in every test that needs it
    kubernetes_validate = None


def require_kubernetes_validate() -> None:
    if kubernetes_validate is None:
        pytest.fail("kubernetes-validate not installed: pip install kubernetes-validate")


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != "kustomization.yaml")


def objects(app: str = "imapmoveproxy") -> dict[str, dict[str, Any]]:
    """The Kubernetes objects in deploy/kubernetes labelled app.kubernetes.io/name=``app``, by
    kind (one of each): the proxy's, or those of the Valkey holding its shared MOVE lock."""
    found: dict[str, dict[str, Any]] = {}
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None and document["metadata"]["labels"][LABEL] == app:
                assert document["kind"] not in found, f"second {document['kind']} in {path}"
                found[document["kind"]] = document
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = objects()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container_spec() -> dict[str, Any]:
    (container,) = pod_spec()["containers"]
    return container


def proxy_config(toml_text: str) -> Config:
    """The proxy's own validation of a TOML config (unknown keys, bad values: ConfigError)."""
    return build(tomllib.loads(toml_text))


# -- schema validation --------------------------------------------------------------------------


def kubernetes_versions() -> list[str]:
    if kubernetes_validate is None:
        return ["missing"]
    versions = all_versions()
    return sorted({versions[0], versions[-1]})


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_is_valid_kubernetes(path, version):
    require_kubernetes_validate()
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} is empty"
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} against Kubernetes {version}: {exc.message}")


def test_validation_is_not_vacuous():
    """A misspelt field and a wrong type are rejected, so a pass above means something."""
    require_kubernetes_validate()
    version = kubernetes_versions()[-1]
    deployment = objects()["Deployment"]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in manifest_files()]


def check_jsonschema() -> str:
    return venv_tool("check-jsonschema", "check-jsonschema")


@pytest.mark.parametrize("compose", [COMPOSE, ROUTING_COMPOSE], ids=lambda path: path.name)
def test_compose_file_is_valid_compose_spec(compose):
    result = subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(compose)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


# -- consistency with the image and the proxy ---------------------------------------------------


def test_kubernetes_objects_present_and_wired():
    found = objects()
    assert set(found) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selector = found["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    replicas = found["Deployment"]["spec"]["replicas"]
    assert found["PodDisruptionBudget"]["spec"]["minAvailable"] < replicas
    port_names = {port["name"] for port in container_spec()["ports"]}
    for port in found["Service"]["spec"]["ports"]:
        assert port["targetPort"] in port_names


def test_every_object_belongs_to_the_proxy_or_its_lock_service():
    everything = [
        document
        for path in manifest_files()
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]
    assert len(everything) == len(objects()) + len(objects(LOCK_APP))


def test_replicas_share_the_move_lock_in_valkey():
    lock = objects(LOCK_APP)
    assert set(lock) == {"Deployment", "Service", "PersistentVolumeClaim"}
    labels = lock["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert lock["Service"]["spec"]["selector"].items() <= labels.items()
    assert lock["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = lock["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    (service_port,) = lock["Service"]["spec"]["ports"]
    url = urlsplit(proxy_config(objects()["ConfigMap"]["data"]["config.toml"]).move_lock or "")
    assert url.scheme == "redis" and url.hostname == lock["Service"]["metadata"]["name"]
    assert url.port == service_port["port"] and ports[service_port["targetPort"]] == 6379


def test_the_journal_in_valkey_survives_a_restart_of_valkey():
    """journal = "auto" puts the MOVE journal where the lock is: Valkey keeps an append-only
    file on a persistent volume, mounted where it writes it (/data)."""
    config = proxy_config(objects()["ConfigMap"]["data"]["config.toml"])
    assert config.journal_location == config.move_lock
    lock = objects(LOCK_APP)
    (container,) = lock["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] in ("everysec", "always")
    (volume,) = lock["Deployment"]["spec"]["template"]["spec"]["volumes"]
    claim = lock["PersistentVolumeClaim"]["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    (mount,) = container["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], "/data")


def test_configmap_holds_a_valid_proxy_config_where_the_image_reads_it():
    found = objects()
    config_path = Path(dockerfile.cmd_option("--config"))
    text = found["ConfigMap"]["data"][config_path.name]
    config = proxy_config(text)
    assert config.upstream.port > 0
    (volume,) = [v for v in pod_spec()["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    (mount,) = [m for m in container_spec()["volumeMounts"] if m["name"] == volume["name"]]
    assert Path(mount["mountPath"]) == config_path.parent
    assert mount.get("readOnly") is True
    items = volume["configMap"].get("items", [{"key": config_path.name, "path": config_path.name}])
    assert {"key": config_path.name, "path": config_path.name} in items


def test_pod_runs_the_image_as_built():
    container = container_spec()
    assert "command" not in container, "the image's exec-form ENTRYPOINT runs the proxy"
    assert "args" not in container, "the image's CMD: --config ... --listen 0.0.0.0:143"
    listen_port = int(dockerfile.cmd_option("--listen").rpartition(":")[2])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["imap"] == listen_port
    security = pod_spec()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile.user_id()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    if listen_port < 1024:  # a non-root user binds it only with the sysctl lowered
        sysctls = {s["name"]: int(s["value"]) for s in security.get("sysctls", [])}
        assert sysctls.get("net.ipv4.ip_unprivileged_port_start", 1024) <= listen_port


def test_probes_use_the_health_endpoints_the_config_serves():
    container = container_spec()
    names = {port["name"]: port["containerPort"] for port in container["ports"]}
    paths = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in paths.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path and names[http["port"]] == 9143, (probe, http)
    config = tomllib.loads(objects()["ConfigMap"]["data"]["config.toml"])
    assert config["metrics"] == "0.0.0.0:9143"


def prestop_seconds(container: dict[str, Any]) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command is None:
        return 0
    assert command[0] == "sleep", command
    return int(command[1])


def test_grace_period_covers_prestop_and_drain():
    drain = proxy_config(objects()["ConfigMap"]["data"]["config.toml"]).drain_timeout
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= prestop_seconds(container_spec()) + drain + PRESTOP_MARGIN


def duration_seconds(text: str) -> float:
    """A compose duration such as 40s, 1m30s."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_example_is_consistent():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    proxy = services["imapmoveproxy"]
    assert proxy["build"]["context"] == "."
    config_path = dockerfile.cmd_option("--config")
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in proxy["volumes"]}
    assert config_path in mounts, proxy["volumes"]
    config = proxy_config((ROOT / mounts[config_path]).read_text())
    assert config.upstream.host in services, "the upstream is the compose legacy server"
    assert urlsplit(config.move_lock or "").hostname in services, "the lock is a compose service"
    journal = services[urlsplit(config.journal_location).hostname or ""]  # with the lock
    assert journal["command"][journal["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in journal["volumes"]), "persisted"
    assert duration_seconds(proxy["stop_grace_period"]) >= config.drain_timeout + PRESTOP_MARGIN
    listen_port = dockerfile.cmd_option("--listen").rpartition(":")[2]
    assert any(port.endswith(f":{listen_port}") for port in proxy["ports"])
    # the legacy server's drop-in hides MOVE exactly as the test-suite's legacy Dovecot does
    legacy = services[config.upstream.host]
    (dropin,) = [v.split(":")[0] for v in legacy["volumes"] if v.endswith(".conf:ro")]
    text = (ROOT / dropin).read_text()
    (capability,) = re.findall(r"^imap_capability = (.*)$", text, re.MULTILINE)
    assert capability == DOVECOT_LEGACY_CAPABILITY
    assert "MOVE" not in capability.split()


def test_routing_compose_example_is_consistent():
    """The routing example: its config passes the proxy's check, each backend and the lookup
    is a service of the file, and the lookup answers with exactly the backends' addresses."""
    compose = yaml.safe_load(ROUTING_COMPOSE.read_text())
    services = compose["services"]
    proxy = services["imapmoveproxy"]
    assert (ROUTING_COMPOSE.parent / proxy["build"]["context"]).resolve() == ROOT
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in proxy["volumes"]}
    config_file = ROUTING_COMPOSE.parent / mounts[dockerfile.cmd_option("--config")]
    config = proxy_config(config_file.read_text())
    addresses = {(b.upstream.host, str(b.upstream.port)) for b in config.backends.values()}
    assert {host for host, _ in addresses} <= set(services)
    assert urlsplit(config.route_lookup or "").hostname in services
    lookup = (ROUTING_COMPOSE.parent / "authlookup.py").read_text()
    answered = set(re.findall(r'^(?:LEGACY|NEW) = \("([^"]+)", "(\d+)"\)$', lookup, re.M))
    assert answered == addresses
    assert duration_seconds(proxy["stop_grace_period"]) >= config.drain_timeout + PRESTOP_MARGIN
