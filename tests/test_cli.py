"""The CLI as a user runs it, without a Docker engine: plan, list, errors and exit codes."""
from __future__ import annotations

import json

import pytest

from pytorch_cuda import matrix, plan, render

from .dockerutil import build_py

NO_DAEMON = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_dry_run_prints_the_plan_without_docker(real_matrix):
    result = build_py("--cuda", "12.1", "--dry-run", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    build = real_matrix.resolve(cuda="12.1")
    lines = [line for line in result.stdout.splitlines() if line.startswith("pytorch-cuda:")]
    assert [line.split()[0] for line in lines] == [
        f"pytorch-cuda:{build.torch}-cuda12.1-{variant}" for variant in ("runtime", "jupyter", "ssh")
    ]
    for value in (build.torch, build.cudnn, build.nccl, "12.1"):
        assert value in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--cuda", "99.9"], "CUDA 99.9 is not in the matrix; supported:"),
    (["--cuda", "12.1", "--torch", "1.0"], "torch 1.0 is not in the matrix; supported:"),
    (["--cuda", "12.1", "--python", "2.7"], "Python 2.7"),
    ([], "say what to build"),
    (["--cuda", "12.1", "--push"], "--push needs --registry"),
    (["--cuda", "12.1", "--cpu-shares", "1"], "--cpu-shares 1: a weight from 2 to 262144"),
    (["--cuda", "12.1", "--cpu-shares", "many"], "argument --cpu-shares: invalid int value: 'many'"),
    (["--cuda", "12.1", "--ca-cert", "/nonexistent.pem"], "--ca-cert /nonexistent.pem: no such file"),
    (["--cuda", "12.1", "--variant", "desktop"], "invalid choice: 'desktop'"),
    (["--cuda", "13.0", "--platform", "linux/riscv64"],
     "unknown platform linux/riscv64: images are built for linux/amd64, linux/arm64"),
    # PyPI's aarch64 torch wheels carry CUDA from the CUDA 13 lines on (images/matrix.json, `arm64`).
    (["--cuda", "12.1", "--platform", "linux/arm64"],
     "torch 2.4.1 / CUDA 12.1 (pypi) has no CUDA wheels for linux/arm64; lines that have them: "
     "CUDA 13.0 (torch 2.11.0 to 2.14.1), CUDA 13.2 (torch 2.15.0)"),
    (["--all", "--render", "--platform", "linux/arm64"], "--render writes the committed files"),
    (["--cuda", "auto", "--all", "--dry-run"], "--cuda auto picks one tag for this host: drop --all"),
    # the release steps (tests/test_release.py): each one call, refused before Docker is asked
    (["--cuda", "12.1", "--publish"], "--publish needs --registry"),
    (["--cuda", "12.1", "--registry", "r.example", "--publish", "--dry-run"], "--publish is a step of its own: drop --dry-run"),
    (["--cuda", "13.0", "--registry", "r.example", "--index"], "--index joins the platforms of a tag: select both"),
    (["--move-alias", "r.example/pytorch-cuda:v2.14-cuda13.0-runtime"], "--move-alias ALIAS and --to REF go together"),
    (["--move-alias", "r.example/pytorch-cuda:v2.14-cuda99.9-runtime", "--to", "sha256:" + "ab" * 32],
     "r.example/pytorch-cuda:v2.14-cuda99.9-runtime is no alias of a tag of the matrix"),
    (["--move-alias", "r.example/pytorch-cuda:v2.14-cuda13.0-runtime", "--to", "r.example/pytorch-cuda:2.14.1-cuda13.0-ssh"],
     "is the alias of r.example/pytorch-cuda:2.14.1-cuda13.0-runtime; give that tag or a digest"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    result = build_py(*args, env=NO_DAEMON)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_an_arm64_plan_names_arm64_tags_and_base():
    result = build_py("--cuda", "13.0", "--platform", "linux/amd64,linux/arm64", "--dry-run", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("pytorch-cuda:")]
    assert [(row[0], row[-2]) for row in rows] == [
        ("pytorch-cuda:2.14.1-cuda13.0-runtime", "debian:bookworm-slim"),
        ("pytorch-cuda:2.14.1-cuda13.0-jupyter", "pytorch-cuda:2.14.1-cuda13.0-runtime"),
        ("pytorch-cuda:2.14.1-cuda13.0-ssh", "pytorch-cuda:2.14.1-cuda13.0-runtime"),
        ("pytorch-cuda:2.14.1-cuda13.0-runtime-arm64", "arm64v8/debian:bookworm-slim"),
        # The variants build FROM the runtime of their own platform.
        ("pytorch-cuda:2.14.1-cuda13.0-jupyter-arm64", "pytorch-cuda:2.14.1-cuda13.0-runtime-arm64"),
        ("pytorch-cuda:2.14.1-cuda13.0-ssh-arm64", "pytorch-cuda:2.14.1-cuda13.0-runtime-arm64"),
    ]


def test_impossible_combination_lists_what_exists(real_matrix):
    newest_cuda = real_matrix.cuda_versions()[-1]
    result = build_py("--cuda", newest_cuda, "--torch", "2.1", env=NO_DAEMON)
    assert result.returncode == 2
    assert "no build for torch 2.1 with CUDA" in result.stderr and "combinations that exist" in result.stderr


def test_daemon_down_is_one_clear_line():
    result = build_py("--cuda", "12.1", env=NO_DAEMON)
    assert result.returncode == 1
    assert "cannot reach the Docker daemon" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_list_prints_every_tag_of_the_matrix(real_matrix):
    result = build_py("--list", env=NO_DAEMON)
    assert result.returncode == 0
    rows = result.stdout.strip().splitlines()[1:]
    assert len(rows) == len(real_matrix.newest_per_tag())
    assert {tuple(r.split()[:2]) for r in rows} == {(b.torch, b.cuda) for b in real_matrix.newest_per_tag()}


def test_committed_dockerfiles_match_the_templates(real_matrix):
    """Golden files: `python build.py --all --render` regenerates them; a stale one fails here."""
    specs = plan.image_specs(real_matrix, real_matrix.newest_per_tag(), variants=plan.VARIANTS)
    stale = []
    for spec in specs:
        for path, text in render.image_files(spec, real_matrix.variant_packages.get(spec.variant, ())).rendered.items():
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(matrix.REPO_ROOT)))
    assert not stale, f"run `python build.py --all --render`; stale: {stale[:5]}"
    committed = set(matrix.IMAGES_DIR.glob("*/*/Dockerfile"))
    assert committed == {spec.dockerfile for spec in specs}, "a committed Dockerfile belongs to no tag"
    shared = {step.lock_path for spec in specs if spec.kind.is_root for step in render.pip_steps(spec)[:-1]}
    committed_locks = set(render.NVIDIA_LOCKS_DIR.glob("*")) | set(render.PYTHON_LOCKS_DIR.glob("*"))
    assert committed_locks == shared, "a committed NVIDIA or Python lock belongs to no tag"


