"""The GitHub Actions workflow and the matrix it runs: `build.py --ci-matrix`, one entry per tag."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from pytorch_cuda import plan

from .dockerutil import REPO, build_py

WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")


def _ci_matrix(*args: str) -> list[dict]:
    result = build_py("--all", "--ci-matrix", *args, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["include"]


def test_ci_matrix_covers_every_tag_exactly_once(real_matrix):
    entries = _ci_matrix()
    tags = [entry["tag"] for entry in entries]
    expected = [spec.tag.split(":", 1)[1] for spec in plan.image_specs(real_matrix, real_matrix.newest_per_tag())]
    assert sorted(tags) == sorted(expected)
    assert len(tags) == len(set(tags))


def test_build_jobs_get_one_entry_per_torch_and_cuda(real_matrix):
    entries = _ci_matrix("--variant", "runtime")
    assert [(e["torch"], e["cuda"]) for e in entries] == [(b.torch, b.cuda) for b in real_matrix.newest_per_tag()]
    first = entries[0]
    assert first["build_args"] == f"--torch {first['torch']} --cuda {first['cuda']} --python {first['python']}"


def test_aliases_only_on_the_newest_patch(real_matrix):
    for entry in _ci_matrix():
        build = real_matrix.resolve(cuda=entry["cuda"], torch=entry["torch"])
        assert bool(entry["alias"]) == real_matrix.is_newest_of_minor(build)


def _schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_workflow_is_valid_and_a_broken_one_is_caught(tmp_path):
    result = _schema_check(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-onn: ubuntu-latest", 1))
    assert _schema_check(broken).returncode != 0


def test_workflow_uses_only_fields_the_matrix_has():
    entry = _ci_matrix()[0]
    used = set(re.findall(r"(?<![\w.])matrix\.(\w+)", WORKFLOW.read_text()))  # not steps.matrix.*
    assert used and used <= set(entry), used - set(entry)


def test_workflow_takes_its_matrices_from_build_py_and_moves_aliases_after_verify():
    text = WORKFLOW.read_text()
    assert "--ci-matrix --variant runtime" in text and "fromJSON(needs.matrix.outputs.tags)" in text
    assert "--no-alias --push" in text and "--require-gpu" in text
    aliases_job = text.split("\n  aliases:\n", 1)[1]
    assert "needs: [matrix, verify]" in aliases_job
