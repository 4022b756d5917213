"""Static policy of every rendered overlay (real ``kubectl kustomize``): the pods it makes.

Every pod the deployment produces is modelled from the manifests, including those the
operators build from our templates: KubeRay's head and worker pods (with the autoscaler
sidecar and the wait-gcs-ready init container KubeRay adds, which copies the Ray
container's security context), the Flink JobManager and TaskManagers (pod template plus
jobManager/taskManager resources and image), and Strimzi's Kafka, entity operator and
exporter pods (their templates). For each pod and container:

* Pod Security "restricted" (Kubernetes 1.33): non-root, no privilege escalation,
  capabilities dropped (ALL), seccomp RuntimeDefault, allowed volume types only, no host
  namespaces, ports or privileged containers; plus a read-only root filesystem;
* requests and limits for CPU and memory;
* images with a tag that is not ``latest``;
* secrets never on a command line.

Then the namespace's Pod Security labels, the NetworkPolicies (evaluated: who can reach
which pod on which port), Kafka's TLS/SCRAM listener and the KafkaUsers' ACLs, and the
checkov skip annotations. Broken manifests written inline prove each check can fail.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from aircast.settings import CollectSettings, FlinkSettings, KafkaSettings
from aircast_cli.commands.keep import STAGES
from tests.test_kuberay import (
    KUBERAY,
    TARGETS,
    Doc,
    _of,
    _one,
    keeper_containers,
    keeper_stage_envs,
    render,
)

RESTRICTED_VOLUMES = {
    *("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral"),
    *("persistentVolumeClaim", "projected", "secret"),
}
SECRET_FLAGS = re.compile(r"--(?:requirepass|password|redis-password|token|sasl-password)\b")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {target: render(target) for target in TARGETS}


# -- the pods, as the cluster will run them --------------------------------------------------


@dataclass
class Pod:
    where: str
    labels: dict[str, str]
    spec: Doc  # the pod spec (securityContext, volumes, topologySpreadConstraints, ...)
    containers: list[Doc]  # containers and init containers, as they will run
    own_images: bool = True  # False: the operator picks the image (Strimzi)
    extra: dict[str, Any] = field(default_factory=dict)


def _template_pod(where: str, template: Doc) -> Pod:
    spec = template.get("spec", {})
    return Pod(
        where,
        dict(template.get("metadata", {}).get("labels", {})),
        spec,
        [*spec.get("initContainers", []), *spec.get("containers", [])],
    )


def _ray_pods(kind: str, name: str, cluster: Doc) -> Iterator[Pod]:
    """Head and worker pods of a RayCluster spec, with what KubeRay adds to them."""
    cluster_name = name if kind == "RayCluster" else f"{name}-raycluster"
    head = _template_pod(f"{kind}/{name} head", cluster["headGroupSpec"]["template"])
    head.labels |= {"ray.io/node-type": "head", "ray.io/cluster": cluster_name}
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions", {})
        head.containers.append(
            {
                "name": "autoscaler",
                "image": head.containers[0]["image"],
                "securityContext": options.get("securityContext"),
                "resources": options.get("resources"),
                "volumeMounts": options.get("volumeMounts", []),
            }
        )
    yield head
    for group in cluster.get("workerGroupSpecs", []):
        worker = _template_pod(f"{kind}/{name} {group['groupName']}", group["template"])
        worker.labels |= {"ray.io/node-type": "worker", "ray.io/cluster": cluster_name}
        ray = worker.spec["containers"][0]
        wait = {  # KubeRay's init container: the Ray container's image and security context
            "name": "wait-gcs-ready",
            "image": ray["image"],
            "securityContext": copy.deepcopy(ray.get("securityContext")),
            "resources": {
                "requests": {"cpu": "200m", "memory": "256Mi"},
                "limits": {"cpu": "200m", "memory": "256Mi"},
            },
        }
        worker.containers.insert(0, wait)
        yield worker


def _merge_pod_spec(base: Doc, role: Doc) -> Doc:
    """A Flink role's pod template over the common one (containers merged by name)."""
    merged = copy.deepcopy(base)
    for key, value in role.items():
        if key == "containers":
            by_name = {c["name"]: c for c in merged.get("containers", [])}
            for c in value:
                by_name[c["name"]] = {**by_name.get(c["name"], {}), **c}
            merged["containers"] = list(by_name.values())
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _flink_pods(doc: Doc) -> Iterator[Pod]:
    spec = doc["spec"]
    name = doc["metadata"]["name"]
    for role in ("jobManager", "taskManager"):
        part = spec[role]
        template = spec.get("podTemplate", {})
        pod_spec = _merge_pod_spec(
            template.get("spec", {}), part.get("podTemplate", {}).get("spec", {})
        )
        labels = {
            **template.get("metadata", {}).get("labels", {}),
            **part.get("podTemplate", {}).get("metadata", {}).get("labels", {}),
            "app": name,
            "type": "flink-native-kubernetes",
            "component": role.lower(),
        }
        resources = {"cpu": part["resource"].get("cpu"), "memory": part["resource"].get("memory")}
        main = next(c for c in pod_spec["containers"] if c["name"] == "flink-main-container")
        main.setdefault("image", spec["image"])
        # The operator sets the role's resource as requests and limits (limit factor 1).
        main["resources"] = {"requests": resources, "limits": resources}
        pod = Pod(f"FlinkDeployment/{name} {role}", labels, pod_spec, pod_spec["containers"])
        pod.extra["replicas"] = part.get("replicas", 1) if role == "jobManager" else None
        yield pod


