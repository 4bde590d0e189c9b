"""The Kubernetes manifests in deploy/kubernetes: valid for a current Kubernetes (offline schemas),
and holding the properties the operations guide promises, read from the YAML itself."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from billing_service.cli import build_parser
from billing_service.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The newest release whose schemas kubernetes-validate ships (and a current one).
KUBERNETES_VERSION = "1.37.0"
# docs/benchmarks.md: about 70 MB resident per worker after load, below 200 MB in every run.
MEASURED_RSS_MIB = 70
BENCHMARK_CEILING_MIB = 200

WORKLOADS = ["api", "worker", "migrate"]

Manifest = dict[str, Any]


def manifest_files() -> list[Path]:
    """Every resource file (kustomization.yaml configures kustomize; it is not a resource)."""
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> Iterator[tuple[Path, Manifest]]:
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                yield path, doc


def resource(kind: str, name: str) -> Manifest:
    found = [
        doc for _, doc in resources() if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates() -> dict[str, Manifest]:
    """The pod specs that run the image: API, worker and migration Job."""
    return {
        "api": resource("Deployment", "billing-service-api")["spec"]["template"],
        "worker": resource("Deployment", "billing-service-worker")["spec"]["template"],
        "migrate": resource("Job", "billing-service-migrate")["spec"]["template"],
    }


def only_container(template: Manifest) -> Manifest:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    container: Manifest = containers[0]
    return container


def config_map() -> dict[str, str]:
    data: dict[str, str] = resource("ConfigMap", "billing-service-config")["data"]
    return data


def readme_settings() -> set[str]:
    """Every `BILLING_*` variable named in the first column of the README's configuration table."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `BILLING_"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`(BILLING_[A-Z0-9_]+)`", first_cell))
    return names


def secret_settings() -> set[str]:
    """The settings the service itself treats as secrets (SecretStr fields)."""
    return {
        f"BILLING_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in repr(field.annotation)
    } | {"BILLING_SMTP_USER"}


def settings_reaching(container: Manifest) -> set[str]:
    """The variables a container gets: the whole ConfigMap (envFrom) plus each env entry that
    names a ConfigMap or Secret key."""
    names: set[str] = set()
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == "billing-service-config"
        names |= set(config_map())
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {})
        key_ref = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
        assert key_ref is not None, f"{entry['name']} is not read from the ConfigMap or Secret"
        assert key_ref["key"] == entry["name"]
        names.add(entry["name"])
    return names


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_for_current_kubernetes(path: Path) -> None:
    """Each manifest validates, strictly (no unknown fields), against Kubernetes' own schemas."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_secret() -> None:
    """`kubectl apply -k` creates every resource; the Secret, which holds no values here, is
    created by the operator and never applied from the repository."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifest_files()} - {"secret.yaml"}
    assert [image["name"] for image in kustomization["images"]] == ["billing-service"]
    for template in pod_templates().values():
        assert only_container(template)["image"] == "billing-service"


