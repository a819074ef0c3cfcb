"""The Kubernetes manifests, offline: lint, render, validate, and run the StatefulSet's pods as local
processes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import tomllib
import urllib3
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from support.jobs import REPO
from yamllint import linter
from yamllint.config import YamlLintConfig

from flows.adapters.kafka.headers import SOURCE_PARTITION_HEADER
from flows.adapters.sources.generators import generated_records, shipped_model
from flows.core.admission.policy import parse_model_types
from flows.core.admission.signing import parse_trusted_keys
from flows.core.descriptors import ModelType
from flows.core.shipped import SHIPPED_MODELS_DIR
from flows.testing.local_broker import consume_all, create_topics, produce
from flows.testing.loopback import free_port
from flows.tools.query_state import fetch
from flows.wire.avro import MODEL, RECORD

K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.31.0"  # kubernetes-validate bundles 1.25 - 1.37; pinned in the test extra
OVERLAYS = ["embedded", "embedded-onnx", "tfserving", "seldon", "embedded-sasl", "embedded-autoscaled"]
SELDON_KINDS = {"Model", "Server"}  # Seldon Core 2 CRDs: no schema offline
LINT = YamlLintConfig(file=str(K8S / ".yamllint"))
kubectl = shutil.which("kubectl")


def lint_problems(text: str, name: str) -> list[str]:
    return [
        f"{name}:{problem.line}: {problem.desc}"
        for problem in linter.run(text, LINT)
        if problem.level == "error"
    ]


@cache
def render(overlay: str) -> str:
    assert kubectl is not None  # the tests that render are skipped without it (needs_kubectl)
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(overlay: str) -> list[dict]:
    """The overlay's resources, parsed afresh (callers may change them)."""
    return [document for document in yaml.safe_load_all(render(overlay)) if document]


def pod_templates(documents: list[dict]) -> dict[str, dict]:
    """Every workload's pod template (Deployments, StatefulSets, Jobs) by the workload's name."""
    return {
        document["metadata"]["name"]: document["spec"]["template"]
        for document in documents
        if document["kind"] in {"Deployment", "StatefulSet", "Job"}
    }


needs_kubectl = pytest.mark.skipif(
    kubectl is None, reason="kubectl is not installed (it renders the overlays offline)"
)


def test_every_manifest_file_passes_yamllint():
    files = sorted(path for path in K8S.rglob("*.yaml")) + [K8S / ".yamllint"]
    assert len(files) > 15
    problems = [
        problem for path in files for problem in lint_problems(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert problems == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_lints_and_validates_strictly(overlay):
    rendered = render(overlay)
    assert lint_problems(rendered, f"kustomize {overlay}") == []
    documents = [document for document in yaml.safe_load_all(rendered) if document]
    kinds = {document["kind"] for document in documents}
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "Job", "Deployment"} <= kinds
    failures = []
    for document in documents:
        if document["kind"] in SELDON_KINDS:
            assert document["apiVersion"] == "mlops.seldon.io/v1alpha1"
            continue
        if document["kind"] == "ScaledObject":
            failures.extend(keda_problems(document))
            continue
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(
                f"{document['kind']}/{document['metadata']['name']}: {error.message} at {list(error.path)}"
            )
    assert failures == []


def keda_problems(document: dict) -> list[str]:
    """A KEDA ScaledObject checked against KEDA's own API types (cloudcoil's models of its CRDs), strictly:
    a field the model does not know is a problem, as an unknown field is for kubectl's strict validation."""
    try:
        parsed = ScaledObject.model_validate(document)
    except pydantic.ValidationError as error:
        return [f"ScaledObject/{document['metadata']['name']}: {error}"]
    known = parsed.model_dump(by_alias=True, exclude_unset=True)
    return [
        f"ScaledObject/{document['metadata']['name']}: unknown field {path}"
        for path in unknown(document, known)
    ]


def unknown(given: object, known: object, path: str = "") -> list[str]:
    """The paths of `given` that the parsed model `known` does not hold."""
    if isinstance(given, dict) and isinstance(known, dict):
        return [
            problem
            for key, value in given.items()
            for problem in (
                [f"{path}.{key}"] if key not in known else unknown(value, known[key], f"{path}.{key}")
            )
        ]
    if isinstance(given, list) and isinstance(known, list):
        return [
            problem
            for index, (a, b) in enumerate(zip(given, known))
            for problem in unknown(a, b, f"{path}[{index}]")
        ]
    return []


def test_the_keda_check_catches_a_misspelt_field():
    [scaled] = [
        document for document in rendered("embedded-autoscaled") if document["kind"] == "ScaledObject"
    ]
    assert keda_problems(scaled) == []
    scaled["spec"]["maxReplicaCont"] = scaled["spec"].pop("maxReplicaCount")
    del scaled["spec"]["scaleTargetRef"]
    problems = "\n".join(keda_problems(scaled))
    assert "scaleTargetRef" in problems and "Field required" in problems
    scaled["spec"]["scaleTargetRef"] = {"kind": "StatefulSet", "name": "serving"}
    assert keda_problems(scaled) == ["ScaledObject/serving: unknown field .spec.maxReplicaCont"]


def test_the_scaled_object_scales_the_flow_on_its_lag_within_its_recovery_partitions():
    documents = rendered("embedded-autoscaled")
    [scaled] = [document for document in documents if document["kind"] == "ScaledObject"]
    [scale] = [
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("serving-scale")
    ]
    [trigger] = scaled["spec"]["triggers"]
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "serving",
    }
    assert "serving_kafka_lag" in trigger["metadata"]["query"]
    most_workers = scaled["spec"]["maxReplicaCount"] * int(scale["data"]["BYTEWAX_WORKERS_PER_PROCESS"])
    assert most_workers <= int(scale["data"]["BYTEWAX_RECOVERY_PARTITIONS"])


