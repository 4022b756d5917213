"""kuberay/create-secrets.sh against a stand-in kubectl that keeps Secrets in a JSON file
and logs every command line: it creates aircast-secrets with every key the manifests
reference, adds only missing keys on a second run, rotates one key on request, and never
passes a secret value on a command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_kuberay import KUBERAY, secret_keys

SCRIPT = KUBERAY / "create-secrets.sh"

# kubectl as the script uses it: get/create namespace, label, get/create/patch a Secret.
FAKE_KUBECTL = r"""
import base64, json, os, sys
from pathlib import Path
state_path = Path(os.environ["FAKE_KUBECTL_STATE"])
state = json.loads(state_path.read_text()) if state_path.exists() else {"ns": [], "secrets": {}}
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
ns = "default"
if args[:1] == ["-n"]:
    ns, args = args[1], args[2:]
def save():
    state_path.write_text(json.dumps(state))
if args[:2] == ["get", "namespace"]:
    sys.exit(0 if args[2] in state["ns"] else 1)
if args[:2] == ["create", "namespace"]:
    state["ns"].append(args[2]); save(); sys.exit(0)
if args[:2] == ["label", "namespace"]:
    sys.exit(0)
key = f"{ns}/{args[2]}" if len(args) > 2 else ""
if args[:2] == ["get", "secret"]:
    if key not in state["secrets"]:
        sys.exit(1)
    if "-o" in args:
        print(" ".join(sorted(state["secrets"][key])) + " ", end="")
    sys.exit(0)
if args[:3] == ["create", "secret", "generic"]:
    key = f"{ns}/{args[3]}"
    folder = Path(next(a for a in args if a.startswith("--from-file=")).split("=", 1)[1])
    state["secrets"][key] = {p.name: p.read_text() for p in folder.iterdir()}
    save(); sys.exit(0)
if args[:2] == ["patch", "secret"]:
    patch = json.loads(Path(args[args.index("--patch-file") + 1]).read_text())
    for k, v in patch["data"].items():
        state["secrets"][key][k] = base64.b64decode(v).decode()
    save(); sys.exit(0)
sys.exit(f"unexpected kubectl {sys.argv[1:]}")
"""


@pytest.fixture
def kubectl(tmp_path: Path) -> dict[str, str]:
    for tool in ("openssl", "base64", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_KUBECTL_STATE": str(tmp_path / "state.json"),
        "FAKE_KUBECTL_LOG": str(tmp_path / "argv.log"),
    }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def secrets(env: dict[str, str]) -> dict[str, str]:
    state = json.loads(Path(env["FAKE_KUBECTL_STATE"]).read_text())
    return dict(state["secrets"]["aircast/aircast-secrets"])


def test_creates_completes_and_rotates_without_values_on_argv(kubectl: dict[str, str]) -> None:
    done = run(kubectl, "aircast")
    assert done.returncode == 0, done.stderr
    first = secrets(kubectl)
    assert set(first) == secret_keys()
    assert all(re.fullmatch(r"[0-9a-f]{48}", v) for v in first.values()), first
    assert len(set(first.values())) == len(first)  # independent random values

    # Again: nothing to do. Without one key: only that key is added.
    assert "nothing to do" in run(kubectl, "aircast").stdout
    state = json.loads(Path(kubectl["FAKE_KUBECTL_STATE"]).read_text())
    del state["secrets"]["aircast/aircast-secrets"]["redis-gcs-password"]
    Path(kubectl["FAKE_KUBECTL_STATE"]).write_text(json.dumps(state))
    done = run(kubectl, "aircast")
    assert done.returncode == 0 and "new values for redis-gcs-password" in done.stdout
    second = secrets(kubectl)
    assert {k: v for k, v in second.items() if k != "redis-gcs-password"} == {
        k: v for k, v in first.items() if k != "redis-gcs-password"
    }

    # Rotation: one key changes, the others stay.
    done = run(kubectl, "aircast", "--rotate", "serve-admin-token")
    assert done.returncode == 0, done.stderr
    third = secrets(kubectl)
    assert third["serve-admin-token"] != second["serve-admin-token"]
    assert {k: v for k, v in third.items() if k != "serve-admin-token"} == {
        k: v for k, v in second.items() if k != "serve-admin-token"
    }
    assert run(kubectl, "aircast", "--rotate", "nope").returncode == 2

    # No value ever reached a command line.
    argv = Path(kubectl["FAKE_KUBECTL_LOG"]).read_text()
    values = {v for s in (first, second, third) for v in s.values()}
    assert not [v for v in values if v in argv]


def test_every_referenced_key_is_created() -> None:
    """The script's keys are exactly the aircast-secrets keys the manifests reference."""
    referenced = set()
    for path in KUBERAY.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        referenced |= set(re.findall(r"name: aircast-secrets\s+key: ([a-z0-9-]+)", text))
        for block in re.findall(r"secretName: aircast-secrets(.*?)(?:\n\s*- name:|\Z)", text, re.S):
            referenced |= set(re.findall(r"key: ([a-z0-9-]+)", block))
    assert referenced == secret_keys()


def test_provisioning_reads_secrets_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """influxdb-provision takes its secrets from mounted files (<NAME>_FILE), else from
    the variable itself; a missing one stops it with a clear message."""
    from tests.test_kuberay import _module

    provision = _module(KUBERAY / "base" / "influxdb" / "provision.py")
    token = tmp_path / "admin-token"
    token.write_text("abc123\n", encoding="utf-8")
    monkeypatch.setenv("INFLUXDB_ADMIN_TOKEN_FILE", str(token))
    monkeypatch.setenv("INFLUXDB_ADMIN_TOKEN", "ignored")
    assert provision.secret("INFLUXDB_ADMIN_TOKEN") == "abc123"
    monkeypatch.delenv("INFLUXDB_ADMIN_TOKEN_FILE")
    assert provision.secret("INFLUXDB_ADMIN_TOKEN") == "ignored"
    monkeypatch.setenv("GRAFANA_INFLUX_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="cannot read GRAFANA_INFLUX_PASSWORD_FILE"):
        provision.secret("GRAFANA_INFLUX_PASSWORD")
    monkeypatch.delenv("GRAFANA_INFLUX_PASSWORD_FILE")
    monkeypatch.delenv("GRAFANA_INFLUX_PASSWORD", raising=False)
    with pytest.raises(
        SystemExit, match=r"GRAFANA_INFLUX_PASSWORD \(or GRAFANA_INFLUX_PASSWORD_FILE\)"
    ):
        provision.secret("GRAFANA_INFLUX_PASSWORD")