def _strimzi_pods(docs: list[Doc]) -> Iterator[Pod]:
    for kafka in _of(docs, "Kafka"):
        cluster = kafka["metadata"]["name"]
        template = kafka["spec"]["kafka"].get("template", {})
        for pool in _of(docs, "KafkaNodePool"):
            if pool["metadata"]["labels"].get("strimzi.io/cluster") != cluster:
                continue
            own = pool["spec"].get("template", {})
            pod_t = own.get("pod", template.get("pod", {}))
            container_t = own.get("kafkaContainer", template.get("kafkaContainer", {}))
            labels = {
                "strimzi.io/cluster": cluster,
                "strimzi.io/kind": "Kafka",
                "strimzi.io/pool-name": pool["metadata"]["name"],
            }
            container = {
                "name": "kafka",
                "securityContext": container_t.get("securityContext"),
                "resources": pool["spec"].get("resources"),
            }
            yield Pod(
                f"KafkaNodePool/{pool['metadata']['name']}",
                labels,
                {k: v for k, v in pod_t.items() if k != "metadata"},
                [container],
                own_images=False,
            )
        entity = kafka["spec"].get("entityOperator", {})
        et = entity.get("template", {})
        containers = [
            {
                "name": part,
                "securityContext": et.get(f"{part}Container", {}).get("securityContext"),
                "resources": entity[part].get("resources"),
            }
            for part in ("topicOperator", "userOperator")
            if part in entity
        ]
        yield Pod(
            f"Kafka/{cluster} entity operator",
            {"strimzi.io/name": f"{cluster}-entity-operator"},
            et.get("pod", {}),
            containers,
            own_images=False,
        )
        if "kafkaExporter" in kafka["spec"]:
            exporter = kafka["spec"]["kafkaExporter"]
            xt = exporter.get("template", {})
            yield Pod(
                f"Kafka/{cluster} exporter",
                {"strimzi.io/name": f"{cluster}-kafka-exporter"},
                xt.get("pod", {}),
                [
                    {
                        "name": "kafka-exporter",
                        "securityContext": xt.get("container", {}).get("securityContext"),
                        "resources": exporter.get("resources"),
                    }
                ],
                own_images=False,
            )