def test_strict_validation_catches_a_misspelt_field():
    statefulset = next(
        document
        for document in yaml.safe_load_all((K8S / "base" / "dataflow-statefulset.yaml").read_text())
        if document
    )
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


def pod_spec() -> tuple[dict, dict[str, str]]:
    """The dataflow container of the StatefulSet, and the settings its pods get from the ConfigMap."""
    statefulset = yaml.safe_load((K8S / "base" / "dataflow-statefulset.yaml").read_text())
    config = yaml.safe_load((K8S / "base" / "serving-config.yaml").read_text())["data"]
    config.update(yaml.safe_load((K8S / "base" / "serving-scale.yaml").read_text())["data"])
    containers = {c["name"]: c for c in statefulset["spec"]["template"]["spec"]["containers"]}
    assert statefulset["spec"]["replicas"] == 2
    return containers["dataflow"], config


def pod_environment(
    container: dict, config: dict[str, str], ordinal: int, scratch: Path, overrides: dict[str, str]
) -> dict[str, str]:
    """What Kubernetes gives pod `serving-ORDINAL`: ConfigMaps, container env, field refs, its volumes (the
    recovery store is shared by every pod, as the ReadWriteMany volume is)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SERVING_", "BYTEWAX_", "OTEL_"))
    }
    env.update(config)
    env["SERVING_KAFKA_CONFIG"] = "{}"  # the kafka-client Secret's placeholder
    env["SERVING_KAFKA_MARKER_KEY"] = "the operator's answered-marker-key"  # the Secret the operator creates
    for variable in container["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    env["BYTEWAX_POD_NAME"] = f"serving-{ordinal}"  # fieldRef metadata.name
    env["POD_NAMESPACE"] = "model-serving"  # fieldRef metadata.namespace
    # Per-pod volumes, and what differs on one host: process i listens on 127.0.0.1{i} instead of its pod IP.
    pod_dir = scratch / f"serving-{ordinal}"
    pod_dir.mkdir(parents=True, exist_ok=True)
    env["BYTEWAX_RECOVERY_STORE"] = str(scratch / "recovery-store")
    env["BYTEWAX_HOSTFILE_PATH"] = str(pod_dir / "hostfile.txt")
    env["BYTEWAX_PEER_HOST_TEMPLATE"] = "127.0.0.1{i}"
    env["BYTEWAX_DATAFLOW_API_PORT"] = str(free_port())
    env["SERVING_STATE_HOST"] = f"127.0.0.1{ordinal}"
    env["HOME"] = str(pod_dir)
    env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), env.get("PATH", "")]
    )  # the image's python
    env.update(overrides)
    return env


@pytest.mark.skipif(sys.platform != "linux", reason="uses 127.0.0.10 and 127.0.0.11, local on Linux only")
def test_the_statefulset_pods_run_as_two_processes_that_each_score_their_share(kafka_bootstrap, tmp_path):
    container, config = pod_spec()
    scripts = K8S / "base" / "scripts"
    topics = create_topics(
        kafka_bootstrap,
        "k8s",
        ["data", "models", "results", "dead", "events", "reports", "explanations", "answered"],
        partitions=4,
    )
    overrides = {
        "SERVING_KAFKA_ANSWERED_TOPIC": topics["answered"],  # exactly-once, as serving-config says
        "SERVING_KAFKA_EVENTS_TOPIC": topics["events"],
        "SERVING_KAFKA_CHALLENGER_TOPIC": topics["reports"],
        "SERVING_KAFKA_EXPLANATIONS_TOPIC": topics["explanations"],
        "SERVING_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SERVING_KAFKA_DATA_TOPIC": topics["data"],
        "SERVING_KAFKA_MODELS_TOPIC": topics["models"],
        "SERVING_KAFKA_RESULTS_TOPIC": topics["results"],
        "SERVING_KAFKA_DEAD_LETTERS_TOPIC": topics["dead"],
    }
    records = 2000
    model = shipped_model(SHIPPED_MODELS_DIR, "1")
    produce(kafka_bootstrap, topics["models"], [(b"m", MODEL.encode(model))])
    produce(
        kafka_bootstrap,
        topics["data"],
        [(str(r.user).encode(), RECORD.encode(r)) for r in generated_records(7, records)],
    )

    pods = []
    environments = [pod_environment(container, config, ordinal, tmp_path, overrides) for ordinal in range(2)]
    for env in environments:  # the init containers, then the container: exactly their commands
        waited = subprocess.run(
            [sys.executable, str(scripts / "wait_for_topics.py")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert waited.returncode == 0 and "topics ready" in waited.stdout, waited.stdout + waited.stderr
        subprocess.run(["sh", str(scripts / "init-recovery.sh")], env=env, check=True, capture_output=True)
    assert container["command"] == ["sh", "/opt/serving-scripts/entrypoint.sh"]
    for env in environments:
        pods.append(
            subprocess.Popen(
                ["sh", str(scripts / "entrypoint.sh")],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        results = consume_all(kafka_bootstrap, topics["results"], records, timeout=180)
        states = [
            fetch(f"http://127.0.0.1{ordinal}:{config['SERVING_STATE_PORT']}/state", timeout_s=5)
            for ordinal in range(2)
        ]
        readiness = [
            urllib3.request("GET", f"http://127.0.0.1:{env['BYTEWAX_DATAFLOW_API_PORT']}/dataflow").status
            for env in environments
        ]
    finally:
        outputs = []
        for pod in pods:
            pod.send_signal(signal.SIGTERM)
        for pod in pods:
            try:
                outputs.append(pod.communicate(timeout=60)[0])
            except subprocess.TimeoutExpired:
                pod.kill()
                outputs.append(pod.communicate()[0])
    assert len(results) >= records, "\n".join(output[-3000:] for output in outputs)
    for ordinal, output in enumerate(outputs):
        assert (
            f"entrypoint: process {ordinal} of 2, 2 workers each; addresses 127.0.0.10:2101;127.0.0.11:2101"
            in output
        ), output[-3000:]
    assert {dict(message.headers())[SOURCE_PARTITION_HEADER] for message in results} == {
        b"0",
        b"1",
        b"2",
        b"3",
    }
    usage = [sum(model["usage"] for model in state["models"]) for state in states]
    assert all(share > 0 for share in usage), (
        f"a process scored nothing: {usage}"
    )  # both processes did their share
    assert sum(usage) == records
    assert {model["name"] for state in states for model in state["models"]} == {model.model_name}
    assert readiness == [200, 200]  # the probes' endpoint answers in each pod
    assert [pod.returncode for pod in pods] == [0, 0]
    partitions = int(config["BYTEWAX_RECOVERY_PARTITIONS"])  # spread over the two processes' directories
    assert [
        len(list((tmp_path / "recovery-store" / f"process-{i}").glob("part-*.sqlite3"))) for i in range(2)
    ] == [partitions // 2, partitions // 2]


def test_each_pod_runs_bytewax_with_its_process_id_and_the_peers_dns_names(tmp_path):
    container, config = pod_spec()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text(
        '#!/bin/sh\necho "peers $SERVING_STATE_PEERS"\necho "python $*"\n'
    )  # prints the command it would run, and the peers of its live page
    (fake_bin / "python").chmod(0o755)
    for ordinal in range(2):
        env = pod_environment(container, config, ordinal, tmp_path, {})
        del env["BYTEWAX_PEER_HOST_TEMPLATE"]  # as in the pod: peers by their DNS names
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
        done = subprocess.run(
            ["sh", str(K8S / "base" / "scripts" / "entrypoint.sh")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        recovery = f"{env['BYTEWAX_RECOVERY_STORE']}/process-{ordinal}"
        addresses = "serving-0.serving.model-serving.svc:2101;serving-1.serving.model-serving.svc:2101"
        assert (
            done.stdout.splitlines()[-1]
            == f"python -m bytewax.run flows.serving -w 2 -i {ordinal} -a {addresses} -r {recovery} -s 1 -b 0"
        )
        state = "http://serving-{}.serving.model-serving.svc:8081/state"
        assert done.stdout.splitlines()[-2] == f"peers {state.format(0)},{state.format(1)}"


def init_recovery(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(K8S / "base" / "scripts" / "init-recovery.sh")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def regroup_job(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The recovery-regroup CronJob's container command, as its Job runs it."""
    cronjob = yaml.safe_load((K8S / "base" / "recovery-regroup-cronjob.yaml").read_text())
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == ["serving-scale"]
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, check=False)


