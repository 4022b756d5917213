"""The Kubernetes deployment (kuberay/), validated offline.

Every manifest and every rendered overlay (real ``kubectl kustomize``) against the core
Kubernetes schemas (kubernetes-validate, strict) and the CRDs in ``<shared_dir>/../crds``
(openAPIV3Schema + CEL rules), then the deployment's own contracts: settings env vars,
secrets by reference, references that resolve, images, topics and buckets named as in the
settings, Flink checkpoints on a volume, and Grafana queries naming what the collector
writes. Broken manifests under tests/fixtures/kuberay prove each check can fail.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from aircast import telemetry
from aircast.measures import MEASURES
from aircast.queries import StoredForecast, forecast_lines
from aircast.records import Aggregate, Reading
from aircast.settings import FlinkSettings, KafkaSettings, ServeSettings, Settings
from tests.kube_validation import (
    CustomKind,
    load_crds,
    load_documents,
    validate,
    with_stand_ins,
)

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "kuberay"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kuberay"
TARGETS = ("base", "overlays/minikube", "overlays/production")
SECRET = "aircast-secrets"
OWN_IMAGES = {"aircast-ray": "ray", "aircast-flink": "flink"}  # name -> kuberay/images/<dir>
ALERTING_DIR = "/etc/grafana/provisioning/alerting"

Doc = dict[str, Any]


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def crd_dir() -> Path:
    shared = Settings().data.shared_dir
    shared = shared if shared.is_absolute() else REPO / shared
    return (shared / ".." / "crds").resolve()


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], CustomKind]:
    """The CRDs of the shared folder, plus stand-ins for kinds it lacks (KafkaUser)."""
    return with_stand_ins(load_crds(crd_dir()))[0]


def render(target: str) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render the overlays")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUBERAY / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {target} failed:\n{done.stderr}"
    return load_documents(done.stdout)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {target: render(target) for target in TARGETS}


def _kustomize_resources(folder: Path) -> Iterator[Path]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            yield from _kustomize_resources(path)
        else:
            yield path


def manifest_files() -> list[Path]:
    """Every whole manifest in kuberay/ (overlay patches are judged through the renders)."""
    files = set(_kustomize_resources(KUBERAY / "base"))
    files |= set((KUBERAY / "jobs").glob("*.yaml"))
    files.add(KUBERAY / "base" / "ray" / "rayjob-train.yaml")  # the CronJob's template
    return sorted(files)


def _of(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


# -- walking pod specs -------------------------------------------------------------------


def pod_specs(doc: Doc) -> Iterator[Doc]:
    """Every pod spec inside an object: Deployments, Jobs, CronJobs, Ray and Flink CRs."""

    def walk(node: Any) -> Iterator[Doc]:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    yield from walk(doc.get("spec", {}))


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_map_data(docs: list[Doc], name: str) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", name).get("data", {}))


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment; secret values appear as ``<secret>``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map_data(docs, source["configMapRef"]["name"]))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<secret>")
    return env


def runtime_env_vars(doc: Doc) -> dict[str, str]:
    text = doc.get("spec", {}).get("runtimeEnvYAML")
    return {} if not text else dict(yaml.safe_load(text).get("env_vars", {}))


KEEPER_CLUSTER = "aircast-pipeline"  # the cluster whose job API the keeper drives


def keeper_containers(doc: Doc) -> list[Doc]:
    """The containers of ``doc`` that run ``aircast keep``."""
    return [
        c
        for spec in pod_specs(doc)
        for c in spec["containers"]
        if [*c.get("command", []), *c.get("args", [])][:2] == ["aircast", "keep"]
    ]


def keeper_stage_envs(container: Doc) -> dict[str, dict[str, str]]:
    """Stage -> the runtime environment the keeper gives that stage's Ray job (its
    ``--env STAGE:NAME=VALUE`` options, parsed as aircast_cli/commands/keep.py does)."""
    from aircast_cli.commands.keep import stage_env

    argv = [str(a) for a in [*container.get("command", []), *container.get("args", [])]]
    pairs: list[str] = []
    for i, arg in enumerate(argv):
        if arg.startswith("--env="):
            pairs.append(arg.removeprefix("--env="))
        elif arg == "--env" and i + 1 < len(argv):
            pairs.append(argv[i + 1])
    return stage_env(pairs)


def job_environments(doc: Doc) -> list[tuple[str, dict[str, str]]]:
    """The runtime environments of the Ray jobs ``doc`` submits to a cluster: a RayJob's
    own, and each stage's of a keeper."""
    where = f"{doc['kind']}/{doc['metadata'].get('name') or doc['metadata'].get('generateName')}"
    out = [(f"{where}/runtimeEnv", runtime_env_vars(doc))] if runtime_env_vars(doc) else []
    for c in keeper_containers(doc):
        for stage, env in keeper_stage_envs(c).items():
            out.append((f"{where}/{c['name']} stage {stage}", env))
    return out


# -- checks (each returns problems, so fixtures can prove it fails) -------------------------

_TOP_LEVEL_ENV = {"AIRCAST_CONFIG"}


def setting_problem(name: str) -> str | None:
    """Why ``name`` is not a settings variable (None if it is one)."""
    if not name.startswith("AIRCAST_") or name in _TOP_LEVEL_ENV:
        return None
    rest = name.removeprefix("AIRCAST_").lower()
    section, sep, field = rest.partition("__")
    fields = Settings.model_fields
    if not sep:
        ok = section in fields and not hasattr(fields[section].annotation, "model_fields")
        return None if ok else f"{name}: no top-level setting {section!r}"
    model = fields[section].annotation if section in fields else None
    if model is None or not hasattr(model, "model_fields"):
        return f"{name}: no settings section {section!r}"
    if field not in model.model_fields:
        return f"{name}: no field {field!r} in settings section {section!r}"
    return None