def test_api_runs_at_least_two_replicas_and_scales_on_cpu() -> None:
    """Two API replicas at least, kept by the autoscaler's floor and the disruption budget."""
    api = resource("Deployment", "billing-service-api")
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = resource("HorizontalPodAutoscaler", "billing-service-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "billing-service-api"
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    pdb = resource("PodDisruptionBudget", "billing-service-api")
    assert pdb["spec"]["minAvailable"] >= 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert api["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]


def test_service_reaches_the_api_port() -> None:
    """The Service selects the API pods (not the workers) on the port `serve` listens on."""
    service = resource("Service", "billing-service")
    api = pod_templates()["api"]
    assert service["spec"]["selector"].items() <= api["metadata"]["labels"].items()
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    (port,) = service["spec"]["ports"]
    (container_port,) = only_container(api)["ports"]
    assert port["targetPort"] == container_port["name"] == "http"
    assert container_port["containerPort"] == int(config_map()["BILLING_PORT"])


def test_api_probes_readiness_on_readyz_and_liveness_on_healthz() -> None:
    """Readiness on /readyz (PostgreSQL and migrations), liveness on /healthz, on the API port."""
    api = only_container(pod_templates()["api"])
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_each_workload_runs_its_own_command() -> None:
    """API `serve` with background work off, worker `worker` (events, deliveries, emails, meter
    events and the periodic jobs, one replica per scheduled moment), Job `migrate`."""
    commands = {
        name: only_container(template)["args"] for name, template in pod_templates().items()
    }
    assert commands == {
        "api": ["billing-service", "serve"],
        "worker": ["billing-service", "worker"],
        "migrate": ["billing-service", "migrate"],
    }
    parser = build_parser()
    for args in commands.values():
        parser.parse_args(args[1:])  # exits (fails the test) on an unknown command
    assert config_map()["BILLING_WORKER_ENABLED"] == "false"
    assert config_map()["BILLING_WORKERS"] == "1"
    job = resource("Job", "billing-service-migrate")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_pods_run_unprivileged_on_a_read_only_root(workload: str) -> None:
    """Non-root as the image's user, read-only root with /tmp in memory, no privilege
    escalation or capabilities, and no service-account token."""
    template = pod_templates()[workload]
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    account = resource("ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    image_user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert image_user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_user[1])
    assert pod["securityContext"]["runAsGroup"] == int(image_user[2])
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = only_container(template)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"  # noqa: S108 (the scratch mount itself)
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"]
    assert "emptyDir" in volume


@pytest.mark.parametrize("workload", WORKLOADS)
def test_memory_is_sized_from_the_measured_resident_set(workload: str) -> None:
    """Requests cover the measured ~70 MB per worker; the limit sits above the benchmark's
    200 MB ceiling, so a worker is never killed at a size the benchmarks allow."""
    resources_ = only_container(pod_templates()[workload])["resources"]

    def mib(quantity: str) -> int:
        assert quantity.endswith("Mi")
        return int(quantity.removesuffix("Mi"))

    assert mib(resources_["requests"]["memory"]) >= MEASURED_RSS_MIB
    assert mib(resources_["limits"]["memory"]) > BENCHMARK_CEILING_MIB
    assert resources_["requests"]["cpu"]
    assert resources_["limits"]["cpu"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_documented_setting_reaches_every_workload(workload: str) -> None:
    """Each BILLING_ setting the README lists comes from the ConfigMap or the Secret, and each
    one the manifests name is a real setting (no typo silently ignored)."""
    documented = readme_settings()
    assert len(documented) > 40
    reaching = settings_reaching(only_container(pod_templates()[workload]))
    assert documented - reaching == set()
    known = {f"BILLING_{name.upper()}" for name in Settings.model_fields}
    assert reaching - known == set()


def test_no_secret_values_in_the_manifests() -> None:
    """Secrets come only from the Secret, whose file carries its keys with empty values; no
    file holds a key, signing secret or password-bearing URL."""
    secrets = secret_settings()
    assert {"BILLING_DATABASE_URL", "BILLING_STRIPE_SECRET_KEY"} <= secrets
    assert secrets & set(config_map()) == set()
    secret = resource("Secret", "billing-service-secrets")
    assert set(secret["stringData"]) == secrets
    assert set(secret["stringData"].values()) == {""}
    for template in pod_templates().values():
        env = {entry["name"]: entry for entry in only_container(template)["env"]}
        for name in secrets:
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "billing-service-secrets"
    leaked = re.compile(r"(sk|rk)_(live|test)_\w|whsec_\w|postgres(ql)?://[^\s/:@]+:[^\s@…]+@")
    for path in manifest_files():
        assert leaked.search(path.read_text(encoding="utf-8")) is None, path.name


def test_config_map_is_accepted_by_the_service_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap, with real-shaped secrets beside it, passes the service's own production
    checks: the manifests start a service rather than a configuration error."""
    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)
    for name, value in config_map().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://billing@postgres:5432/billing")
    monkeypatch.setenv("BILLING_STRIPE_SECRET_KEY", "sk_" + "live_placeholder")
    monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_" + "placeholder")
    settings = load_settings()
    assert settings.is_production
    assert settings.worker_enabled is False
    assert settings.workers == 1
    assert isinstance(settings.database_url, SecretStr)