def test_the_scaling_steps_of_k8s_readme_regroup_the_shared_recovery_store(tmp_path):
    container, config = pod_spec()
    pods = lambda processes: [
        pod_environment(container, config, ordinal, tmp_path, {"BYTEWAX_PROCESSES": str(processes)})
        for ordinal in range(processes)
    ]
    first = [init_recovery(env) for env in pods(2)]  # pod 0 creates the store, pod 1 finds its directory
    assert [done.returncode for done in first] == [0, 0], [done.stderr for done in first]
    assert "8 recovery partitions (up to 8 workers)" in first[0].stdout

    # kubectl scale --replicas=3 alone: the new pod, and every pod after a restart, refuses the layout
    refused = init_recovery(pods(3)[0])
    assert refused.returncode == 1 and "laid out for 2 processes, BYTEWAX_PROCESSES is 3" in refused.stderr
    # the README's steps: every pod stopped, BYTEWAX_PROCESSES=3 in serving-scale, the regroup Job, start
    regrouped = regroup_job(pods(3)[0])
    assert regrouped.returncode == 0, regrouped.stderr
    assert [init_recovery(env).returncode for env in pods(3)] == [0, 0, 0]
    layout = {
        directory.name: sorted(
            int(path.name.split("-")[1].split(".")[0]) for path in directory.glob("part-*.sqlite3")
        )
        for directory in sorted((tmp_path / "recovery-store").glob("process-*"))
    }
    assert layout == {"process-0": [0, 3, 6], "process-1": [1, 4, 7], "process-2": [2, 5]}
    # 8 partitions hold at most 8 workers: 5 processes of 2 are refused before anything moves
    too_many = regroup_job(pods(5)[0])
    assert too_many.returncode == 2 and "fewer than 10 workers" in too_many.stderr