def test_dry_run_names_each_images_source_and_dockerfile(real_matrix):
    """The plan says what each image builds FROM and where its Dockerfile is, per variant and registry."""
    result = build_py("--cuda", "12.1", "--dry-run", "--registry", "r.example/team", "--python", "3.11", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["TAG", "ALIASES", "TORCH", "CUDA", "CUDNN", "NCCL", "PYTHON", "FROM", "DOCKERFILE"]
    cells = {row.split()[0]: row.split() for row in rows}
    runtime = cells["r.example/team/pytorch-cuda:2.4.1-cuda12.1-runtime"]
    assert runtime[1] == "r.example/team/pytorch-cuda:v2.4-cuda12.1-runtime"
    assert runtime[-2:] == ["debian:bookworm-slim", "images/2.4.1-cuda12.1/runtime/Dockerfile"]
    ssh = cells["r.example/team/pytorch-cuda:2.4.1-cuda12.1-ssh"]
    assert ssh[-2:] == ["r.example/team/pytorch-cuda:2.4.1-cuda12.1-runtime", "images/2.4.1-cuda12.1/ssh/Dockerfile"]


def test_ci_matrix_has_one_entry_per_tag_with_its_alias(real_matrix):
    result = build_py("--all", "--variant", "runtime", "--ci-matrix", env=NO_DAEMON)
    entries = json.loads(result.stdout)["include"]
    assert len(entries) == len(real_matrix.newest_per_tag())
    entry = next(e for e in entries if e["tag"] == "2.4.1-cuda12.1-runtime")
    assert entry["alias"] == "v2.4-cuda12.1-runtime" and entry["build_args"].startswith("--torch 2.4.1 --cuda 12.1")
    assert next(e for e in entries if e["tag"] == "2.4.0-cuda12.1-runtime")["alias"] == ""
    assert {e["platform"] for e in entries} == {"linux/amd64"}


def test_ci_matrix_entries_name_the_platforms_of_the_published_tag():
    """What the verify job's alias move checks the pulled index against: both platforms for every
    variant of the lines with aarch64 CUDA wheels (CUDA 13), linux/amd64 alone everywhere else."""
    result = build_py("--all", "--ci-matrix", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["include"]
    both = {e["tag"] for e in entries if e["platforms"] == "linux/amd64,linux/arm64"}
    assert both == {f"{t}-{v}" for t in ("2.11.0-cuda13.0", "2.12.0-cuda13.0", "2.12.1-cuda13.0", "2.13.0-cuda13.0",
                                          "2.14.0-cuda13.0", "2.14.1-cuda13.0", "2.15.0-cuda13.2")
                    for v in ("runtime", "jupyter", "ssh", "devel")}
    assert {e["platforms"] for e in entries if e["tag"] not in both} == {"linux/amd64"}


def test_ci_matrix_for_arm64_has_the_lines_with_aarch64_cuda_wheels():
    result = build_py("--all", "--platform", "linux/arm64", "--ci-matrix", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)["include"]
    # images/matrix.json: torch 2.11.0 to 2.14.1 (CUDA 13.0) and 2.15.0 (CUDA 13.2) have aarch64 CUDA wheels.
    assert [e["tag"] for e in entries] == [f"{t}-{variant}-arm64" for t in (
        "2.11.0-cuda13.0", "2.12.0-cuda13.0", "2.12.1-cuda13.0", "2.13.0-cuda13.0", "2.14.0-cuda13.0",
        "2.14.1-cuda13.0", "2.15.0-cuda13.2") for variant in ("runtime", "jupyter", "ssh", "devel")]
    assert {e["platform"] for e in entries} == {"linux/arm64"}
    assert all(e["build_args"].endswith("--platform linux/arm64") for e in entries)


def test_help_documents_the_release_steps():
    result = build_py("--help", env=NO_DAEMON)
    assert result.returncode == 0, result.stderr
    for flag in ("--publish", "--index", "--move-alias ALIAS", "--to REF"):
        assert f"  {flag}" in result.stdout, flag


def test_verbose_shows_what_the_package_logs_at_info():
    import logging

    from pytorch_cuda import cli

    logger = logging.getLogger("pytorch_cuda")
    try:
        assert cli.run(["-v", "--list"]) == 0
        assert logger.getEffectiveLevel() == logging.INFO  # e.g. which docker tool makes indexes (test_release.py)
    finally:
        logger.setLevel(logging.NOTSET)
