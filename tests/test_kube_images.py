"""The images the deployment runs (kuberay/images/*/Dockerfile), parsed and checked.

A small Dockerfile parser (stages, instructions in order, line continuations, comments,
``FROM ... AS name`` and ``--flag`` options) and the rules the images follow: every base
image pinned to a full version tag, the last stage running as a numeric non-root USER,
the project's dependencies installed before its code is copied (a code edit reuses the
dependency layer), and no Flink jar on the cluster's classpath that duplicates or
mismatches what the base image's Flink already holds. Broken Dockerfiles written inline
prove each rule can fail.
"""

from __future__ import annotations

import re
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "kuberay" / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# Top-level folders of the project's code (pyproject: packages aircast*, actors*, ...).
CODE_DIRS = ("aircast", "aircast_cli", "actors", "serve", "training", "flink")
FLINK_VENV_LIB = REPO / ".venv-flink" / "lib" / "python3.11" / "site-packages" / "pyflink" / "lib"


# -- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int  # first line of the instruction in the file (1-based)
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuations joined with spaces

    def flags(self) -> dict[str, str]:
        """``--name=value`` options at the start of the arguments (COPY --from=..., ...)."""
        return dict(re.findall(r"(?:^|\s)--([a-z-]+)=(\S+)", self.args.split(" -- ")[0]))

    def words(self) -> list[str]:
        """The arguments without leading ``--flag=value`` options, shell-split."""
        return [w for w in shlex.split(self.args, posix=True) if not w.startswith("--")]


@dataclass
class Stage:
    image: str  # what FROM names: an image reference or an earlier stage's name
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions, in order. Comment lines (also inside a
    continuation, as Docker ignores them) and blank lines are dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    if pending:
        raise ValueError(f"line {start}: the last instruction ends in a continuation")
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"line {ins.line}: FROM {ins.args!r} is not FROM image [AS name]")
            stages.append(Stage(words[0], name))
        elif not stages:
            if ins.keyword != "ARG":
                raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise ValueError("no FROM")
    return stages


# -- rules -----------------------------------------------------------------------------------

_FULL_VERSION = re.compile(r"(?:^|[^0-9.])v?\d+\.\d+\.\d+(?:[^0-9.]|$)")


def tag_problem(image: str) -> str | None:
    """Why an image reference is not pinned to a full version tag (None if it is)."""
    if "@sha256:" in image:
        return None
    _, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return f"{image}: no tag"
    if tag == "latest" or not _FULL_VERSION.search(tag):
        return f"{image}: tag {tag!r} is not a full version (x.y.z)"
    return None


def pin_problems(stages: list[Stage]) -> list[str]:
    names: set[str] = set()
    problems: list[str] = []
    for stage in stages:
        if stage.image not in names and (problem := tag_problem(stage.image)):
            problems.append(f"FROM {problem}")
        for ins in stage.instructions:
            source = ins.flags().get("from")
            problem = tag_problem(source) if source and source not in names else None
            if ins.keyword == "COPY" and problem:
                problems.append(f"line {ins.line}: COPY --from={problem}")
        if stage.name:
            names.add(stage.name)
    return problems


def user_problems(stages: list[Stage]) -> list[str]:
    """The last stage must end up as a numeric, non-root user (runAsNonRoot can only
    verify a numeric one)."""
    users = [ins for ins in stages[-1].instructions if ins.keyword == "USER"]
    if not users:
        return ["the last stage sets no USER (it would run as the base image's user)"]
    user = users[-1].args.split(":")[0]
    if not user.isdigit():
        return [f"USER {users[-1].args}: not numeric (runAsNonRoot cannot verify a name)"]
    if int(user) == 0:
        return [f"USER {users[-1].args}: root"]
    return []


def _copies_code(ins: Instruction) -> bool:
    if ins.keyword not in ("COPY", "ADD") or "from" in ins.flags():
        return False
    sources = ins.words()[:-1]
    return any(s.rstrip("/").split("/")[0] in (*CODE_DIRS, ".") for s in sources)


def _installs_dependencies(ins: Instruction) -> bool:
    return (
        ins.keyword == "RUN"
        and re.search(r"\bpip install\b", ins.args) is not None
        and "--no-deps" not in ins.args
    )


def layer_order_problems(stages: list[Stage]) -> list[str]:
    """In the last stage, the dependencies are installed (a pip install that resolves
    them) before any of the project's code is copied."""
    instructions = stages[-1].instructions
    installs = [i for i, ins in enumerate(instructions) if _installs_dependencies(ins)]
    code = [i for i, ins in enumerate(instructions) if _copies_code(ins)]
    if not installs:
        return ["the last stage installs no dependencies"]
    if code and code[0] < installs[0]:
        ins = instructions[code[0]]
        return [f"line {ins.line}: {ins.keyword} {ins.args} comes before the dependencies"]
    return []