def test_the_image_installs_a_built_wheel_and_nothing_of_the_source_tree():
    dockerfile = (K8S / "Dockerfile").read_text()
    build, image = dockerfile.split("\nFROM python:3.11.13-slim\n")
    assert "pip wheel --no-deps" in build and "COPY flows ./flows" in build
    assert "COPY --from=build /wheels /wheels" in image and "pip install /wheels/*.whl" in image
    assert "COPY flows" not in image and "pip install -e" not in dockerfile
    assert "USER 10001" in image


PROJECT_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PROJECT_IMAGE = "ghcr.io/model-serving/bytewax-serving"


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None without one); a registry's port is not a tag."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_image_tag_reads_a_reference():
    assert image_tag("apache/kafka:3.9.1") == "3.9.1"
    assert image_tag("registry.local:5000/serving") is None
    assert image_tag("registry.local:5000/serving:0.1.0") == "0.1.0"
    assert image_tag("tensorflow/serving") is None


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned_and_the_project_image_is_the_project_version(overlay):
    images = {
        container["image"]
        for template in pod_templates(rendered(overlay)).values()
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]
    }
    assert images
    loose = {image for image in images if image_tag(image) in {None, "latest"}}
    assert loose == set()
    assert {image for image in images if image.startswith(f"{PROJECT_IMAGE}:")} == {
        f"{PROJECT_IMAGE}:{PROJECT_VERSION}"
    }