def pods(docs: list[Doc]) -> list[Pod]:
    """Every pod the objects in ``docs`` make (RayJobs in HTTPMode make none)."""
    out: list[Pod] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"].get("name")
        if kind in ("Deployment", "StatefulSet", "Job"):
            pod = _template_pod(f"{kind}/{name}", doc["spec"]["template"])
            claims = doc["spec"].get("volumeClaimTemplates", [])
            pod.extra["claims"] = [t["metadata"]["name"] for t in claims]
            out.append(pod)
        elif kind == "CronJob":
            out.append(
                _template_pod(f"{kind}/{name}", doc["spec"]["jobTemplate"]["spec"]["template"])
            )
        elif kind == "Pod":
            out.append(_template_pod(f"Pod/{name}", doc))
        elif kind == "RayCluster":
            out += _ray_pods(kind, name, doc["spec"])
        elif kind == "RayService":
            out += _ray_pods(kind, name, doc["spec"]["rayClusterConfig"])
        elif kind == "RayJob":
            if doc["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode":
                template = doc["spec"].get("submitterPodTemplate")
                if template is None:
                    raise AssertionError(
                        f"RayJob/{name}: K8sJobMode without submitterPodTemplate runs "
                        "KubeRay's default submitter pod, which Pod Security restricted refuses"
                    )
                out.append(_template_pod(f"RayJob/{name} submitter", template))
            if "rayClusterSpec" in doc["spec"]:
                out += _ray_pods("RayJob", name, doc["spec"]["rayClusterSpec"])
        elif kind == "FlinkDeployment":
            out += _flink_pods(doc)
    return out + list(_strimzi_pods(docs))


# -- checks ----------------------------------------------------------------------------------


def _quantity_set(resources: Doc | None, kind: str, what: str) -> bool:
    value = (resources or {}).get(kind, {}).get(what)
    return value not in (None, "", 0)


def pod_security_problems(pod: Pod) -> list[str]:
    """Pod Security "restricted" and the deployment's own rules, for one pod."""
    problems: list[str] = []
    spec = pod.spec
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{pod.where}: {key}")
    for volume in spec.get("volumes", []):
        types = set(volume) - {"name"}
        if not types <= RESTRICTED_VOLUMES:
            problems.append(f"{pod.where}: volume {volume['name']} of type {sorted(types)}")
    if psc.get("runAsUser") == 0:
        problems.append(f"{pod.where}: runAsUser 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for c in pod.containers:
        where = f"{pod.where}/{c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {caps['add']}")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is {seccomp}, not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
        resources = c.get("resources")
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if not _quantity_set(resources, kind, what):
                    problems.append(f"{where}: no {what} {kind}")
        if pod.own_images:
            image = str(c.get("image", ""))
            name, sep, tag = image.rpartition(":")
            if not image or not sep or "/" in tag or not name or tag == "latest":
                problems.append(f"{where}: image {image!r} has no pinned tag")
    return problems


def mount_problems(pod: Pod) -> list[str]:
    """Every volume a container mounts is a volume of its pod (claim templates count)."""
    volumes = {v["name"] for v in pod.spec.get("volumes", [])} | set(pod.extra.get("claims", ()))
    return [
        f"{pod.where}/{c['name']}: no volume {m['name']}"
        for c in pod.containers
        for m in c.get("volumeMounts", [])
        if m["name"] not in volumes
    ]


def argv_secret_problems(pod: Pod) -> list[str]:
    """No secret on a command line: no $(VAR) expansion of a Secret-backed variable into
    command/args (Kubernetes substitutes it into argv), no password flags."""
    problems: list[str] = []
    for c in pod.containers:
        secret_vars = {
            e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
        }
        argv = [str(a) for a in [*c.get("command", []), *c.get("args", [])]]
        for arg in argv:
            for var in re.findall(r"\$\(([A-Za-z0-9_]+)\)", arg):
                if var in secret_vars:
                    problems.append(f"{pod.where}/{c['name']}: ${var} expands a Secret into argv")
            if SECRET_FLAGS.search(arg):
                problems.append(f"{pod.where}/{c['name']}: password flag in {arg!r}")
    return problems


def secret_file_problems(pod: Pod) -> list[str]:
    """Every <NAME>_FILE variable names a file under a mounted Secret volume."""
    secret_volumes = {v["name"] for v in pod.spec.get("volumes", []) if "secret" in v}
    problems: list[str] = []
    for c in pod.containers:
        mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
        for var in c.get("env", []):
            is_file = var["name"].endswith("_FILE") and "value" in var
            if is_file and not any(var["value"].startswith(m.rstrip("/") + "/") for m in mounts):
                problems.append(
                    f"{pod.where}/{c['name']}: {var['name']} is not in a mounted Secret"
                )
    return problems


# -- tests: pods -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_restricted_and_bounded(target: str, rendered: dict[str, list[Doc]]) -> None:
    backfill = yaml.safe_load((KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text())
    all_pods = pods([*rendered[target], backfill])
    kinds = {p.where.split("/")[0] for p in all_pods}
    assert {"RayService", "RayCluster", "FlinkDeployment", "StatefulSet", "Deployment"} <= kinds
    assert {"Job", "CronJob", "KafkaNodePool", "Kafka"} <= kinds
    problems = [p for pod in all_pods for p in pod_security_problems(pod)]
    problems += [p for pod in all_pods for p in argv_secret_problems(pod)]
    problems += [p for pod in all_pods for p in secret_file_problems(pod)]
    problems += [p for pod in all_pods for p in mount_problems(pod)]
    assert not problems, "\n".join(problems)


def test_namespace_enforces_restricted(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        labels = _one(docs, "Namespace", "aircast")["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


BROKEN_PODS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: loose}
spec:
  selector: {matchLabels: {app: loose}}
  template:
    metadata: {labels: {app: loose}}
    spec:
      hostNetwork: true
      securityContext: {runAsUser: 0}
      volumes:
        - {name: host, hostPath: {path: /var/run}}
      containers:
        - name: root
          image: redis
          args: [--requirepass, $(REDIS_PASSWORD)]
          env:
            - name: REDIS_PASSWORD
              valueFrom: {secretKeyRef: {name: aircast-secrets, key: redis-password}}
            - {name: TOKEN_FILE, value: /nowhere/token}
          ports: [{containerPort: 6379, hostPort: 6379}]
          securityContext:
            privileged: true
            capabilities: {add: [NET_ADMIN]}
          resources: {requests: {cpu: 100m}}
---
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: bare}
spec:
  enableInTreeAutoscaling: true
  headGroupSpec:
    rayStartParams: {}
    template:
      spec:
        securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
        containers:
          - name: ray-head
            image: aircast-ray:0.1.0
            securityContext:
              allowPrivilegeEscalation: false
              readOnlyRootFilesystem: true
              capabilities: {drop: [ALL]}
            resources:
              requests: {cpu: "1", memory: 1Gi}
              limits: {cpu: "1", memory: 1Gi}
---
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: submitter}
spec:
  entrypoint: python -m x
  clusterSelector: {ray.io/cluster: bare}
"""


def test_loose_pods_are_refused() -> None:
    deployment, cluster, job = yaml.safe_load_all(BROKEN_PODS)
    (loose,) = pods([deployment])
    problems = pod_security_problems(loose)
    expected = [
        "Deployment/loose: hostNetwork",
        "Deployment/loose: volume host of type ['hostPath']",
        "Deployment/loose: runAsUser 0",
        "Deployment/loose/root: runAsNonRoot is not true",
        "Deployment/loose/root: allowPrivilegeEscalation is not false",
        "Deployment/loose/root: privileged",
        "Deployment/loose/root: capabilities do not drop ALL",
        "Deployment/loose/root: adds capabilities ['NET_ADMIN']",
        "Deployment/loose/root: seccompProfile is None, not RuntimeDefault",
        "Deployment/loose/root: root filesystem is writable",
        "Deployment/loose/root: hostPort 6379",
        "Deployment/loose/root: no memory requests",
        "Deployment/loose/root: no cpu limits",
        "Deployment/loose/root: image 'redis' has no pinned tag",
    ]
    for line in expected:
        assert line in problems, (line, problems)
    argv = argv_secret_problems(loose)
    assert "Deployment/loose/root: $REDIS_PASSWORD expands a Secret into argv" in argv
    assert any("password flag in '--requirepass'" in p for p in argv), argv
    assert secret_file_problems(loose) == [
        "Deployment/loose/root: TOKEN_FILE is not in a mounted Secret"
    ]
    # KubeRay's autoscaler sidecar without autoscalerOptions.securityContext/resources.
    head = pods([cluster])[0]
    head.containers[-1]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    assert mount_problems(head) == ["RayCluster/bare head/autoscaler: no volume tmp"]
    sidecar = [p for p in pod_security_problems(head) if "/autoscaler:" in p]
    assert "RayCluster/bare head/autoscaler: allowPrivilegeEscalation is not false" in sidecar
    assert "RayCluster/bare head/autoscaler: no cpu requests" in sidecar
    with pytest.raises(AssertionError, match="default submitter pod"):
        pods([job])


# -- tests: network ------------------------------------------------------------------------


def selects(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector against a label set ({} selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


@dataclass(frozen=True)
class Source:
    namespace: str
    namespace_labels: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]


def source(namespace: str, ns_labels: dict[str, str], labels: dict[str, str]) -> Source:
    ns = {"kubernetes.io/metadata.name": namespace, **ns_labels}
    return Source(namespace, tuple(ns.items()), tuple(labels.items()))


def _peer_matches(peer: Doc, src: Source, namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pod traffic only here
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    in_ns = (
        selects(ns_sel, dict(src.namespace_labels))
        if ns_sel is not None
        else (src.namespace == namespace)
    )
    return in_ns and (pod_sel is None or selects(pod_sel, dict(src.labels)))


def _port_matches(ports: list[Doc] | None, port: int) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != "TCP":
            continue
        low = int(p["port"])
        if low <= port <= int(p.get("endPort", low)):
            return True
    return False


def reachable(docs: list[Doc], target: dict[str, str], port: int, src: Source) -> bool:
    """May ``src`` open a TCP connection to ``port`` of a pod in aircast labelled
    ``target``, under the NetworkPolicies in ``docs``?"""
    selecting = [
        p
        for p in _of(docs, "NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], target)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if not _port_matches(rule.get("ports"), port):
                continue
            peers = rule.get("from")
            if not peers or any(_peer_matches(peer, src, "aircast") for peer in peers):
                return True
    return False


def egress_allowed(
    docs: list[Doc], src: dict[str, str], dest: Source, port: int, protocol: str = "TCP"
) -> bool:
    """May a pod in aircast labelled ``src`` open a connection to ``port`` of ``dest``,
    under the egress rules of the NetworkPolicies in ``docs``?"""
    selecting = [
        p
        for p in _of(docs, "NetworkPolicy")
        if "Egress" in p["spec"].get("policyTypes", []) and selects(p["spec"]["podSelector"], src)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress", []):
            ports = rule.get("ports")
            if ports and not any(
                p.get("protocol", "TCP") == protocol
                and int(p["port"]) <= port <= int(p.get("endPort", p["port"]))
                for p in ports
            ):
                continue
            peers = rule.get("to")
            if not peers or any(_peer_matches(peer, dest, "aircast") for peer in peers):
                return True
    return False


def _pod(all_pods: list[Pod], where: str) -> dict[str, str]:
    (found,) = [p for p in all_pods if p.where == where]
    return found.labels


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies(target: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[target]
    deny = _one(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    all_pods = pods(docs)
    serve_head = _pod(all_pods, "RayService/aircast head")
    serve_worker = _pod(all_pods, "RayService/aircast serve")
    pipe_head = _pod(all_pods, "RayCluster/aircast-pipeline head")
    pipe_worker = _pod(all_pods, "RayCluster/aircast-pipeline workers")
    jm = _pod(all_pods, "FlinkDeployment/aircast-flink jobManager")
    tm = _pod(all_pods, "FlinkDeployment/aircast-flink taskManager")
    redis = _pod(all_pods, "StatefulSet/redis")
    gcs = _pod(all_pods, "StatefulSet/redis-gcs")
    influx = _pod(all_pods, "StatefulSet/influxdb")
    grafana = _pod(all_pods, "Deployment/grafana")
    prometheus = _pod(all_pods, "Deployment/prometheus")
    provision = _pod(all_pods, "Job/influxdb-provision")
    exporter = _pod(all_pods, "Kafka/aircast exporter")
    keeper = _pod(all_pods, "Deployment/aircast-keeper")

    def inside(labels: dict[str, str]) -> Source:
        return source("aircast", {}, labels)

    outsider = source("elsewhere", {}, {"app": "curious"})
    stranger = inside({"app": "stray"})  # an unlabelled pod in the namespace
    operator_ns = source("kuberay-system", {"aircast.io/admin": "true"}, {"app": "operator"})
    admin_pod = inside({"aircast.io/admin": "true"})
    cleanup = {**pipe_head, "ray.io/node-type": "redis-cleanup"}

    matrix = [
        # (what, target labels, port, source, allowed)
        ("Serve HTTP from anywhere", serve_worker, 8000, outsider, True),
        ("Serve HTTP on the head from anywhere", serve_head, 8000, outsider, True),
        ("nothing else from outside", serve_worker, 8080, outsider, False),
        ("dashboard from an admin namespace", pipe_head, 8265, operator_ns, True),
        ("dashboard from an admin pod", serve_head, 8265, admin_pod, True),
        ("dashboard not from outside", pipe_head, 8265, outsider, False),
        ("dashboard not from its own workers", pipe_head, 8265, inside(pipe_worker), False),
        ("dashboard not from Serve", pipe_head, 8265, inside(serve_worker), False),
        ("dashboard not from Grafana", serve_head, 8265, inside(grafana), False),
        ("pipeline job API from the keeper", pipe_head, 8265, inside(keeper), True),
        ("Serve's job API not from the keeper", serve_head, 8265, inside(keeper), False),
        ("GCS not from the keeper", pipe_head, 6379, inside(keeper), False),
        ("Flink REST not from the keeper", jm, 8081, inside(keeper), False),
        ("nothing reaches the keeper", keeper, 8080, inside(pipe_head), False),
        ("GCS from the cluster's workers", pipe_head, 6379, inside(pipe_worker), True),
        ("raylet ports within a cluster", pipe_worker, 12345, inside(pipe_head), True),
        ("GCS not from the other cluster", pipe_head, 6379, inside(serve_worker), False),
        ("GCS not from a stray pod", serve_head, 6379, stranger, False),
        ("Ray metrics for Prometheus", pipe_worker, 8080, inside(prometheus), True),
        ("GCS store from the pipeline head", gcs, 6379, inside(pipe_head), True),
        ("GCS store from the Serve head", gcs, 6379, inside(serve_head), True),
        ("GCS store from KubeRay's cleanup Job", gcs, 6379, inside(cleanup), True),
        ("GCS store not from workers", gcs, 6379, inside(pipe_worker), False),
        ("GCS store not from Serve workers", gcs, 6379, inside(serve_worker), False),
        ("cache from Serve", redis, 6379, inside(serve_worker), True),
        ("cache from the scrapers", redis, 6379, inside(pipe_worker), True),
        ("cache not from Grafana", redis, 6379, inside(grafana), False),
        ("cache not from Flink", redis, 6379, inside(tm), False),
        ("InfluxDB from the collectors", influx, 8086, inside(pipe_worker), True),
        ("InfluxDB from Serve", influx, 8086, inside(serve_worker), True),
        ("InfluxDB from Grafana", influx, 8086, inside(grafana), True),
        ("InfluxDB from provisioning", influx, 8086, inside(provision), True),
        ("InfluxDB metrics for Prometheus", influx, 8086, inside(prometheus), True),
        ("InfluxDB not from Flink", influx, 8086, inside(tm), False),
        ("InfluxDB not from outside", influx, 8086, outsider, False),
        ("Flink RPC TaskManager to JobManager", jm, 6123, inside(tm), True),
        ("Flink REST from the operator's namespace", jm, 8081, operator_ns, True),
        ("Flink REST not from TaskManagers", jm, 8081, inside(tm), False),
        ("Flink REST not from Ray", jm, 8081, inside(pipe_worker), False),
        ("Flink RPC not from Ray", jm, 6123, inside(pipe_worker), False),
        ("Flink metrics for Prometheus", tm, 9249, inside(prometheus), True),
        ("Kafka exporter for Prometheus", exporter, 9404, inside(prometheus), True),
        ("Kafka exporter not from outside", exporter, 9404, outsider, False),
        ("Grafana for admins", grafana, 3000, operator_ns, True),
        ("Grafana not from outside", grafana, 3000, outsider, False),
        ("Prometheus for Grafana", prometheus, 9090, inside(grafana), True),
        ("Prometheus not from Ray", prometheus, 9090, inside(pipe_worker), False),
    ]
    wrong = [
        f"{what}: {'denied' if allowed else 'allowed'}"
        for what, labels, port, src, allowed in matrix
        if reachable(docs, labels, port, src) is not allowed
    ]
    assert not wrong, "\n".join(wrong)

    # The keeper's egress: names and the pipeline head's job API, nothing else; no
    # other pod's egress is restricted (the scrapers fetch the feed from the internet).
    dns = source("kube-system", {}, {"k8s-app": "kube-dns"})
    assert egress_allowed(docs, keeper, dns, 53, "UDP")
    assert egress_allowed(docs, keeper, dns, 53, "TCP")
    assert egress_allowed(docs, keeper, inside(pipe_head), 8265)
    assert not egress_allowed(docs, keeper, inside(pipe_head), 6379)
    assert not egress_allowed(docs, keeper, inside(serve_head), 8265)
    assert not egress_allowed(docs, keeper, inside(redis), 6379)
    assert not egress_allowed(docs, keeper, outsider, 443)
    assert egress_allowed(docs, pipe_worker, outsider, 443)

    # Kafka's listener (Strimzi turns its peers into the listener's NetworkPolicy).
    (listener,) = _one(docs, "Kafka", "aircast")["spec"]["kafka"]["listeners"]
    peers = listener["networkPolicyPeers"]

    def kafka_allows(src: Source) -> bool:
        return any(_peer_matches(peer, src, "aircast") for peer in peers)

    assert kafka_allows(inside(pipe_worker)) and kafka_allows(inside(pipe_head))
    assert kafka_allows(inside(jm)) and kafka_allows(inside(tm))
    assert kafka_allows(operator_ns) and kafka_allows(admin_pod)
    assert not kafka_allows(inside(serve_worker))
    assert not kafka_allows(inside(grafana)) and not kafka_allows(outsider)
    assert not kafka_allows(inside(keeper))  # its jobs log in from the Ray pods


def test_network_evaluator_semantics() -> None:
    """The evaluator itself: no policy = open, a selecting policy = closed but for its
    rules; empty ``from`` = everyone; port ranges; namespace and pod selectors ANDed."""
    policy = yaml.safe_load(
        """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p}
        spec:
          podSelector: {matchLabels: {app: db}}
          policyTypes: [Ingress]
          ingress:
            - from:
                - namespaceSelector: {matchLabels: {team: a}}
                  podSelector: {matchLabels: {role: client}}
              ports: [{port: 5000, endPort: 5010}]
            - ports: [{port: 80}]
        """
    )
    client_a = source("a", {"team": "a"}, {"role": "client"})
    other_a = source("a", {"team": "a"}, {"role": "other"})
    assert reachable([policy], {"app": "web"}, 1, other_a)  # not selected: open
    assert reachable([policy], {"app": "db"}, 5005, client_a)
    assert not reachable([policy], {"app": "db"}, 5011, client_a)
    assert not reachable([policy], {"app": "db"}, 5005, other_a)
    assert reachable([policy], {"app": "db"}, 80, other_a)
    assert selects({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, {})
    assert not selects({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, {})


# -- tests: Kafka --------------------------------------------------------------------------

Acl = tuple[str, str, str, str]  # resource type, name, pattern, operation


def acls(user: Doc) -> set[Acl]:
    out: set[Acl] = set()
    for rule in user["spec"]["authorization"]["acls"]:
        assert rule.get("type", "allow") == "allow", rule
        res = rule["resource"]
        for op in rule["operations"]:
            out.add((res["type"], res.get("name", ""), res.get("patternType", "literal"), op))
    return out


def expected_acls() -> dict[str, set[Acl]]:
    """What each component's code does with Kafka (aircast/settings.py names)."""
    k, flink, collect = KafkaSettings(), FlinkSettings(), CollectSettings()
    describe = {("topic", "aircast.", "prefix", "Describe")}

    def write(topic: str) -> Acl:
        return ("topic", topic, "literal", "Write")

    def read(topic: str) -> Acl:
        return ("topic", topic, "literal", "Read")

    return {
        "aircast-ingest": describe | {write(k.raw_topic), write(k.dead_letter_topic)},
        "aircast-flink": describe
        | {read(k.raw_topic), ("group", flink.group_id, "prefix", "Read")}
        | {write(k.readings_topic), write(k.aggregates_topic), write(k.dead_letter_topic)}
        | {("transactionalId", flink.group_id, "prefix", op) for op in ("Describe", "Write")},
        "aircast-collect": describe
        | {read(k.readings_topic), read(k.aggregates_topic), write(k.dead_letter_topic)}
        | {("group", collect.group_id, "literal", "Read")},
        "aircast-backfill": describe | {write(k.dead_letter_topic)},
    }