def flink_lib_jars(stages: list[Stage]) -> list[str]:
    """Jar files the last stage copies into /opt/flink/lib (by cp in a RUN or COPY)."""
    jars: list[str] = []
    for ins in stages[-1].instructions:
        if ins.keyword == "RUN":
            for command in re.split(r"&&|;", ins.args):
                words = shlex.split(command)
                if words[:1] == ["cp"] and words[-1].rstrip("/") == "/opt/flink/lib":
                    jars += [Path(w).name for w in words[1:-1] if w.endswith(".jar")]
        elif ins.keyword == "COPY" and ins.words()[-1].startswith("/opt/flink/lib"):
            jars += [Path(w).name for w in ins.words()[:-1] if w.endswith(".jar")]
    return jars


def flink_version(stages: list[Stage]) -> str:
    base = stages[-1].image
    assert base.startswith("flink:"), base
    return base.removeprefix("flink:").split("-")[0]


def jar_problems(stages: list[Stage]) -> list[str]:
    """Jars added to Flink's lib folder: none twice, no Flink module of another version
    than the base image's Flink, and none of flink-connector-base (flink-dist holds it)."""
    jars = flink_lib_jars(stages)
    version = flink_version(stages)
    problems = [f"{j} copied twice" for j in sorted({j for j in jars if jars.count(j) > 1})]
    for jar in jars:
        stem = jar.removesuffix(".jar")
        if stem.startswith("flink-connector-base"):
            problems.append(f"{jar}: flink-dist-{version} already holds flink-connector-base")
        found = re.search(r"-(\d+\.\d+\.\d+)$", stem)
        if stem.startswith("flink-") and found and found.group(1) != version:
            problems.append(f"{jar}: version {found.group(1)} beside Flink {version}")
    return problems


# -- tests: the real Dockerfiles -----------------------------------------------------------


@pytest.fixture(scope="module", params=DOCKERFILES, ids=lambda p: p.parent.name)
def dockerfile(request: pytest.FixtureRequest) -> list[Stage]:
    path: Path = request.param
    return parse_dockerfile(path.read_text(encoding="utf-8"))


def test_both_images_are_defined() -> None:
    assert {p.parent.name for p in DOCKERFILES} == {"ray", "flink"}


def test_base_images_are_pinned(dockerfile: list[Stage]) -> None:
    assert not pin_problems(dockerfile)


def test_last_stage_runs_as_a_non_root_user(dockerfile: list[Stage]) -> None:
    assert not user_problems(dockerfile)


def test_dependencies_are_installed_before_the_code(dockerfile: list[Stage]) -> None:
    assert not layer_order_problems(dockerfile)
    # The dependency layer sees only pyproject.toml: README or code edits reuse it.
    last = dockerfile[-1].instructions
    first_install = next(i for i, ins in enumerate(last) if _installs_dependencies(ins))
    copied = [
        w
        for ins in last[:first_install]
        if ins.keyword == "COPY" and "from" not in ins.flags()  # not from another image
        for w in ins.words()[:-1]
    ]
    assert copied == ["pyproject.toml"], copied


def test_no_duplicate_or_mismatched_flink_jars() -> None:
    stages = parse_dockerfile((IMAGES / "flink" / "Dockerfile").read_text(encoding="utf-8"))
    assert flink_lib_jars(stages) == ["flink-connector-kafka.jar", "kafka-clients.jar"]
    assert not jar_problems(stages)


def test_added_jars_add_no_class_flink_dist_has() -> None:
    """With the Flink virtualenv at hand (make setup), open the very jars the image copies
    and check that none repeats a class of flink-dist (the base image's, same version)."""
    if not FLINK_VENV_LIB.is_dir():
        pytest.skip(f"{FLINK_VENV_LIB} not built (make setup)")
    stages = parse_dockerfile((IMAGES / "flink" / "Dockerfile").read_text(encoding="utf-8"))
    version = flink_version(stages)
    with zipfile.ZipFile(FLINK_VENV_LIB / f"flink-dist-{version}.jar") as dist:
        dist_classes = {n for n in dist.namelist() if n.endswith(".class")}
    for jar in flink_lib_jars(stages):
        with zipfile.ZipFile(FLINK_VENV_LIB / jar) as z:
            classes = {n for n in z.namelist() if n.endswith(".class")}
            manifest = z.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
        assert not classes & dist_classes, f"{jar} repeats {len(classes & dist_classes)} classes"
        spec = re.search(r"Specification-Version: (\S+)", manifest)
        if spec and "Flink :" in manifest:  # a Flink connector: built for this Flink minor
            minor = ".".join(version.split(".")[:2])
            assert spec.group(1).endswith(f"-{minor}"), (jar, spec.group(1))
    # The jar the image leaves out does repeat flink-dist's classes (why it is left out).
    with zipfile.ZipFile(FLINK_VENV_LIB / "flink-connector-base.jar") as z:
        assert {n for n in z.namelist() if n.endswith(".class")} & dist_classes


