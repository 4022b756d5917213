"""checkov (PyPI) over every rendered overlay: no failed check, and every skipped check
skipped in the manifest itself (``checkov.io/skipN: CKV_K8S_xx=<reason>``) with a reason.

checkov lives in a virtualenv of its own (its pins are not the app's): ``$CHECKOV_BIN``,
else ``.venv-checkov/bin/checkov`` (built by the Makefile target named in
kuberay/README.md, part of `make setup`); without either the test fails saying so. It runs offline
(``--skip-download``: no guidelines or policies fetched) on the YAML ``kubectl kustomize``
renders. checkov judges the core kinds (Deployments, StatefulSets, Jobs, CronJobs,
NetworkPolicies...); the pods of the custom resources (Ray, Flink, Strimzi) are judged
by tests/test_kube_policy.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_kuberay import KUBERAY, REPO, TARGETS

CHECKOV = os.environ.get("CHECKOV_BIN") or str(REPO / ".venv-checkov" / "bin" / "checkov")


def _checkov() -> str:
    found = shutil.which(CHECKOV)
    assert found is not None, (
        f"checkov not found at {CHECKOV}: `make venvs` builds .venv-checkov (or set CHECKOV_BIN)"
    )
    return found


def _reports(output: str) -> list[dict[str, Any]]:
    data = json.loads(output)
    return data if isinstance(data, list) else [data]


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    checkov = _checkov()
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the overlays"
    folder = tmp_path_factory.mktemp("rendered")
    for target in TARGETS:
        done = subprocess.run(
            [kubectl, "kustomize", str(KUBERAY / target)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (folder / f"{target.replace('/', '_')}.yaml").write_text(done.stdout, encoding="utf-8")
    backfill = KUBERAY / "jobs" / "rayjob-backfill.yaml"
    (folder / "jobs_rayjob-backfill.yaml").write_text(backfill.read_text(), encoding="utf-8")
    done = subprocess.run(
        [
            *(checkov, "--directory", str(folder), "--framework", "kubernetes"),
            *("--skip-download", "--compact", "--output", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    # Exit code 1 means "some check failed"; anything else that is not JSON is an error.
    assert done.returncode in (0, 1), f"checkov failed:\n{done.stderr[-3000:]}"
    return _reports(done.stdout)


def test_checkov_finds_no_failure(scan: list[dict[str, Any]]) -> None:
    (report,) = scan
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["resource_count"] > 0 and summary["passed"] > 0, summary
    failed = [
        f"{f['check_id']} {f['check_name']}: {Path(f['file_path']).name} {f['resource']}"
        for f in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(sorted(failed))


def test_every_skip_has_a_reason(scan: list[dict[str, Any]]) -> None:
    (report,) = scan
    skipped = report["results"]["skipped_checks"]
    assert skipped  # the annotations are read (see kuberay/base/*: checkov.io/skipN)
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 8, (check["check_id"], check["resource"], reason)