def images_in(node) -> list[str]:
    """Every `image:` value anywhere in a parsed manifest."""
    if isinstance(node, dict):
        here = [node["image"]] if isinstance(node.get("image"), str) else []
        return here + [image for value in node.values() for image in images_in(value)]
    if isinstance(node, list):
        return [image for item in node for image in images_in(item)]
    return []


def test_the_manifests_and_the_dockerfile_name_no_moving_tag():
    """Also outside what kustomize renders: the raw files (which a reader copies) and the image's base."""
    for path in K8S.rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            for image in images_in(document):
                assert image_tag(image) not in {None, "latest"}, f"{path}: {image}"
    dockerfile = (K8S / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in dockerfile if line.startswith("FROM ")]
    # A patch release (X.Y.Z-...), not a line that moves (3.11-slim).
    assert bases and all(image_tag(base).count(".") == 2 for base in bases), bases


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In / NotIn / Exists) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def port_matches(rule_port: dict, name: str | None, number: int) -> bool:
    assert rule_port.get("protocol", "TCP") == "TCP" and "endPort" not in rule_port, rule_port
    return rule_port["port"] in {name, number}


def admitted(documents: list[dict], labels: dict[str, str], port_name: str | None, port: int) -> set[str]:
    """Who the namespace's NetworkPolicies let reach a pod with `labels` on a port: the workloads of the
    rendering by name, other namespaces as 'namespace:SELECTOR', anyone as '*'. Empty: nobody but the node
    (probes)."""
    templates = pod_templates(documents)
    sources: set[str] = set()
    for policy in (document for document in documents if document["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        assert "Ingress" in spec["policyTypes"], policy["metadata"]["name"]
        if not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            if rule.get("ports") and not any(port_matches(p, port_name, port) for p in rule["ports"]):
                continue
            if not rule.get("from"):
                sources.add("*")
            for peer in rule.get("from", []):
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    sources.add(f"namespace:{peer['namespaceSelector']}")
                    continue
                sources |= {
                    name
                    for name, template in templates.items()
                    if selects(peer["podSelector"], template["metadata"]["labels"])
                }
    return sources


def test_admitted_reads_selectors_ports_and_peers():
    """The policy evaluator the tests below rely on, on a small namespace: it must be able to say no."""

    def workload(name: str, labels: dict[str, str]) -> dict:
        template = {"metadata": {"labels": labels}, "spec": {"containers": []}}
        return {"kind": "Deployment", "metadata": {"name": name}, "spec": {"template": template}}

    def policy(selector: dict, ingress: list[dict]) -> dict:
        spec = {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress}
        return {"kind": "NetworkPolicy", "metadata": {"name": "p"}, "spec": spec}

    documents = [
        workload("db", {"app": "db"}),
        workload("client", {"app": "client", "role": "client"}),
        workload("other", {"app": "other"}),
        policy({}, []),
        policy(
            {"matchLabels": {"app": "db"}},
            [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "sql"}]}],
        ),
        policy(
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
            [{"from": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}], "ports": [{"port": 9100}]}],
        ),
    ]
    assert admitted(documents, {"app": "db"}, "sql", 5432) == {"client"}
    assert admitted(documents, {"app": "db"}, "metrics", 9100) == {
        "namespace:{'matchLabels': {'team': 'ops'}}"
    }
    assert admitted(documents, {"app": "db"}, "admin", 8080) == set()
    assert admitted(documents, {"app": "other"}, "http", 80) == set()
    documents.append(policy({"matchLabels": {"app": "other"}}, [{}]))
    assert admitted(documents, {"app": "other"}, "http", 80) == {"*"}


