"""Offline validation of Kubernetes manifests, as an API server would judge them on create.

* Core kinds (``v1``, ``apps/v1``, ``batch/v1``, ``rbac...``): PyPI ``kubernetes-validate``
  with its strict schemas (unknown fields are errors, as with ``kubectl --validate=strict``).
* Custom kinds: the CRD files themselves (``<shared_dir>/../crds``). Each served version's
  ``openAPIV3Schema`` is translated to JSON Schema with the structural-schema rules the API
  server applies (unknown fields rejected unless ``x-kubernetes-preserve-unknown-fields``,
  ``x-kubernetes-int-or-string``, ``nullable``, list-type ``set``/``map`` uniqueness), and
  every ``x-kubernetes-validations`` CEL rule is evaluated with cel-python after schema
  defaults are applied. Transition rules (those naming ``oldSelf``) only run on update, so
  they are not evaluated here. A custom resource's ``metadata`` is checked against the core
  ``ObjectMeta`` schema.
* A custom kind whose CRD the folder lacks but which has a stand-in here
  (:data:`STAND_INS`: a reduced schema written from the operator's documentation) is
  judged by the stand-in, and :func:`with_stand_ins` says which ones were used, so a test
  can report it; once the real CRD is in the folder it takes over.
* Anything else is an unknown kind, which fails.

Every function returns a list of problems (empty = valid) so a test can show them all.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.33"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class CustomKind:
    group: str
    version: str
    kind: str
    schema: dict[str, Any]  # the CRD's openAPIV3Schema, untouched
    validator: jsonschema.protocols.Validator


def load_crds(crd_dir: Path) -> dict[tuple[str, str], CustomKind]:
    """Every served (apiVersion, kind) defined by the CRD files under ``crd_dir``."""
    kinds: dict[tuple[str, str], CustomKind] = {}
    files = sorted([*crd_dir.rglob("*.yaml"), *crd_dir.rglob("*.yml")])
    if not files:
        raise FileNotFoundError(f"no CRD files under {crd_dir}")
    for path in files:
        # libyaml when present: the KubeRay CRDs alone are 3 MB of YAML.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec["versions"]:
                if not ver.get("served", False):
                    continue
                schema = ver["schema"]["openAPIV3Schema"]
                api_version = f"{spec['group']}/{ver['name']}"
                root = to_json_schema(schema)
                # Root metadata is the core ObjectMeta, validated apart (see below).
                root["properties"]["metadata"] = {"type": "object"}
                # Some CRDs leave the type fields out of their schema; the server knows them.
                root["properties"].setdefault("apiVersion", {"type": "string"})
                root["properties"].setdefault("kind", {"type": "string"})
                validator = jsonschema.Draft202012Validator(root)
                kinds[(api_version, spec["names"]["kind"])] = CustomKind(
                    spec["group"], ver["name"], spec["names"]["kind"], schema, validator
                )
    return kinds


# -- stand-ins for CRDs the folder lacks ---------------------------------------------------

_ANY_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_KAFKA_AUTHENTICATIONS = ["tls", "tls-external", "scram-sha-512"]
_KAFKA_ACL_RESOURCES = ["topic", "group", "cluster", "transactionalId"]
_KAFKA_ACL_OPERATIONS = [
    *("Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction"),
    *("AlterConfigs", "DescribeConfigs", "IdempotentWrite", "All"),
]

# Strimzi 1.x KafkaUser (kafka.strimzi.io/v1), as documented: the fields of spec with
# their types and enumerations; unknown fields are refused like the real structural schema
# would, nested free-form parts (password source, quotas, template) are not judged.
_KAFKA_USER_V1: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "properties": {
                "userName": {"type": "string"},
                "authentication": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": _KAFKA_AUTHENTICATIONS},
                        "password": _ANY_OBJECT,
                    },
                },
                "authorization": {
                    "type": "object",
                    "required": ["acls", "type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["simple"]},
                        "acls": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["resource", "operations"],
                                "properties": {
                                    "type": {"type": "string", "enum": ["allow", "deny"]},
                                    "host": {"type": "string"},
                                    "resource": {
                                        "type": "object",
                                        "required": ["type"],
                                        "properties": {
                                            "type": {
                                                "type": "string",
                                                "enum": _KAFKA_ACL_RESOURCES,
                                            },
                                            "name": {"type": "string"},
                                            "patternType": {
                                                "type": "string",
                                                "enum": ["literal", "prefix"],
                                            },
                                        },
                                    },
                                    "operations": {
                                        "type": "array",
                                        "items": {"type": "string", "enum": _KAFKA_ACL_OPERATIONS},
                                    },
                                },
                            },
                        },
                    },
                },
                "quotas": _ANY_OBJECT,
                "template": _ANY_OBJECT,
            },
        },
        "status": _ANY_OBJECT,
    },
}

# (apiVersion, kind) -> (schema, where the real CRD comes from)
STAND_INS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    ("kafka.strimzi.io/v1", "KafkaUser"): (
        _KAFKA_USER_V1,
        "strimzi-kafka-operator 1.2.0 install/cluster-operator/044-Crd-kafkauser.yaml",
    ),
}


def with_stand_ins(
    kinds: dict[tuple[str, str], CustomKind],
) -> tuple[dict[tuple[str, str], CustomKind], list[str]]:
    """``kinds`` plus a stand-in for every kind of :data:`STAND_INS` they lack, and the
    descriptions of the stand-ins used (empty when every CRD is there)."""
    out = dict(kinds)
    used: list[str] = []
    for (api_version, kind), (schema, source) in STAND_INS.items():
        if (api_version, kind) in out:
            continue
        group, _, version = api_version.rpartition("/")
        root = to_json_schema(schema)
        root["properties"]["metadata"] = {"type": "object"}
        validator = jsonschema.Draft202012Validator(root)
        out[(api_version, kind)] = CustomKind(group, version, kind, schema, validator)
        used.append(f"{api_version} {kind} (missing CRD: {source})")
    return out, used


# -- structural schema -> JSON Schema ------------------------------------------------------

_VALUE_KEYS: tuple[str, ...] = (
    *("enum", "pattern", "minimum", "maximum", "minLength", "maxLength"),
    *("minItems", "maxItems", "required", "minProperties", "maxProperties"),
)


def to_json_schema(node: dict[str, Any], structural: bool = True) -> dict[str, Any]:
    """A JSON Schema judging a value the way the API server judges it against ``node``.

    ``structural`` is false inside ``anyOf``/``oneOf``/``allOf``/``not`` branches, which in
    a structural schema may only add value validations, never declare fields.
    """
    out: dict[str, Any] = {k: node[k] for k in _VALUE_KEYS if k in node}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    if node.get("exclusiveMinimum") is True and "minimum" in node:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True and "maximum" in node:
        out["exclusiveMaximum"] = out.pop("maximum")
    if "properties" in node:
        out["properties"] = {
            k: to_json_schema(v, structural) for k, v in node["properties"].items()
        }
    if "items" in node:
        out["items"] = to_json_schema(node["items"], structural)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = to_json_schema(extra, structural)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif (
        structural
        and node.get("type") == "object"
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and not node.get("x-kubernetes-embedded-resource")
    ):
        # Strict field validation: a field the schema does not declare is an error.
        out["additionalProperties"] = False
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            out[key] = [to_json_schema(b, structural=False) for b in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"], structural=False)
    return out


# -- walking the value beside its schema (list types, defaults, CEL) ------------------------


def _children(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, dict[str, Any], Any]]:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in props:
                yield f".{key}", props[key], child
            elif isinstance(extra, dict):
                yield f"[{key!r}]", extra, child
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            yield f"[{i}]", schema["items"], child


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does before CEL."""
    value = copy.deepcopy(value)
    _fill_defaults(schema, value)
    return value


