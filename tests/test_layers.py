"""The layering holds by construction: import-linter's contracts (pyproject.toml) over
every import, those inside functions included. The domain ``aircast`` imports no
runtime (Ray, TensorFlow/Keras, PyFlink), no runtime shell (``actors``, ``serve``,
``training``, ``flink``) and not the CLI (``aircast_cli``); the shells do not import
the CLI either."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from .conftest import REPO

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_every_import_contract_is_kept() -> None:
    done = _lint()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_import_of_ray_inside_a_domain_function_breaks_the_contract() -> None:
    """The contract bites: a domain module importing Ray in a function body (how the
    CLI used to) is refused."""
    probe = REPO / "aircast" / f"_layer_probe_{uuid.uuid4().hex[:8]}.py"
    probe.write_text("def connect() -> None:\n    import ray  # noqa: F401\n", encoding="utf-8")
    try:
        done = _lint()
    finally:
        probe.unlink()
    assert done.returncode != 0, done.stdout[-3000:]
    assert f"aircast.{probe.stem} -> ray" in done.stdout, done.stdout[-3000:]