# Who reaches each port of each pod, in every overlay (more in some, below). A port added without a decision
# here fails the test, as does a policy that opens a port to one more workload.
KAFKA_CLIENTS = {"serving", "kafka-topics", "publish-model"}
ADMITTED = {
    ("kafka", "broker"): KAFKA_CLIENTS | {"kafka"},
    ("kafka", "controller"): {"kafka"},
    ("serving", "worker"): {"serving"},
    ("serving", "api"): {"serving", "otel-collector"},
    ("serving", "state"): {"serving", "otel-collector"},
    ("otel-collector", "otlp-grpc"): {"serving"},
    ("otel-collector", "otlp-http"): {"serving"},
    ("otel-collector", "health"): set(),
    ("jaeger", "otlp-grpc"): {"otel-collector"},
    ("jaeger", "otlp-http"): {"otel-collector"},
    ("jaeger", "ui"): set(),
    ("jaeger", "health"): set(),
    ("otel-collector", "prometheus"): {"prometheus"},
    ("prometheus", "http"): {
        "grafana",
        "namespace:" + str({"matchLabels": {"kubernetes.io/metadata.name": "keda"}}),
    },
    ("grafana", "http"): set(),
}
ADMITTED_IN = {
    "embedded": ADMITTED,
    "embedded-onnx": ADMITTED,
    "tfserving": ADMITTED
    | {("tfserving", "grpc"): {"serving"}, ("tfserving", "rest"): {"serving", "publish-model"}},
    "seldon": ADMITTED,
    "embedded-sasl": ADMITTED,
    "embedded-autoscaled": ADMITTED,
}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_denied_by_default_and_every_port_open_only_to_its_clients(overlay):
    documents = rendered(overlay)
    policies = [document for document in documents if document["kind"] == "NetworkPolicy"]
    assert any(
        policy["spec"]["podSelector"] == {}
        and policy["spec"]["policyTypes"] == ["Ingress"]
        and not policy["spec"].get("ingress")
        for policy in policies
    ), "no default-deny ingress policy"
    templates = pod_templates(documents)
    assert {
        "serving",
        "kafka",
        "kafka-topics",
        "publish-model",
        "otel-collector",
        "jaeger",
        "prometheus",
        "grafana",
    } <= set(templates)
    actual = {
        (name, port.get("name")): admitted(
            documents, template["metadata"]["labels"], port.get("name"), port["containerPort"]
        )
        for name, template in templates.items()
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
    }
    assert actual == ADMITTED_IN[overlay]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exactly_the_kafka_clients_carry_the_kafka_client_label(overlay):
    labelled = {
        name
        for name, template in pod_templates(rendered(overlay)).items()
        if template["metadata"]["labels"].get("serving.bytewax.io/kafka-client") == "true"
    }
    assert labelled == KAFKA_CLIENTS


@needs_kubectl
def test_of_our_pods_only_the_flow_and_the_publish_job_reach_the_seldon_mesh_and_none_its_servers():
    """Seldon's pods are created by its operator, not rendered here: their labels as the operator sets
    them."""
    documents = rendered("seldon")
    assert admitted(documents, {"app.kubernetes.io/name": "seldon-envoy"}, None, 9000) == {
        "serving",
        "publish-model",
    }
    server = {"app.kubernetes.io/name": "seldon-server", "seldon-server-name": "recommender-triton"}
    assert admitted(documents, server, None, 9500) == set()  # Envoy and Seldon's other components only