def test_kafka_users_have_least_privilege(rendered: dict[str, list[Doc]]) -> None:
    topics = {t["spec"]["topicName"] for t in _of(rendered["base"], "KafkaTopic")}
    assert all(t.startswith("aircast.") for t in topics)  # the Describe prefix covers them
    for docs in rendered.values():
        users = {u["metadata"]["name"]: u for u in _of(docs, "KafkaUser")}
        assert {name: acls(u) for name, u in users.items()} == expected_acls()
        for user in users.values():
            assert user["spec"]["authentication"]["type"] == "scram-sha-512"
            assert user["metadata"]["labels"]["strimzi.io/cluster"] == "aircast"


def test_each_component_logs_in_as_its_own_user(rendered: dict[str, list[Doc]]) -> None:
    backfill = yaml.safe_load((KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text())
    for docs in rendered.values():
        users = {u["metadata"]["name"] for u in _of(docs, "KafkaUser")}
        logins: dict[str, str] = {}
        # Flink: username and the same user's Secret in its pod template.
        main = _one(docs, "FlinkDeployment", "aircast-flink")["spec"]["podTemplate"]["spec"][
            "containers"
        ][0]
        env = {e["name"]: e for e in main["env"]}
        name = env["AIRCAST_KAFKA__SASL_USERNAME"]["value"]
        assert env["AIRCAST_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": name,
            "key": "password",
        }
        logins["flink"] = name
        # Ray jobs (the keeper's stages, RayJobs): username and a ${VAR} the pipeline pods
        # take from that user's Secret.
        pipeline = pods([_one(docs, "RayCluster", "aircast-pipeline")])
        jobs: list[tuple[str, dict[str, str]]] = []
        for job in [*_of(docs, "RayJob"), backfill]:
            runtime = yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}") or {}
            jobs.append((job["spec"]["entrypoint"], runtime.get("env_vars", {})))
        (keeper,) = keeper_containers(_one(docs, "Deployment", "aircast-keeper"))
        assert not [e for e in keeper["env"] if "valueFrom" in e]  # the keeper holds none
        for stage, env in keeper_stage_envs(keeper).items():
            jobs.append((f"python -m {STAGES[stage]}", env))
        for entrypoint, vars_ in jobs:
            if "AIRCAST_KAFKA__SASL_USERNAME" not in vars_:
                assert entrypoint == "python -m training.job"  # no Kafka
                continue
            user = vars_["AIRCAST_KAFKA__SASL_USERNAME"]
            var = re.fullmatch(r"\$\{(\w+)\}", vars_["AIRCAST_KAFKA__SASL_PASSWORD"]).group(1)
            for pod in pipeline:
                ray = next(c for c in pod.containers if c["name"].startswith("ray-"))
                ref = next(e for e in ray["env"] if e["name"] == var)["valueFrom"]["secretKeyRef"]
                assert ref == {"name": user, "key": "password"}, (entrypoint, ref)
            logins[entrypoint] = user
        assert set(logins.values()) == users
        assert len(set(logins.values())) == len(logins)  # no two components share a user


