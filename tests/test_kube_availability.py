"""Availability of the rendered overlays: disruption budgets and spreading for every
replicated component, two Redis servers (the application cache bounded and evicting, the
Ray GCS store never evicting), Serve's autoscaling within the worker group's capacity,
and Prometheus on a claim of its own with alert rules on what the pipeline exports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from aircast.settings import ServeSettings
from tests.test_kube_policy import Pod, pods, selects
from tests.test_kuberay import (
    KUBERAY,
    REPO,
    TARGETS,
    Doc,
    _of,
    _one,
    config_map_data,
    prometheus_problems,
    render,
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {target: render(target) for target in TARGETS}


def _cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pod(docs: list[Doc], where: str) -> Pod:
    (found,) = [p for p in pods(docs) if p.where == where]
    return found


def budgets_for(docs: list[Doc], pod: Pod) -> list[Doc]:
    return [
        b for b in _of(docs, "PodDisruptionBudget") if selects(b["spec"]["selector"], pod.labels)
    ]


def spread_problems(pod: Pod) -> list[str]:
    """The pod spreads over nodes, and each constraint counts pods like this one."""
    constraints = pod.spec.get("topologySpreadConstraints", [])
    problems = []
    if "kubernetes.io/hostname" not in {c["topologyKey"] for c in constraints}:
        problems.append(f"{pod.where}: no spread over nodes")
    for c in constraints:
        if not selects(c["labelSelector"], pod.labels):
            problems.append(f"{pod.where}: a spread constraint counts other pods")
    return problems


# -- disruption budgets and spreading --------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_replicated_components_have_budgets_and_spread(
    target: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[target]
    replicated = [
        _pod(docs, "RayService/aircast serve"),
        _pod(docs, "RayCluster/aircast-pipeline workers"),
    ]
    flink = _one(docs, "FlinkDeployment", "aircast-flink")["spec"]
    if flink["jobManager"].get("replicas", 1) > 1:  # HA: the JobManagers and TaskManagers
        replicated.append(_pod(docs, "FlinkDeployment/aircast-flink jobManager"))
        replicated.append(_pod(docs, "FlinkDeployment/aircast-flink taskManager"))
    problems: list[str] = []
    for pod in replicated:
        found = budgets_for(docs, pod)
        if len(found) != 1:
            problems.append(f"{pod.where}: {len(found)} PodDisruptionBudgets select it")
        elif found[0]["spec"].get("maxUnavailable") != 1:
            problems.append(f"{pod.where}: the budget is not maxUnavailable 1")
        problems += spread_problems(pod)
    # Kafka: Strimzi's budget (template) and the node pool's spread.
    kafka = _one(docs, "Kafka", "aircast")["spec"]["kafka"]
    assert kafka["template"]["podDisruptionBudget"]["maxUnavailable"] == 1
    brokers = _pod(docs, "KafkaNodePool/dual")
    problems += spread_problems(brokers)
    hostname = next(
        c
        for c in brokers.spec["topologySpreadConstraints"]
        if c["topologyKey"] == "kubernetes.io/hostname"
    )
    assert hostname["whenUnsatisfiable"] == "DoNotSchedule"  # one broker per node
    assert not problems, "\n".join(problems)
    # A budget that selects nothing protects nothing.
    every_pod = pods(docs)
    for budget in _of(docs, "PodDisruptionBudget"):
        assert any(selects(budget["spec"]["selector"], p.labels) for p in every_pod), budget


def test_production_runs_flink_jobmanagers_in_ha(rendered: dict[str, list[Doc]]) -> None:
    flink = _one(rendered["overlays/production"], "FlinkDeployment", "aircast-flink")["spec"]
    assert flink["jobManager"]["replicas"] == 2
    assert flink["flinkConfiguration"]["high-availability.type"] == "kubernetes"


def test_a_budget_that_selects_the_wrong_pods_is_found() -> None:
    docs = render("base")
    serve = _pod(docs, "RayService/aircast serve")
    wrong = yaml.safe_load(
        """
        apiVersion: policy/v1
        kind: PodDisruptionBudget
        metadata: {name: wrong}
        spec:
          maxUnavailable: 1
          selector: {matchLabels: {app.kubernetes.io/name: aircast-serve}}
        """
    )
    others = [d for d in docs if d["kind"] != "PodDisruptionBudget"]
    assert budgets_for([*others, wrong], serve) == []
    bare = Pod(
        "x",
        {"a": "b"},
        {
            "topologySpreadConstraints": [
                {
                    "topologyKey": "topology.kubernetes.io/zone",
                    "labelSelector": {"matchLabels": {"a": "c"}},
                }
            ]
        },
        [],
    )
    assert spread_problems(bare) == [
        "x: no spread over nodes",
        "x: a spread constraint counts other pods",
    ]


# -- Redis -------------------------------------------------------------------------------------


def redis_config(docs: list[Doc], statefulset: str) -> dict[str, str]:
    """The directives the Redis of ``statefulset`` starts with (config file + command line)."""
    container = _one(docs, "StatefulSet", statefulset)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    conf = config_map_data(docs, "redis-config")[Path(env["REDIS_CONFIG"]).name]
    directives = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    script = container["args"][0]
    found = re.search(r"exec redis-server \"\$REDIS_CONFIG\" (.*)", script)
    assert found, script
    flags = re.findall(r"--([a-z-]+) \"?([^\"\s]+)", found.group(1))
    return directives | dict(flags)


@pytest.mark.parametrize("target", TARGETS)
def test_cache_and_gcs_store_are_separate_redis_servers(
    target: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[target]
    cache, gcs = redis_config(docs, "redis"), redis_config(docs, "redis-gcs")
    # The cache: bounded, evicting only keys with a TTL (the registry's pointers have none).
    assert cache["maxmemory-policy"] == "volatile-lru"
    assert "MEMORY_LIMIT" in cache["maxmemory"]  # 80 % of the container's memory limit
    # The GCS store: never evicts; both persist (append-only file).
    assert gcs["maxmemory-policy"] == "noeviction"
    assert cache["appendonly"] == gcs["appendonly"] == "yes"
    assert cache["include"] == gcs["include"] == "/run/redis/auth.conf"
    # Different passwords, each from the Secret as a file.
    keys = {}
    for name in ("redis", "redis-gcs"):
        spec = _one(docs, "StatefulSet", name)["spec"]["template"]["spec"]
        (secret,) = [v["secret"] for v in spec["volumes"] if "secret" in v]
        keys[name] = secret["items"][0]["key"]
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["MEMORY_LIMIT"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"
    assert keys == {"redis": "redis-password", "redis-gcs": "redis-gcs-password"}
    env = config_map_data(docs, "aircast-env")
    assert env["AIRCAST_REDIS__URL"].startswith("redis://redis:6379/")


def test_the_app_never_writes_an_untimed_cache_key_but_the_registry() -> None:
    """volatile-lru is safe because every cache write the code does carries a TTL, except
    the durable keys that must never be evicted: the model registry's pointers and the
    alert store's rules, episodes and outbox (hashes). The premise, checked."""
    sets = []
    for path in [*REPO.glob("aircast/*.py"), *REPO.glob("serve/*.py"), *REPO.glob("actors/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target = ast.unparse(node.func.value).lower()
            writes = node.func.attr in ("set", "mset", "hset", "setnx", "lpush", "sadd", "zadd")
            if writes and ("redis" in target or target == "pipe"):
                keywords = {k.arg for k in node.keywords}
                sets.append((path.relative_to(REPO).as_posix(), node.func.attr, keywords))
    untimed = {(p, f) for p, f, kw in sets if not kw & {"ex", "px", "exat", "pxat"}}
    durable = {("aircast/registry.py", "set"), ("aircast/alert_store.py", "hset")}
    assert untimed <= durable and ("aircast/registry.py", "set") in untimed, sets


# -- Serve autoscaling ------------------------------------------------------------------------


def serve_deployments() -> set[str]:
    """Classes decorated with @serve.deployment in serve/*.py."""
    names = set()
    for path in (REPO / "serve").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and any(
                "serve.deployment" in ast.unparse(d) for d in node.decorator_list
            ):
                names.add(node.name)
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_serve_autoscales_within_its_workers(target: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[target]
    service = _one(docs, "RayService", "aircast")["spec"]
    config = yaml.safe_load(service["serveConfigV2"])
    (app,) = config["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    code = serve_deployments()
    assert set(deployments) <= code, set(deployments) - code
    max_ongoing = ServeSettings().max_ongoing_requests
    cpus = 0.0
    for name in sorted(code):
        d = deployments.get(name, {})
        actor_cpus = float(d.get("ray_actor_options", {}).get("num_cpus", 1))
        if name == "Refresher":  # one scheduled recomputation loop, by design
            assert "autoscaling_config" not in d and "num_replicas" not in d
            cpus += actor_cpus
            continue
        scaling = d["autoscaling_config"]
        assert d["num_replicas"] == "auto"  # overrides the builder's fixed num_replicas
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        assert 0 < scaling["target_ongoing_requests"] <= max_ongoing
        cpus += scaling["max_replicas"] * actor_cpus
    # Every replica at its maximum fits the serve worker group at its maximum.
    (group,) = service["rayClusterConfig"]["workerGroupSpecs"]
    limit = _cpu(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert cpus <= group["maxReplicas"] * limit, (cpus, group["maxReplicas"], limit)
    # The fixed replica count of the local stack is not set here (it would mislead).
    assert "AIRCAST_SERVE__REPLICAS" not in config_map_data(docs, "aircast-env")


# -- Prometheus ---------------------------------------------------------------------------------


def alert_rules(docs: list[Doc]) -> list[Doc]:
    text = config_map_data(docs, "prometheus-rules")["alerts.yml"]
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_keeps_its_data_and_loads_the_rules(
    target: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[target]
    deployment = _one(docs, "Deployment", "prometheus")["spec"]
    assert deployment["strategy"]["type"] == "Recreate"  # one writer of a ReadWriteOnce claim
    spec = deployment["template"]["spec"]
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    path = next(
        a.split("=", 1)[1] for a in container["args"] if a.startswith("--storage.tsdb.path=")
    )
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == path)
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    config = yaml.safe_load(config_map_data(docs, "prometheus-config")["prometheus.yml"])
    (pattern,) = config["rule_files"]
    rules_mount = next(m for m in container["volumeMounts"] if m["name"] == "rules")
    assert Path(pattern).parent == Path(rules_mount["mountPath"])
    assert volumes["rules"]["configMap"]["name"] == "prometheus-rules"
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    assert {"ray", "flink", "kafka-exporter", "influxdb"} <= jobs


def test_alert_rules_cover_the_pipeline(rendered: dict[str, list[Doc]]) -> None:
    rules = alert_rules(rendered["base"])
    problems = []
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        problems += prometheus_problems(rule["expr"])
    assert not problems, problems  # every ray_* name is a published aircast metric
    exprs = {r["alert"]: r["expr"] for r in rules}

    def covered(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs.values())

    assert covered(r"ray_aircast_collect_lag_messages") and covered(r"kafka_consumergroup_lag")
    assert covered(r"ray_aircast_dead_letters_total")
    assert covered(r'topic="aircast\.dead-letter"')
    assert covered(r"\bup\{") and covered(r"absent\(")  # a stage down
    assert covered(r"ray_aircast_ingest_snapshots_total")
    assert covered(r"ray_aircast_collect_points_total")
    assert covered(r'http_api_requests_total\{job="influxdb".*response_code=~"5')  # write errors
    assert len(exprs) == len(rules)  # alert names are unique


def test_unknown_metric_in_an_alert_is_found() -> None:
    assert prometheus_problems("sum by (partition) (ray_aircast_collect_lag_messages) > 1")
    assert prometheus_problems("rate(ray_aircast_collect_errors_total[5m]) > 0")
    assert (KUBERAY / "base" / "prometheus" / "alerts.yml").is_file()