def container(template: dict, name: str) -> dict:
    return next(c for c in template["spec"]["containers"] if c["name"] == name)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flow_takes_its_trusted_keys_from_a_secret_whose_placeholder_it_refuses(overlay):
    documents = rendered(overlay)
    dataflow = container(pod_templates(documents)["serving"], "dataflow")
    (variable,) = [v for v in dataflow["env"] if v["name"] == "SERVING_MODEL_TRUSTED_KEYS"]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert not reference.get("optional", False)  # no Secret, no flow: never a flow without the check
    (secret,) = [d for d in documents if d["kind"] == "Secret" and d["metadata"]["name"] == reference["name"]]
    shipped = secret["stringData"][reference["key"]]
    with pytest.raises(ValueError, match="neither a PEM file nor a base64 Ed25519 key"):
        parse_trusted_keys(shipped)  # the flow exits at start until an operator puts a real key there


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_publish_job_signs_with_a_key_from_a_secret_that_is_not_in_the_manifests(overlay):
    documents = rendered(overlay)
    template = pod_templates(documents)["publish-model"]
    publish = container(template, "publish")
    line = publish["command"] + publish["args"]
    assert line[:3] == ["python", "-m", "flows.tools.publish_model"]
    key_path = Path(line[line.index("--sign") + 1])
    (mount,) = [m for m in publish["volumeMounts"] if Path(m["mountPath"]) == key_path.parent]
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    assert mount.get("readOnly") and volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    assert template["spec"]["securityContext"]["fsGroup"] == template["spec"]["securityContext"]["runAsGroup"]
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    assert volume["secret"]["secretName"] not in secrets  # created by the operator, never committed


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flow_signs_its_markers_with_a_key_from_a_secret_that_is_not_in_the_manifests(overlay):
    documents = rendered(overlay)
    dataflow = container(pod_templates(documents)["serving"], "dataflow")
    (variable,) = [v for v in dataflow["env"] if v["name"] == "SERVING_KAFKA_MARKER_KEY"]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert not reference.get("optional", False)  # no Secret, no flow: never unsigned markers
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    assert reference["name"] not in secrets  # created by the operator, never committed


def test_no_private_key_is_committed_under_k8s():
    assert [path for path in K8S.rglob("*") if path.is_file() and b"PRIVATE KEY" in path.read_bytes()] == []


def acl_grants(script: str) -> set[tuple[str, str, str, str]]:
    """(principal, operation, 'topic', 'group' or 'transactional-id', name) of each
    `acls --allow-principal ...` line of kafka-acls.sh, its variables substituted; a prefixed pattern's name
    ends with '*'."""
    lines = script.replace("\\\n", " ").splitlines()
    variables = dict(line.split("=", 1) for line in lines if line.split("=", 1)[0].isidentifier())
    grants = set()
    for line in lines:
        if not line.startswith("acls "):
            continue
        words = [
            re.sub(r"\$(\w+)", lambda name: variables.get(name[1], name[0]), word)
            for word in shlex.split(line)[1:]
        ]
        options: dict[str, list[str]] = {}
        for flag, value in zip(words[::2], words[1::2], strict=True):
            options.setdefault(flag, []).append(value)
        (principal,) = options.pop("--allow-principal")
        suffix = "*" if options.pop("--resource-pattern-type", None) == ["prefixed"] else ""
        for operation in options.pop("--operation"):
            for kind in ("topic", "group", "transactional-id"):
                grants |= {
                    (principal, operation, kind, name + suffix) for name in options.pop(f"--{kind}", [])
                }
        assert options == {}, line
    return grants


def test_the_kafka_acls_give_each_principal_only_its_topics():
    sasl = K8S / "components" / "kafka-sasl"
    grants = acl_grants((sasl / "kafka-acls.sh").read_text())
    topics = yaml.safe_load((K8S / "base" / "serving-config.yaml").read_text())["data"]
    data, models = topics["SERVING_KAFKA_DATA_TOPIC"], topics["SERVING_KAFKA_MODELS_TOPIC"]
    flow_output = {
        topics[f"SERVING_KAFKA_{name}_TOPIC"]
        for name in ("RESULTS", "DEAD_LETTERS", "EVENTS", "CHALLENGER", "EXPLANATIONS", "ANSWERED")
    }

    def who(operation: str, topic: str) -> set[str]:
        return {p for p, o, kind, name in grants if (o, kind) == (operation, "topic") and name == topic}

    assert who("Write", models) == {"User:model-publisher", "User:retrain"}
    assert who("Write", data) == {"User:record-producer"}
    assert all(who("Write", topic) == {"User:serving"} for topic in flow_output)
    answered = topics["SERVING_KAFKA_ANSWERED_TOPIC"]
    assert {name for p, o, kind, name in grants if (p, o, kind) == ("User:serving", "Read", "topic")} == {
        data,
        models,
        answered,  # its own exactly-once markers, read back at each start
    }
    results = topics["SERVING_KAFKA_RESULTS_TOPIC"]
    assert {name for p, o, kind, name in grants if kind == "transactional-id"} == {f"serving.{results}.*"}
    assert {name for p, o, kind, name in grants if (p, o, kind) == ("User:retrain", "Read", "topic")} == {
        topics["SERVING_KAFKA_EVENTS_TOPIC"]
    }
    assert {
        name for p, o, kind, name in grants if (p, o, kind) == ("User:results-reader", "Read", "topic")
    } == {
        results,
        topics["SERVING_KAFKA_EXPLANATIONS_TOPIC"],  # joined to the results by data offset
    }
    written = {name for p, o, kind, name in grants if (o, kind) == ("Write", "topic")}
    assert written == {data, models} | flow_output  # every topic the script names is one of serving-config's