def test_images_match_the_deployed_versions() -> None:
    """Ray and Flink versions of the images are the ones the manifests declare."""
    ray = parse_dockerfile((IMAGES / "ray" / "Dockerfile").read_text(encoding="utf-8"))
    flink = parse_dockerfile((IMAGES / "flink" / "Dockerfile").read_text(encoding="utf-8"))
    base = REPO / "kuberay" / "base"
    service = yaml.safe_load((base / "ray" / "rayservice.yaml").read_text())
    ray_version = service["spec"]["rayClusterConfig"]["rayVersion"]
    assert ray[-1].image.startswith(f"rayproject/ray:{ray_version}-")
    deployment = yaml.safe_load((base / "flink" / "flinkdeployment.yaml").read_text())
    version = flink_version(flink)
    assert deployment["spec"]["flinkVersion"] == "v" + "_".join(version.split(".")[:2])
    assert deployment["spec"]["job"]["jarURI"].endswith(f"/flink-python-{version}.jar")
    # The fast lane is compiled against the same Flink the image runs.
    lane = next(s for s in flink if s.name == "lane")
    sources = [ins.flags().get("from") for ins in lane.instructions if ins.keyword == "COPY"]
    assert flink[-1].image in sources
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"apache-flink=={version}"' in pyproject


def copied_code(stages: list[Stage]) -> set[str]:
    """The project's top-level code folders the last stage copies in."""
    return {
        source.rstrip("/").split("/")[0]
        for ins in stages[-1].instructions
        if _copies_code(ins)
        for source in ins.words()[:-1]
    }


def test_the_ray_image_holds_every_package_its_pods_run() -> None:
    """The Ray pods run the app, the stages and training; the keeper and backfills run
    the `aircast` command, whose package (aircast_cli) the image must hold too: the
    console script alone fails on its first import."""
    ray = parse_dockerfile((IMAGES / "ray" / "Dockerfile").read_text(encoding="utf-8"))
    assert {"aircast", "aircast_cli", "actors", "serve", "training"} <= copied_code(ray)
    assert copied_code(parse_dockerfile(BROKEN)) == {"aircast"}


# -- tests: the rules refuse what they should --------------------------------------------------

BROKEN = """\
# syntax comment
FROM python:3.11 AS build
COPY --from=busybox /bin/sh /sh
RUN pip install \\
    # a comment inside a continuation is ignored
    --no-cache-dir build

FROM ubuntu:latest
COPY aircast ./aircast
COPY pyproject.toml ./
RUN pip install ".[app]"
COPY --from=build /x /y
RUN cp /tmp/flink-connector-base.jar /tmp/flink-core-2.0.0.jar /opt/flink/lib/ \\
    && cp /tmp/flink-core-2.0.0.jar /opt/flink/lib
USER ray
"""


def test_parser_reads_stages_continuations_and_flags() -> None:
    stages = parse_dockerfile(BROKEN)
    assert [(s.image, s.name) for s in stages] == [
        ("python:3.11", "build"),
        ("ubuntu:latest", None),
    ]
    run = stages[0].instructions[1]
    assert (run.keyword, run.line, run.args) == ("RUN", 4, "pip install --no-cache-dir build")
    assert stages[1].instructions[3].flags() == {"from": "build"}
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("RUN true\nFROM a:1.2.3\n")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM a:1.2.3\nRUN true \\\n")


def test_broken_dockerfile_is_refused() -> None:
    stages = parse_dockerfile(BROKEN)
    pins = pin_problems(stages)
    assert any("python:3.11: tag '3.11' is not a full version" in p for p in pins), pins
    assert any("ubuntu:latest: tag 'latest'" in p for p in pins), pins
    assert any("COPY --from=busybox: no tag" in p for p in pins), pins
    assert not any("build" in p for p in pins), pins  # a stage name is no image
    assert user_problems(stages) == ["USER ray: not numeric (runAsNonRoot cannot verify a name)"]
    assert user_problems(parse_dockerfile("FROM a:1.2.3\nUSER 0:0\n")) == ["USER 0:0: root"]
    assert user_problems(parse_dockerfile("FROM a:1.2.3\n"))[0].startswith("the last stage")
    order = layer_order_problems(stages)
    assert order == ["line 9: COPY aircast ./aircast comes before the dependencies"]
    stages[-1] = Stage("flink:2.0.1", None, stages[-1].instructions)
    jars = jar_problems(stages)
    assert "flink-core-2.0.0.jar copied twice" in jars
    assert any("flink-connector-base.jar: flink-dist-2.0.1 already holds" in p for p in jars)
    assert any("flink-core-2.0.0.jar: version 2.0.0 beside Flink 2.0.1" in p for p in jars)