def test_kafka_clients_trust_the_cluster_ca(rendered: dict[str, list[Doc]]) -> None:
    """Every pod that talks to Kafka mounts the cluster CA, and the settings point every
    client at it (``kafka.ssl_ca_file``)."""
    path = "/etc/aircast/kafka-ca/ca.crt"
    for docs in rendered.values():
        kafka_pods = [
            p
            for p in pods(docs)
            if p.where.startswith(("RayCluster/aircast-pipeline", "FlinkDeployment"))
        ]
        assert kafka_pods
        for pod in kafka_pods:
            volumes = {v["name"]: v for v in pod.spec["volumes"]}
            main = next(
                c
                for c in pod.containers
                if c["name"] in ("ray-head", "ray-worker", "flink-main-container")
            )
            mount = next(m for m in main["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "aircast-cluster-ca-cert"
            assert {i["key"]: i["path"] for i in secret["items"]} == {"ca.crt": "ca.crt"}
    assert "ssl_ca_file" in KafkaSettings.model_fields
    env = _one(rendered["base"], "ConfigMap", "aircast-env")["data"]
    assert env.get("AIRCAST_KAFKA__SSL_CA_FILE") == path


# -- tests: checkov skips --------------------------------------------------------------------


def test_checkov_skips_carry_reasons(rendered: dict[str, list[Doc]]) -> None:
    """checkov.io/skipN annotations: CKV_..._N=<reason>, a real sentence each."""
    seen = 0
    for docs in rendered.values():
        for doc in docs:
            for key, value in doc["metadata"].get("annotations", {}).items():
                if not key.startswith("checkov.io/skip"):
                    continue
                seen += 1
                check, sep, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check) and sep, (doc["metadata"], value)
                assert len(reason.split()) >= 8, (doc["metadata"]["name"], value)
    assert seen