@needs_kubectl
def test_with_sasl_the_broker_authenticates_and_authorizes_and_each_client_has_its_own_credentials():
    documents = rendered("embedded-sasl")
    templates = pod_templates(documents)
    broker = {e["name"]: e.get("value") for e in container(templates["kafka"], "kafka")["env"]}
    assert broker["KAFKA_LISTENERS"].startswith("SASL_PLAINTEXT://:9092,")
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in broker["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert broker["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert broker["KAFKA_AUTHORIZER_CLASS_NAME"].endswith(".StandardAuthorizer")
    assert broker["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    # PLAINTEXT (whose principal is the super user) only on the controller port and the loopback.
    plaintext = [
        listener
        for listener in broker["KAFKA_LISTENERS"].split(",")
        if listener.split("://")[0] in {"CONTROLLER", "LOCAL"}
    ]
    assert plaintext == ["CONTROLLER://:9093", "LOCAL://127.0.0.1:9094"]

    rendered_secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}

    def credentials(name: str, container_name: str) -> set[str]:
        found = {
            source["secretRef"]["name"]
            for source in container(templates[name], container_name).get("envFrom", [])
            if "secretRef" in source
        }
        assert found and found.isdisjoint(rendered_secrets)  # created by the operator, not committed
        return found

    assert credentials("serving", "dataflow") == {"kafka-client"}
    assert credentials("publish-model", "publish") == {"kafka-client-publisher"}
    topics_job = templates["kafka-topics"]
    command_config = {e["name"]: e["value"] for e in container(topics_job, "create-topics")["env"]}[
        "KAFKA_COMMAND_CONFIG"
    ]
    mount = next(
        m
        for m in container(topics_job, "create-topics")["volumeMounts"]
        if Path(command_config).parent == Path(m["mountPath"])
    )
    volume = next(v for v in topics_job["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] not in rendered_secrets


@needs_kubectl
def test_the_onnx_overlay_serves_onnx_only_and_asks_for_less_memory_than_the_tensorflow_one():
    def served(overlay: str) -> tuple[dict, dict, list[str]]:
        documents = rendered(overlay)
        config = next(
            d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "serving-config"
        )
        templates = pod_templates(documents)
        [dataflow] = [c for c in templates["serving"]["spec"]["containers"] if c["name"] == "dataflow"]
        [publish] = templates["publish-model"]["spec"]["containers"]
        return config["data"], dataflow["resources"], publish["args"]

    config, resources, published = served("embedded-onnx")
    assert parse_model_types(config["SERVING_MODEL_TYPES"]) == (ModelType.ONNX,)
    assert published == ["--version", "1-onnx"]
    tensorflow_config, tensorflow_resources, _ = served("embedded")
    assert "SERVING_MODEL_TYPES" not in tensorflow_config  # every type: TensorFlow's memory asked for
    for bound in ("requests", "limits"):
        onnx_mib = int(resources[bound]["memory"].removesuffix("Mi"))
        tensorflow_mib = int(tensorflow_resources[bound]["memory"].removesuffix("Gi")) * 1024
        assert onnx_mib < tensorflow_mib / 2