def _fill_defaults(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for key, prop in schema.get("properties", {}).items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
    for _, child_schema, child in _children(schema, value):
        _fill_defaults(child_schema, child)


def list_type_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    problems: list[str] = []
    if isinstance(value, list):
        kind = schema.get("x-kubernetes-list-type")
        if kind == "set":
            seen = [yaml.safe_dump(v) for v in value]
            if len(seen) != len(set(seen)):
                problems.append(f"{path}: duplicate items in a list of type set")
        elif kind == "map":
            keys = schema.get("x-kubernetes-list-map-keys", [])
            tuples = [tuple(str(v.get(k)) for k in keys) for v in value if isinstance(v, dict)]
            if len(tuples) != len(set(tuples)):
                problems.append(f"{path}: duplicate keys {keys} in a list of type map")
    for sub, child_schema, child in _children(schema, value):
        problems += list_type_problems(child_schema, child, path + sub)
    return problems


_CEL = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _CEL.program(_CEL.compile(rule))
    return _PROGRAMS[rule]


def cel_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Every failed ``x-kubernetes-validations`` rule under ``schema`` for ``value``.

    ``value`` must already carry its defaults (:func:`with_defaults`). A rule that cannot
    be evaluated (e.g. it reads a field that is absent) fails, as on the API server.
    """
    problems: list[str] = []
    for check in schema.get("x-kubernetes-validations", []):
        rule = check["rule"]
        if re.search(r"\boldSelf\b", rule):
            continue  # a transition rule: evaluated on update only
        message = check.get("message", f"failed rule: {rule}")
        try:
            result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:
            problems.append(f"{path or '<root>'}: {message} (rule error: {exc.args[0]})")
            continue
        if isinstance(result, celpy.CELEvalError):
            problems.append(f"{path or '<root>'}: {message} (rule error: {result.args[0]})")
        elif not bool(result):
            problems.append(f"{path or '<root>'}: {message}")
    for sub, child_schema, child in _children(schema, value):
        problems += cel_problems(child_schema, child, path + sub)
    return problems


# -- one object -----------------------------------------------------------------------------


def _core_problems(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"unknown kind {obj.get('kind')} of apiVersion {obj.get('apiVersion')}"]
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "<root>"
        return [f"{where}: {exc.message}"]
    return []


def _custom_problems(obj: dict[str, Any], kind: CustomKind) -> list[str]:
    problems = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in kind.validator.iter_errors(obj)
    ]
    problems += list_type_problems(kind.schema, obj)
    if not problems:  # CEL rules assume a value that passed the schema
        problems += cel_problems(kind.schema, with_defaults(kind.schema, obj))
    # The metadata of a custom resource is the core ObjectMeta.
    meta_probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    problems += [f"metadata: {p}" for p in _core_problems(meta_probe)]
    return problems


def validate(obj: Any, crds: dict[tuple[str, str], CustomKind]) -> list[str]:
    """Problems of one manifest object; an empty list means the API server would take it."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["not a Kubernetes object (apiVersion and kind are required)"]
    name = obj.get("metadata", {}).get("name") or obj.get("metadata", {}).get("generateName")
    problems: list[str] = []
    if not isinstance(name, str) or not _NAME.match(name.rstrip("-")) or len(name) > 253:
        problems.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    custom = crds.get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        return problems + _custom_problems(obj, custom)
    group = obj["apiVersion"].rpartition("/")[0]
    if any(api.startswith(f"{group}/") for api, _ in crds) and group:
        return [*problems, f"unknown kind {obj['kind']} of apiVersion {obj['apiVersion']}"]
    return problems + _core_problems(obj)


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