def env_problems(docs: list[Doc], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Unknown AIRCAST_* names, and environments the settings refuse to load."""
    problems: list[str] = []
    environments: list[tuple[str, dict[str, str]]] = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata'].get('name', doc['metadata'].get('generateName'))}"
        for spec in pod_specs(doc):
            for c in containers(spec):
                environments.append((f"{where}/{c['name']}", container_env(docs, c)))
        environments += job_environments(doc)
        if doc["kind"] == "ConfigMap":
            environments.append((where, dict(doc.get("data", {}))))
    for where, env in environments:
        names = [n for n in env if n.startswith("AIRCAST_")]
        bad = [p for p in map(setting_problem, names) if p]
        problems += [f"{where}: {p}" for p in bad]
        if names and not bad and not where.startswith("ConfigMap/"):
            with monkeypatch.context() as m:
                for n in names:
                    m.setenv(n, "x" if env[n] == "<secret>" else env[n])
                try:
                    Settings()
                except ValueError as exc:
                    problems.append(f"{where}: settings refuse this environment: {exc}")
    return problems


def secret_keys() -> set[str]:
    """The keys kuberay/create-secrets.sh puts in aircast-secrets (its keys=(...) array)."""
    text = (KUBERAY / "create-secrets.sh").read_text(encoding="utf-8")
    found = re.search(r"^keys=\(\n(.*?)^\)", text, re.S | re.M)
    assert found, "create-secrets.sh has no keys=( ... ) array"
    return {line.split("#")[0].strip() for line in found.group(1).splitlines()} - {""}


# Secrets Strimzi creates: one per KafkaUser (SCRAM) and the cluster CA's public half.
KAFKA_USER_KEYS = {"password", "sasl.jaas.config"}
CLUSTER_CA_KEYS = {"ca.crt", "ca.p12", "ca.password"}


def allowed_secrets(docs: list[Doc]) -> dict[str, set[str]]:
    """Secret name -> the keys a manifest may reference: aircast-secrets (create-secrets.sh)
    and the Secrets Strimzi creates for the KafkaUsers and Kafka clusters in ``docs``."""
    allowed = {SECRET: secret_keys()}
    for user in _of(docs, "KafkaUser"):
        if user["spec"].get("authentication", {}).get("type") == "scram-sha-512":
            allowed[user["metadata"]["name"]] = KAFKA_USER_KEYS
    for kafka in _of(docs, "Kafka"):
        allowed[f"{kafka['metadata']['name']}-cluster-ca-cert"] = CLUSTER_CA_KEYS
    return allowed


def secret_problems(docs: list[Doc]) -> list[str]:
    problems = [f"Secret/{d['metadata']['name']} holds values" for d in _of(docs, "Secret")]
    allowed = allowed_secrets(docs)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict) and ref.get("key") not in allowed.get(ref.get("name"), ()):
                problems.append(
                    f"{path}: secretKeyRef {ref} is not a key of {SECRET} "
                    "or of a Secret Strimzi creates"
                )
            volume = node.get("secret")
            if isinstance(volume, dict) and "secretName" in volume:
                keys = allowed.get(volume["secretName"], set())
                wanted = {item["key"] for item in volume.get("items", [])}
                if not keys or not wanted <= keys:
                    problems.append(f"{path}: secret volume {volume} names unknown keys")
            name = str(node.get("name", ""))
            # <NAME>_FILE variables hold the path of a mounted Secret file, not a secret.
            is_path = name.endswith("_FILE") and str(node.get("value", "")).startswith("/")
            if re.search(r"PASSWORD|TOKEN", name) and "value" in node and not is_path:
                problems.append(f"{path}: {name} has a literal value")
            if "redisPassword" in node and "value" in node["redisPassword"]:
                problems.append(f"{path}: redisPassword has a literal value")
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for doc in docs:
        walk(doc, f"{doc['kind']}/{doc['metadata'].get('name')}")
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                if re.search(r"PASSWORD|TOKEN", key):
                    problems.append(f"ConfigMap/{doc['metadata']['name']}: {key} in plain text")
    return problems + runtime_env_secret_problems(docs)


def runtime_env_secret_problems(docs: list[Doc]) -> list[str]:
    """A Ray job's runtime environment is plain text (in a RayJob, or on the keeper's
    command line): a secret setting there must be a ${VAR} reference (Ray expands it on
    the cluster's pods) to a variable every pod of the job's cluster takes from a Secret,
    and a RayJob must be submitted in HTTPMode (K8sJobMode's submitter shell would expand
    the reference itself)."""
    problems: list[str] = []
    jobs: list[tuple[str, dict[str, str], str | None]] = []
    for job in _of(docs, "RayJob"):
        where = f"RayJob/{job['metadata'].get('name') or job['metadata'].get('generateName')}"
        env = runtime_env_vars(job)
        secret = any(re.search(r"PASSWORD|TOKEN", n) for n in env)
        if secret and job["spec"].get("submissionMode") != "HTTPMode":
            problems.append(f"{where}: secret references need submissionMode HTTPMode")
        jobs.append((where, env, job["spec"].get("clusterSelector", {}).get("ray.io/cluster")))
    for doc in docs:
        if doc["kind"] != "RayJob":
            for where, env in job_environments(doc):
                jobs.append((where, env, KEEPER_CLUSTER))
    for where, env, cluster in jobs:
        refs = {n: v for n, v in env.items() if re.search(r"PASSWORD|TOKEN", n)}
        if not refs:
            continue
        found = [d for d in _of(docs, "RayCluster") if d["metadata"]["name"] == cluster]
        specs = [s for d in found for s in pod_specs(d)]
        for name, value in refs.items():
            match = re.fullmatch(r"\$\{([A-Z0-9_]+)\}", str(value))
            if match is None:
                problems.append(f"{where}: {name} has a literal value in runtimeEnvYAML")
                continue
            var = match.group(1)
            from_secret = [
                any(
                    e["name"] == var and "secretKeyRef" in e.get("valueFrom", {})
                    for e in c.get("env", [])
                )
                for spec in specs
                for c in spec["containers"]
            ]
            if not from_secret or not all(from_secret):
                problems.append(
                    f"{where}: {name} refers to ${{{var}}}, which not every pod of RayCluster "
                    f"{cluster} takes from a Secret"
                )
    return problems


def reference_problems(docs: list[Doc]) -> list[str]:
    names = {(d["kind"], d["metadata"].get("name")) for d in docs}
    problems: list[str] = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata'].get('name')}"
        claim_templates = {
            t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])
        }
        for spec in pod_specs(doc):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            volumes.update({name: {} for name in claim_templates})
            sa = spec.get("serviceAccountName")
            if sa and ("ServiceAccount", sa) not in names:
                problems.append(f"{where}: no ServiceAccount {sa}")
            for volume in volumes.values():
                if (
                    "configMap" in volume
                    and ("ConfigMap", volume["configMap"]["name"]) not in names
                ):
                    problems.append(f"{where}: no ConfigMap {volume['configMap']['name']}")
                claim = volume.get("persistentVolumeClaim", {}).get("claimName")
                if claim and ("PersistentVolumeClaim", claim) not in names:
                    problems.append(f"{where}: no PersistentVolumeClaim {claim}")
            for c in containers(spec):
                for mount in c.get("volumeMounts", []):
                    if mount["name"] not in volumes:
                        problems.append(f"{where}/{c['name']}: no volume {mount['name']}")
                for source in c.get("envFrom", []):
                    ref = source.get("configMapRef", {}).get("name")
                    if ref and ("ConfigMap", ref) not in names:
                        problems.append(f"{where}/{c['name']}: no ConfigMap {ref}")
        if doc["kind"] == "RayJob":
            cluster = doc["spec"].get("clusterSelector", {}).get("ray.io/cluster")
            if cluster and ("RayCluster", cluster) not in names:
                problems.append(f"{where}: clusterSelector names no RayCluster {cluster}")
        if doc["kind"] == "FlinkDeployment":
            sa = doc["spec"].get("serviceAccount")
            if ("ServiceAccount", sa) not in names:
                problems.append(f"{where}: no ServiceAccount {sa}")
    return problems


def image_problems(docs: list[Doc]) -> list[str]:
    problems: list[str] = []
    images: list[str] = [d["spec"]["image"] for d in _of(docs, "FlinkDeployment")]
    images += [c.get("image", "") for d in docs for s in pod_specs(d) for c in containers(s)]
    images = [i for i in images if i]  # Flink's pod template inherits spec.image
    for image in images:
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag or tag in ("", "latest"):
            problems.append(f"{image}: not pinned to a tag")
            continue
        base = name.rsplit("/", 1)[-1]
        own = f"aircast-{base}" if name.endswith(f"aircast/{base}") else name
        if (
            own in OWN_IMAGES
            and not (KUBERAY / "images" / OWN_IMAGES[own] / "Dockerfile").is_file()
        ):
            problems.append(f"{image}: no kuberay/images/{OWN_IMAGES[own]}/Dockerfile")
        if own.startswith("aircast") and own not in OWN_IMAGES:
            problems.append(f"{image}: not an image built from kuberay/images")
    return problems


# -- Grafana queries -----------------------------------------------------------------------


def _parse_line(line: str) -> tuple[str, set[str], set[str]]:
    head, fields, _ = line.split(" ")
    measurement, *tags = head.split(",")
    return (
        measurement,
        {t.split("=")[0] for t in tags},
        {f.split("=")[0] for f in fields.split(",")},
    )


def written() -> dict[str, tuple[set[str], set[str]]]:
    """Database -> (tags, fields) as the collector writes them (Reading/Aggregate.line)."""
    place = dict(
        sensor_id=1,
        sensor_type="SDS011",
        location_id=2,
        latitude=48.7,
        longitude=9.3,
        country_code="DE",
        country="Germany",
        city="Stuttgart",
        measure="P1",
    )
    reading = Reading(**place, value=1.5, timestamp=1_700_000_000)  # type: ignore[arg-type]
    aggregate = Aggregate(
        **place,  # type: ignore[arg-type]
        window_start=0,
        window_end=600,
        mean=1.0,
        min=0.5,
        max=1.5,
        count=3,
    )
    forecast = StoredForecast(1, "P1", "persistence", "v1", 1_700_000_400, {1: 1.0})
    influx = Settings().influx
    _, raw_tags, raw_fields = _parse_line(reading.line())
    _, agg_tags, agg_fields = _parse_line(aggregate.line())
    _, pred_tags, pred_fields = _parse_line(forecast_lines([forecast])[0])
    return {
        influx.raw_database: (raw_tags, raw_fields),
        influx.aggregates_database: (agg_tags, agg_fields),
        influx.predictions_database: (pred_tags, pred_fields),
    }


def datasource_databases() -> dict[str, str]:
    text = (KUBERAY / "base" / "grafana" / "datasources.yaml").read_text(encoding="utf-8")
    sources = yaml.safe_load(text)["datasources"]
    return {s["uid"]: s["jsonData"]["dbName"] for s in sources if s["type"] == "influxdb"}


_FUNC_FIELD = re.compile(r"\b(?:mean|min|max|sum|count|last|first|median|spread)\(\s*\"([^\"]+)\"")


def influx_query_problems(query: str, database: str) -> list[str]:
    tags, fields = written()[database]
    measures = {m.name for m in MEASURES}
    problems: list[str] = []
    show = re.fullmatch(r'SHOW TAG VALUES FROM "([^"]+)" WITH KEY = "([^"]+)"(.*)', query)
    if show:
        measurement, key, rest = show.groups()
        used_fields: list[str] = []
        used_tags = [key, *re.findall(r'"([^"]+)"', rest)]
    else:
        found = re.search(r'\bFROM\s+"([^"]+)"', query)
        if found is None:
            return [f"{query}: no FROM measurement"]
        measurement = found.group(1)
        body = re.sub(r'\bAS\s+"[^"]+"', "", query.replace(found.group(0), ""))
        used_fields = _FUNC_FIELD.findall(body)
        used_tags = re.findall(r'"([^"]+)"', _FUNC_FIELD.sub("", body))
    if measurement not in measures:
        problems.append(f"{query}: measurement {measurement!r} is not a measure")
    problems += [f"{query}: {database} has no field {f!r}" for f in used_fields if f not in fields]
    problems += [f"{query}: {database} has no tag {t!r}" for t in used_tags if t not in tags]
    return problems


def _expand(query: str, variables: list[Doc]) -> list[str]:
    for var in variables:
        if var["type"] == "custom" and f"${var['name']}" in query:
            return [query.replace(f"${var['name']}", o["value"]) for o in var["options"]]
    return [query]


def dashboard_problems(dashboard: Doc) -> list[str]:
    databases = datasource_databases()
    variables = dashboard.get("templating", {}).get("list", [])
    problems: list[str] = []
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    targets += [{**v, "datasource": v["datasource"]} for v in variables if v["type"] == "query"]
    for target in targets:
        source = target["datasource"]
        if source["type"] == "prometheus":
            problems += prometheus_problems(target["expr"])
            continue
        if source["uid"] not in databases or databases[source["uid"]] not in written():
            problems.append(f"data source {source['uid']!r} is no database the collector writes")
            continue
        for query in _expand(target["query"], variables):
            problems += influx_query_problems(query, databases[source["uid"]])
    return problems


def prometheus_problems(expr: str) -> list[str]:
    by_name = {telemetry.published(m): m for m in telemetry.ALL}
    problems: list[str] = []
    for name in re.findall(r"\bray_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        metric = by_name.get(name) or (by_name.get(base) if base != name else None)
        if metric is None or (name != base and metric.kind != "histogram"):
            problems.append(f"{expr}: {name} is not a published aircast metric")
            continue
        allowed = set(metric.tags) | ({"le"} if metric.kind == "histogram" else set())
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {x.strip() for x in group.split(",") if x.strip()}
            problems += [f"{expr}: {name} has no label {x!r}" for x in labels - allowed]
    return problems


# -- tests: schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBERAY)))
def test_manifest_file_is_valid(path: Path, crds: dict[tuple[str, str], CustomKind]) -> None:
    docs = load_documents(path.read_text(encoding="utf-8"))
    assert docs, f"{path} holds no manifest"
    problems = [f"{d['kind']}: {p}" for d in docs for p in validate(d, crds)]
    assert not problems, "\n".join(problems)


def test_no_manifest_escapes_validation() -> None:
    """Every YAML file under kuberay/ with a kind is a validated manifest or a patch."""
    covered = set(manifest_files())
    for path in KUBERAY.rglob("*.yaml"):
        if path in covered or path.name in ("kustomization.yaml", "kustomizeconfig.yaml"):
            continue
        if "overlays" in path.parts:
            continue  # patches: judged through the rendered overlays
        docs = load_documents(path.read_text(encoding="utf-8"))
        assert not any("kind" in d for d in docs), f"{path} is not validated"


def test_every_custom_kind_has_its_crd_or_a_named_stand_in() -> None:
    """Every custom kind is validated against its operator's CRD from the shared folder;
    the one it lacks (Strimzi's KafkaUser) against a stand-in of that CRD's fields
    (kube_validation.STAND_INS), and no other kind falls back to a stand-in. Once the
    shared folder holds the CRD, the stand-in is not used."""
    _, used = with_stand_ins(load_crds(crd_dir()))
    assert [u.split(" (")[0] for u in used] in ([], ["kafka.strimzi.io/v1 KafkaUser"]), used


def test_stand_in_schema_refuses_a_broken_kafka_user(
    crds: dict[tuple[str, str], CustomKind],
) -> None:
    user = yaml.safe_load(
        """
        apiVersion: kafka.strimzi.io/v1
        kind: KafkaUser
        metadata: {name: broken}
        spec:
          authentication: {type: scram-sha-256}
          authorization:
            type: simple
            acls:
              - resource: {type: topic, name: aircast.raw}
                operation: Read
        """
    )
    problems = validate(user, crds)
    assert any("'scram-sha-256' is not one of" in p for p in problems), problems
    assert any("'operations' is a required property" in p for p in problems), problems
    assert any("Additional properties are not allowed ('operation'" in p for p in problems)


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_overlay_is_valid(
    target: str, rendered: dict[str, list[Doc]], crds: dict[tuple[str, str], CustomKind]
) -> None:
    docs = rendered[target]
    problems = [
        f"{d['kind']}/{d['metadata'].get('name')}: {p}" for d in docs for p in validate(d, crds)
    ]
    # The training template travels inside a ConfigMap; it must be a valid RayJob too.
    template = config_map_data(docs, "aircast-train-rayjob")["rayjob-train.yaml"]
    problems += [
        f"train template: {p}" for d in load_documents(template) for p in validate(d, crds)
    ]
    assert not problems, "\n".join(problems)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"aircast"}


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("schema-violation.yaml", "is not of type 'integer'"),
        ("unknown-field.yaml", "Additional properties are not allowed ('replica' was"),
        ("cel-violation.yaml", "deletionStrategy requires either BOTH onSuccess and onFailure"),
        ("cel-missing-field.yaml", "topologyKey property is required"),
        ("unknown-kind.yaml", "unknown kind KafkaMirror"),
        ("unknown-core-kind.yaml", "unknown kind PodMonitor"),
        ("core-violation.yaml", "Additional properties are not allowed ('replica' was"),
        ("bad-name.yaml", "is not a DNS-1123 subdomain"),
    ],
)
def test_broken_manifest_is_refused(
    fixture: str, expected: str, crds: dict[tuple[str, str], CustomKind]
) -> None:
    docs = load_documents((FIXTURES / fixture).read_text(encoding="utf-8"))
    problems = [p for d in docs for p in validate(d, crds)]
    assert any(expected in p for p in problems), problems


# -- tests: the deployment's contracts -----------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_env_vars_are_settings(
    target: str, rendered: dict[str, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered[target] + load_documents(
        (KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text()
    )
    assert not env_problems(docs, monkeypatch)


def test_unknown_env_var_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = load_documents((FIXTURES / "unknown-env.yaml").read_text(encoding="utf-8"))
    problems = env_problems(docs, monkeypatch)
    assert any("no field 'topic' in settings section 'kafka'" in p for p in problems), problems
    assert any("no settings section 'kafak'" in p for p in problems), problems
    assert any("settings refuse this environment" in p for p in problems), problems


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_only_by_reference(target: str, rendered: dict[str, list[Doc]]) -> None:
    backfill = load_documents((KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text())
    assert not secret_problems(rendered[target] + backfill)


def test_runtime_env_secrets_are_references(rendered: dict[str, list[Doc]]) -> None:
    """The keeper gives the streaming stages' jobs their Kafka password as ${VAR}, never
    as a value; a leaky RayJob or keeper is refused."""
    docs = rendered["base"]
    (keeper,) = keeper_containers(_one(docs, "Deployment", "aircast-keeper"))
    stages = keeper_stage_envs(keeper)
    assert stages["ingest"]["AIRCAST_KAFKA__SASL_PASSWORD"] == "${KAFKA_INGEST_PASSWORD}"
    assert stages["collect"]["AIRCAST_KAFKA__SASL_PASSWORD"] == "${KAFKA_COLLECT_PASSWORD}"
    leaky_keeper = yaml.safe_load(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: leaky-keeper}
        spec:
          selector: {matchLabels: {app: k}}
          template:
            metadata: {labels: {app: k}}
            spec:
              containers:
                - name: keeper
                  image: aircast-ray:0.1.0
                  command: [aircast, keep]
                  args:
                    - --env=ingest:AIRCAST_KAFKA__SASL_PASSWORD=hunter2
                    - --env
                    - collect:AIRCAST_KAFKA__SASL_PASSWORD=${NOT_ON_THE_PODS}
        """
    )
    problems = runtime_env_secret_problems([*docs, leaky_keeper])
    assert any(
        "leaky-keeper/keeper stage ingest: AIRCAST_KAFKA__SASL_PASSWORD has a literal value" in p
        for p in problems
    ), problems
    assert any("stage collect" in p and "${NOT_ON_THE_PODS}" in p for p in problems), problems
    broken = yaml.safe_load(
        """
        apiVersion: ray.io/v1
        kind: RayJob
        metadata: {name: leaky}
        spec:
          entrypoint: python -m actors.ingest
          clusterSelector: {ray.io/cluster: aircast-pipeline}
          runtimeEnvYAML: |
            env_vars:
              AIRCAST_KAFKA__SASL_PASSWORD: hunter2
              AIRCAST_REDIS__PASSWORD: ${NOT_ON_THE_PODS}
        """
    )
    problems = runtime_env_secret_problems([*docs, broken])
    assert any("leaky: AIRCAST_KAFKA__SASL_PASSWORD has a literal value" in p for p in problems)
    assert any("${NOT_ON_THE_PODS}, which not every pod" in p for p in problems), problems
    assert any("leaky: secret references need submissionMode HTTPMode" in p for p in problems)


def test_literal_secret_is_refused() -> None:
    docs = load_documents((FIXTURES / "literal-secret.yaml").read_text(encoding="utf-8"))
    problems = secret_problems(docs)
    assert any("holds values" in p for p in problems), problems
    assert any("AIRCAST_REDIS__PASSWORD has a literal value" in p for p in problems), problems
    assert any("is not a key of aircast-secrets" in p for p in problems), problems


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(target: str, rendered: dict[str, list[Doc]]) -> None:
    assert not reference_problems(rendered[target])
    backfill = load_documents((KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text())
    assert not reference_problems(rendered[target] + backfill)


def test_dangling_reference_is_refused() -> None:
    docs = load_documents((FIXTURES / "dangling-reference.yaml").read_text(encoding="utf-8"))
    problems = reference_problems(docs)
    assert any("no PersistentVolumeClaim missing-claim" in p for p in problems), problems
    assert any("clusterSelector names no RayCluster" in p for p in problems), problems


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_built_here_or_pinned(target: str, rendered: dict[str, list[Doc]]) -> None:
    assert not image_problems(rendered[target])


def test_unknown_image_is_refused() -> None:
    docs = load_documents((FIXTURES / "bad-images.yaml").read_text(encoding="utf-8"))
    problems = image_problems(docs)
    assert any("redis: not pinned" in p for p in problems), problems
    assert any("grafana/grafana:latest: not pinned" in p for p in problems), problems
    assert any("aircast-spark:1: not an image built" in p for p in problems), problems


def test_images_match_the_versions_deployed(rendered: dict[str, list[Doc]]) -> None:
    ray_from = (KUBERAY / "images" / "ray" / "Dockerfile").read_text().split("\nFROM ")[1]
    flink_docker = (KUBERAY / "images" / "flink" / "Dockerfile").read_text()
    assert ray_from.split()[0] == "rayproject/ray:2.60.0-py311"
    assert "\nFROM flink:2.0.1-scala_2.12-java17\n" in flink_docker
    assert '".[flink]"' in flink_docker and "flink-connector-kafka" in flink_docker
    # The job's JVM fast lane is compiled into the image and found by the job.
    assert "flink/java/build.sh /flink-lib /out/aircast-flink.jar" in flink_docker
    assert "AIRCAST_FLINK__JAR=/opt/aircast/build/aircast-flink.jar" in flink_docker
    for docs in rendered.values():
        assert _one(docs, "RayService", "aircast")["spec"]["rayClusterConfig"]["rayVersion"] == (
            "2.60.0"
        )
        assert _one(docs, "RayCluster", "aircast-pipeline")["spec"]["rayVersion"] == "2.60.0"
        flink = _one(docs, "FlinkDeployment", "aircast-flink")["spec"]
        assert flink["flinkVersion"] == "v2_0"
        assert flink["job"]["jarURI"] == "local:///opt/flink/opt/flink-python-2.0.1.jar"
        assert flink["job"]["args"] == ["-py", "/opt/aircast/flink/job.py", "--mode", "managed"]
    production = rendered["overlays/production"]
    images = {c.get("image") for d in production for s in pod_specs(d) for c in containers(s)}
    assert "registry.example.com/aircast/ray:0.1.0" in images
    assert _one(production, "FlinkDeployment", "aircast-flink")["spec"]["image"] == (
        "registry.example.com/aircast/flink:0.1.0"
    )


# Ray's own schema module uses a pydantic-1 idiom; the warning is Ray's, not ours.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
def test_serve_config_is_a_serve_deploy_config(rendered: dict[str, list[Doc]]) -> None:
    from ray.serve.schema import ServeDeploySchema

    for docs in rendered.values():
        text = _one(docs, "RayService", "aircast")["spec"]["serveConfigV2"]
        config = ServeDeploySchema.model_validate(yaml.safe_load(text))
        assert [a.import_path for a in config.applications] == ["serve.app:build_app"]
    with pytest.raises(ValueError, match="import_path"):
        ServeDeploySchema.model_validate({"applications": [{"name": "x", "route_prefix": "/"}]})


@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
def test_the_local_serve_config_deploys_what_the_rayservice_does(
    rendered: dict[str, list[Doc]],
) -> None:
    """`aircast run` deploys the app from a Serve config over the dashboard's REST API:
    the same app name, builder and args as the RayService, with the stack's port and
    environment, and access logs off."""
    from ray.serve.schema import ServeDeploySchema

    from actors.pipeline import serve_config

    settings = Settings()
    settings = settings.model_copy(
        update={"serve": settings.serve.model_copy(update={"port": 8123})}
    )
    local = ServeDeploySchema.model_validate(serve_config(settings, {"AIRCAST_X": "1"}))
    text = _one(rendered["base"], "RayService", "aircast")["spec"]["serveConfigV2"]
    cluster = ServeDeploySchema.model_validate(yaml.safe_load(text))
    pick = [(a.name, a.import_path, a.args, a.route_prefix) for a in local.applications]
    assert pick == [(a.name, a.import_path, a.args, a.route_prefix) for a in cluster.applications]
    assert (local.http_options.host, local.http_options.port) == ("127.0.0.1", 8123)
    assert local.applications[0].runtime_env == {"env_vars": {"AIRCAST_X": "1"}}
    assert local.logging_config is not None and local.logging_config.enable_access_log is False


def test_pipeline_jobs_run_the_stage_modules(rendered: dict[str, list[Doc]]) -> None:
    """The streaming stages are the keeper's (one keeper, on the pipeline cluster's job
    API, never two at once); no RayJob runs them. Training and backfills are RayJobs."""
    from aircast.settings import RaySettings
    from aircast_cli.commands.keep import STAGES

    assert STAGES == {"ingest": "actors.ingest", "collect": "actors.collect"}
    for docs in rendered.values():
        assert not _of(docs, "RayJob"), "the streaming stages are the keeper's, not RayJobs'"
        deployment = _one(docs, "Deployment", "aircast-keeper")
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        (keeper,) = keeper_containers(deployment)
        env = {e["name"]: e["value"] for e in keeper["env"]}
        url = env["AIRCAST_RAY__DASHBOARD_URL"]
        assert url == f"http://{KEEPER_CLUSTER}-head-svc:8265"
        assert RaySettings(dashboard_url=url).dashboard_url == url
        assert ("RayCluster", KEEPER_CLUSTER) in {(d["kind"], d["metadata"]["name"]) for d in docs}
        # The liveness probe reads the file the keeper touches.
        probe = " ".join(keeper["livenessProbe"]["exec"]["command"])
        alive = next(a for a in keeper["args"] if a.startswith("--alive-file="))
        assert alive.removeprefix("--alive-file=") in probe
    docs = rendered["base"]
    template = load_documents(config_map_data(docs, "aircast-train-rayjob")["rayjob-train.yaml"])
    assert template[0]["spec"]["entrypoint"] == "python -m training.job"
    backfill = load_documents((KUBERAY / "jobs" / "rayjob-backfill.yaml").read_text())[0]
    assert backfill["spec"]["entrypoint"].startswith("aircast backfill --archive ")
    cron = _one(docs, "CronJob", "aircast-train")["spec"]["jobTemplate"]["spec"]["template"]
    assert cron["spec"]["containers"][0]["args"] == [
        "create",
        "-f",
        "/etc/aircast/rayjob-train.yaml",
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_kafka_topics_match_settings(target: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[target]
    kafka = KafkaSettings()
    wanted = {kafka.raw_topic, kafka.readings_topic, kafka.aggregates_topic}
    wanted.add(kafka.dead_letter_topic)
    topics = _of(docs, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics} == wanted
    brokers = sum(
        p["spec"]["replicas"] for p in _of(docs, "KafkaNodePool") if "broker" in p["spec"]["roles"]
    )
    env = config_map_data(docs, "aircast-env")
    for topic in topics:
        replicas, isr = (
            topic["spec"]["replicas"],
            int(topic["spec"]["config"]["min.insync.replicas"]),
        )
        assert replicas <= brokers
        assert isr < replicas or replicas == 1
        assert replicas == int(env["AIRCAST_KAFKA__REPLICATION_FACTOR"])
        assert topic["spec"]["partitions"] == int(env["AIRCAST_KAFKA__PARTITIONS"])
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "aircast"
        if target != "overlays/minikube":
            assert (replicas, isr) == (3, 2)
    cluster = _one(docs, "Kafka", "aircast")
    # The app connects to the one listener there is: TLS with SCRAM-SHA-512 logins.
    (listener,) = cluster["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert env["AIRCAST_KAFKA__BOOTSTRAP_SERVERS"] == f"aircast-kafka-bootstrap:{listener['port']}"
    assert env["AIRCAST_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["AIRCAST_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert cluster["spec"]["kafka"]["authorization"]["type"] == "simple"


def test_influx_provisioning_matches_settings(rendered: dict[str, list[Doc]]) -> None:
    provision = _module(KUBERAY / "base" / "influxdb" / "provision.py")
    influx = Settings().influx
    assert [(b.name, b.retention_s) for b in provision.plan(Settings())] == [
        (influx.raw_database, 30 * 86400),
        (influx.aggregates_database, 0),
        (influx.predictions_database, 90 * 86400),
    ]
    with pytest.raises(ValueError, match="not a retention"):
        provision.retention_seconds("30 days")
    names = {influx.raw_database, influx.aggregates_database, influx.predictions_database}
    assert set(datasource_databases().values()) == names
    for docs in rendered.values():
        script = config_map_data(docs, "influxdb-provision")["provision.py"]
        assert script == (KUBERAY / "base" / "influxdb" / "provision.py").read_text()
        influxdb = _one(docs, "StatefulSet", "influxdb")["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in influxdb["containers"][0]["env"]}
        assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == influx.raw_database
        assert config_map_data(docs, "aircast-env")["AIRCAST_INFLUX__MANAGE_DATABASES"] == "false"


@pytest.mark.parametrize("target", TARGETS)
def test_flink_checkpoints_on_persistent_storage(
    target: str, rendered: dict[str, list[Doc]]
) -> None:
    """Checkpoints, savepoints and HA metadata on the shared claim every Flink pod mounts
    (a JobManager on another node finds them)."""
    docs = rendered[target]
    spec = _one(docs, "FlinkDeployment", "aircast-flink")["spec"]
    pod = spec["podTemplate"]["spec"]
    main = next(c for c in pod["containers"] if c["name"] == "flink-main-container")
    volumes = {v["name"]: v for v in pod["volumes"]}
    conf = spec["flinkConfiguration"]
    for key in (
        "execution.checkpointing.dir",
        "execution.checkpointing.savepoint-dir",
        "high-availability.storageDir",
    ):
        path = conf[key].removeprefix("file://")
        mounts = [m for m in main["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mounts, f"{key} ({path}) is on no mounted volume"
        claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
        modes = _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
        assert "ReadWriteMany" in modes
    assert conf["high-availability.type"] == "kubernetes"  # what last-state upgrades need


def flink_managed_problems(doc: Doc, docs: list[Doc]) -> list[str]:
    """Why a FlinkDeployment would fight the operator over the job's state or size
    (empty: the operator owns restores, checkpoint storage and parallelism)."""
    from flink.config import OPERATOR_OWNED, flink_configuration

    spec = doc["spec"]
    job = spec["job"]
    problems: list[str] = []
    args = [str(a) for a in job.get("args", [])]
    if " ".join(args[-2:]) != "--mode managed":
        problems.append(f"job.args {args}: the job does not run in managed mode")
    if job.get("allowNonRestoredState"):
        problems.append("job.allowNonRestoredState: state that does not map is dropped")
    if job.get("upgradeMode") != "last-state":
        problems.append(f"job.upgradeMode {job.get('upgradeMode')}: not last-state")
    if "parallelism" not in job:
        problems.append("job.parallelism unset: the operator's is the only one")
    conf = spec.get("flinkConfiguration", {})
    for key in ("parallelism.default", "execution.state-recovery.path"):
        if key in conf:
            problems.append(f"flinkConfiguration sets {key}, which overrides the operator's")
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir"):
        if key not in conf:
            problems.append(f"flinkConfiguration lacks {key}: the job sets none in managed mode")
    if "kubernetes.operator.periodic.savepoint.interval" not in conf:
        problems.append("no periodic savepoint: an upgrade that cannot use HA has nothing")
    main = next(
        c for c in spec["podTemplate"]["spec"]["containers"] if c["name"] == "flink-main-container"
    )
    env = container_env(docs, main)
    for name in ("AIRCAST_FLINK__PARALLELISM", "AIRCAST_FLINK__CHECKPOINT_DIR"):
        if name in env:
            problems.append(f"{name} in the pod: the job's setting, ignored in managed mode")
    # What the job itself would set there, from the pod's own settings.
    options = yaml.safe_load(env.get("AIRCAST_FLINK__OPTIONS", "{}"))
    settings = Settings(flink=FlinkSettings(options=options))
    owned = sorted(set(flink_configuration(settings, None, "managed")) & set(OPERATOR_OWNED))
    problems += [f"the job would set {key}" for key in owned]
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_flink_deployment_leaves_state_and_size_to_the_operator(
    target: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[target]
    flink = _one(docs, "FlinkDeployment", "aircast-flink")
    assert not flink_managed_problems(flink, docs)
    assert "initialSavepointPath" not in flink["spec"]["job"]  # set by hand, see README
    conf = flink["spec"]["flinkConfiguration"]
    assert conf["kubernetes.operator.periodic.savepoint.interval"] == "6h"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )


def test_a_flink_deployment_that_fights_its_operator_is_refused(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["base"]
    broken = copy.deepcopy(_one(docs, "FlinkDeployment", "aircast-flink"))
    spec = broken["spec"]
    spec["job"]["args"] = ["-py", "/opt/aircast/flink/job.py"]
    spec["job"]["allowNonRestoredState"] = True
    spec["job"]["upgradeMode"] = "stateless"
    spec["flinkConfiguration"]["parallelism.default"] = "4"
    del spec["flinkConfiguration"]["execution.checkpointing.savepoint-dir"]
    main = spec["podTemplate"]["spec"]["containers"][0]
    main["env"].append({"name": "AIRCAST_FLINK__PARALLELISM", "value": "4"})
    problems = flink_managed_problems(broken, docs)
    for expected in (
        "does not run in managed mode",
        "job.allowNonRestoredState",
        "job.upgradeMode stateless",
        "flinkConfiguration sets parallelism.default",
        "lacks execution.checkpointing.savepoint-dir",
        "AIRCAST_FLINK__PARALLELISM in the pod",
    ):
        assert any(expected in p for p in problems), (expected, problems)


def test_the_map_shows_openstreetmap_tiles_fetched_by_the_browser(
    rendered: dict[str, list[Doc]],
) -> None:
    """Kubernetes sets the web map's tiles and their attribution; the tiles are the
    browser's to fetch, so no pod gets egress for them (only the keeper's is limited)."""
    for docs in rendered.values():
        env = config_map_data(docs, "aircast-env")
        serve = ServeSettings(
            tile_url=env["AIRCAST_SERVE__TILE_URL"],
            tile_attribution=env["AIRCAST_SERVE__TILE_ATTRIBUTION"],
        )
        assert serve.tile_url == "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
        assert serve.tile_attribution == "© OpenStreetMap contributors"
        limited = [
            p["spec"]["podSelector"]
            for p in _of(docs, "NetworkPolicy")
            if "Egress" in p["spec"].get("policyTypes", [])
        ]
        assert limited == [{"matchLabels": {"app.kubernetes.io/name": "aircast-keeper"}}]


def test_overlays_scale_as_documented(rendered: dict[str, list[Doc]]) -> None:
    def workers(docs: list[Doc]) -> int:
        return int(
            _one(docs, "RayCluster", "aircast-pipeline")["spec"]["workerGroupSpecs"][0][
                "maxReplicas"
            ]
        )

    mini, prod = rendered["overlays/minikube"], rendered["overlays/production"]
    assert workers(mini) < workers(rendered["base"]) < workers(prod)
    assert _one(mini, "KafkaNodePool", "dual")["spec"]["replicas"] == 1
    assert _one(prod, "KafkaNodePool", "dual")["spec"]["replicas"] == 3
    classes = {
        (docs is prod, c["metadata"]["name"]): c["spec"]["storageClassName"]
        for docs in (mini, prod)
        for c in _of(docs, "PersistentVolumeClaim")
    }
    assert {v for (is_prod, _), v in classes.items() if not is_prod} == {"standard"}
    # Production: the shared claims on a ReadWriteMany class, Prometheus's on a block disk.
    assert {name: v for (is_prod, name), v in classes.items() if is_prod} == {
        "aircast-models": "standard-rwx",
        "aircast-flink-data": "standard-rwx",
        "prometheus-data": "premium-rwo",
    }
    flink = _one(prod, "FlinkDeployment", "aircast-flink")["spec"]
    assert flink["flinkConfiguration"]["job.autoscaler.enabled"] == "true"
    for docs in rendered.values():  # GCS fault tolerance on both Ray clusters
        service = _one(docs, "RayService", "aircast")["spec"]["rayClusterConfig"]
        cluster = _one(docs, "RayCluster", "aircast-pipeline")["spec"]
        for spec in (service, cluster):
            # In the GCS store (its own Redis and password), not in the application cache.
            options = spec["gcsFaultToleranceOptions"]
            assert options["redisAddress"] == "redis-gcs:6379"
            assert options["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] == (
                "redis-gcs-password"
            )
            assert spec["enableInTreeAutoscaling"] is True
        assert config_map_data(docs, "aircast-env")["AIRCAST_REDIS__URL"].startswith(
            "redis://redis:6379/"
        )


# -- tests: Grafana ------------------------------------------------------------------------


def test_dashboards_are_generated_and_provisioned() -> None:
    generator = _module(KUBERAY / "dashboards.py")
    assert generator.main(["--check"]) == 0, "run .venv/bin/python kuberay/dashboards.py"
    files = set(generator.dashboards())
    assert {f"measure-{m.name}.json" for m in MEASURES} | {
        "map.json",
        "predictions.json",
        "pipeline-health.json",
    } == files
    kustomization = yaml.safe_load((KUBERAY / "base" / "kustomization.yaml").read_text())
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}
    assert {Path(f).name for f in generated["grafana-dashboards"]} == files
    # The alert rules travel with the provisioning files and are mounted where Grafana
    # provisions alerting from.
    assert "grafana/alerting/rules.yaml" in generated["grafana-provisioning"]
    grafana = yaml.safe_load_all((KUBERAY / "base" / "grafana" / "grafana.yaml").read_text())
    spec = next(d for d in grafana if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[ALERTING_DIR])
    assert volume["configMap"] == {
        "name": "grafana-provisioning",
        "items": [{"key": "rules.yaml", "path": "rules.yaml"}],
    }


@pytest.mark.parametrize(
    "path",
    sorted((KUBERAY / "base" / "grafana" / "dashboards").glob("*.json")),
    ids=lambda p: p.name,
)
def test_dashboard_queries_name_what_the_collector_writes(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert not dashboard_problems(dashboard)


def test_pipeline_dashboard_covers_every_metric() -> None:
    dashboard = json.loads((KUBERAY / "base/grafana/dashboards/pipeline-health.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in telemetry.ALL:
        assert telemetry.published(metric) in exprs, metric.name


def test_written_schema_is_the_collectors() -> None:
    tags = {
        "city",
        "country",
        "country_code",
        "lat",
        "location_id",
        "lon",
        "sensor_id",
        "sensor_type",
    }
    influx = Settings().influx
    assert written() == {
        influx.raw_database: (tags, {"value"}),
        influx.aggregates_database: (tags, {"count", "max", "mean", "min"}),
        influx.predictions_database: ({"horizon", "kind", "sensor_id", "version"}, {"value"}),
    }


def test_bad_dashboard_is_refused() -> None:
    dashboard = json.loads((FIXTURES / "bad-dashboard.json").read_text(encoding="utf-8"))
    problems = dashboard_problems(dashboard)
    assert any("has no field 'temperature_value'" in p for p in problems), problems
    assert any("has no tag 'station'" in p for p in problems), problems
    assert any("measurement 'PM10' is not a measure" in p for p in problems), problems
    assert any("ray_aircast_collect_lag is not a published" in p for p in problems), problems
    assert any("has no label 'partition'" in p for p in problems), problems


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("serve/app.py", "build_app"),
        ("actors/ingest.py", None),
        ("actors/collect.py", None),
        ("training/job.py", None),
        ("flink/job.py", None),
        ("aircast_cli/commands/keep.py", "cmd_keep"),
    ],
)
def test_entry_points_the_manifests_run_exist(module: str, name: str | None) -> None:
    """What the RayService, RayJobs and FlinkDeployment run is in the repository."""
    import ast

    path = REPO / module
    assert path.is_file(), f"{module} (run by kuberay/) does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if name is not None:
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{module} defines no {name}()"
    else:
        source = path.read_text(encoding="utf-8")
        assert '__name__ == "__main__"' in source, f"{module} cannot run as python -m"
