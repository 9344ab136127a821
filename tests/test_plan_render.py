"""Tags, paths and the rendered Dockerfiles (pure: no Docker)."""
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jinja2
import pytest

from pytorch_cuda import lockfile, matrix, plan, render
from pytorch_cuda.errors import UsageError

FIXTURE = Path(__file__).parent / "fixtures" / "matrix.json"


@pytest.fixture(scope="module")
def m() -> matrix.Matrix:
    return matrix.load(FIXTURE)


@pytest.fixture(scope="module")
def specs(m):
    return {s.variant: s for s in plan.image_specs(m, [m.resolve(cuda="12.1")])}


def test_tags_and_aliases(specs):
    assert specs["jupyter"].tag == "pytorch-cuda:2.4.1-cuda12.1-jupyter"
    assert specs["jupyter"].aliases == ("pytorch-cuda:v2.4-cuda12.1-jupyter",)
    assert specs["ssh"].runtime_tag == "pytorch-cuda:2.4.1-cuda12.1-runtime"
    assert specs["runtime"].dockerfile == matrix.IMAGES_DIR / "2.4.1-cuda12.1" / "runtime" / "Dockerfile"


def test_runtime_first_and_variant_filter(m):
    specs = plan.image_specs(m, [m.resolve(cuda="12.1")], variants=("ssh", "runtime"))
    assert [s.variant for s in specs] == ["runtime", "ssh"]


def test_registry_prefix_and_no_alias_on_old_patch(m):
    old = m.resolve(cuda="12.1", torch="2.4.0")
    spec = plan.image_specs(m, [old], variants=("jupyter",), registry="ghcr.io/acme/")[0]
    assert spec.tag == "ghcr.io/acme/pytorch-cuda:2.4.0-cuda12.1-jupyter"
    assert spec.runtime_tag == "ghcr.io/acme/pytorch-cuda:2.4.0-cuda12.1-runtime"
    assert spec.default_runtime_tag == "pytorch-cuda:2.4.0-cuda12.1-runtime"
    assert spec.aliases == ()


def test_non_default_python_gets_its_own_tag_and_base(m):
    spec = plan.image_specs(m, [m.resolve(cuda="12.4", python="3.13")], variants=("runtime",), python="3.13")[0]
    assert spec.tag == "pytorch-cuda:2.6.0-cuda12.4-py3.13-runtime"
    assert spec.base_image == "debian:trixie-slim"


def test_runtime_dockerfile_pins_and_stages(specs):
    text = render.render_dockerfile(specs["runtime"])
    # Three pip steps: NVIDIA's wheels, then triton and the other packages, then the rest of the lock.
    assert re.search(r"^COPY images/nvidia-locks/cuda12\.1-[0-9a-f]{16}\.lock /tmp/nvidia\.lock$", text, re.M)
    assert re.search(r"^COPY images/python-locks/py3\.11-[0-9a-f]{16}\.lock /tmp/python\.lock$", text, re.M)
    assert (text.index("/tmp/nvidia.lock") < text.index("/tmp/python.lock")
            < text.index("COPY images/2.4.1-cuda12.1/runtime-rest.lock /tmp/requirements.lock"))
    for lock in ("/tmp/nvidia.lock", "/tmp/python.lock", "/tmp/requirements.lock"):
        assert f"--require-hashes \\\n        --no-deps \\\n        -r \\\n        {lock};" in text
    stages = re.findall(r"^FROM (.+)$", text, re.M)
    # the system stage first: build.py builds it alone (--target system) before the rest
    assert stages == ["${BASE_IMAGE} AS system", "${BUILDER_IMAGE} AS builder", "builder AS verify-layer", "${BASE_IMAGE}"]
    builder, final = text.split("\nFROM ${BASE_IMAGE}\n")
    system, builder = builder.split("\nFROM ${BASE_IMAGE} AS system\n")[1].split("\nFROM ${BUILDER_IMAGE} AS builder\n")
    system = "\n".join(line for line in system.splitlines() if not line.startswith("#"))  # its steps, not the comments
    # Debian's packages and the user come from a stage on the base alone: its text names no lock, no wheel
    # and no tag, so every tag of a base shares it (the second tag's build finds it in the layer cache).
    assert "lock" not in system and "2.4.1" not in system and "ARG" not in system
    for package in ("gcc", "g++", "python3-dev"):
        assert package in system  # torch.compile needs a compiler and Python.h
    # The CA reaches only the builder stage.
    assert "ARG PIP_CA_CERT" in builder and "PIP_CA_CERT" not in final
    # pip compiles nothing; the staging script lays the venv out as the plan's layers, in order,
    # and the final stage copies each whole tree to /, then the verify layer, then Debian's packages.
    assert "--no-compile" in builder
    plan_names = [layer.name for layer in specs["runtime"].layer_plan]
    assert re.findall(r"--layer '([^=]+)=", builder) == plan_names
    # the first staging takes NVIDIA's layers alone, the second triton and the other named packages (both
    # --partial: a later step installs into the venv), the last the catch-all and torch
    first, second, last = re.findall(r"stage_venv.py venv (.*?)\n\n?(?:COPY|#)", builder, re.S)
    assert first.startswith("--partial ") and second.startswith("--partial ") and "--partial" not in last
    assert re.findall(r"--layer '\d\d-([^=]+)=", second) == ["triton", "python"]
    assert re.findall(r"--layer '\d\d-([^=]+)=([^']+)'", last) == [("venv", "*"), ("torch", "torch,torchvision,torchaudio")]
    nvidia = re.findall(r"--layer '([^=]+)=", first)
    assert nvidia == plan_names[:-4] and all(re.match(r"\d\d-nvidia-", name) for name in nvidia), nvidia
    copies = re.findall(r"^COPY --from=(\S+) /stage/(\S+)/ /$", final, re.M)
    assert copies == [("builder", name) for name in plan_names] + [("verify-layer", f"{len(plan_names) + 1:02d}-verify")]
    assert final.index("COPY --from=verify-layer") < final.index("COPY --from=system /system/ /")
    assert "apt-get" not in final  # the system stage ran it; its tree sits above the component layers
    assert "/opt/" not in re.sub(r"(?m)^(#|ENV|    |RUN /opt/venv/bin/python -m verify.sbom).*$", "", final)  # no tree copied twice
    assert re.search(r"^USER 1000:0$", final, re.M)  # numeric: runAsNonRoot can check it
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=12.0"' in final  # the CUDA 12 floor, not 12.1's own driver
    assert "NVIDIA_VISIBLE_DEVICES=all" in final and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in final
    assert "--mount" not in text and "# syntax" not in text  # classic builder only


def test_labels_carry_the_matrix(specs):
    text = render.render_dockerfile(specs["runtime"])
    labels = dict(re.findall(r'(io\.pytorch-cuda\.[\w-]+|org\.opencontainers\.image\.[\w.]+)="([^"]*)"', text))
    assert labels["io.pytorch-cuda.cudnn"] == "9.1.0.70"
    assert labels["io.pytorch-cuda.nccl"] == "2.20.5"
    assert labels["io.pytorch-cuda.toolkit-driver"] == "530.30.02"
    assert labels["io.pytorch-cuda.driver-floor"] == "525.60.13"
    assert labels["io.pytorch-cuda.archs"].split() == list(specs["runtime"].build.archs)
    assert labels["org.opencontainers.image.version"] == "2.4.1-cuda12.1-runtime"


def test_variants_build_from_runtime_and_share_the_base_block(m, specs):
    jupyter = render.render_dockerfile(specs["jupyter"], m.variant_packages["jupyter"])
    ssh = render.render_dockerfile(specs["ssh"])
    for text in (jupyter, ssh):
        assert "ARG RUNTIME_IMAGE=pytorch-cuda:2.4.1-cuda12.1-runtime" in text
        assert "torch==" not in text  # torch is never reinstalled by a variant
    # JupyterLab comes from its own lock, hash-checked, like the runtime's packages.
    assert "COPY images/2.4.1-cuda12.1/jupyter.lock /tmp/requirements.lock" in jupyter and "--require-hashes" in jupyter
    assert "COPY --from=builder /opt/added/ /" in jupyter
    assert "PIP_CA_CERT" not in jupyter.split("\nFROM ${RUNTIME_IMAGE}\n")[1]
    assert "rm -f /etc/ssh/ssh_host_*_key*" in ssh


def test_manifest_matches_build(specs):
    data = json.loads(render.render_manifest(specs["runtime"]))
    assert data["torch"] == "2.4.1" and data["cuda"] == "12.1" and data["cudnn"] == "9.1.0.70"
    assert data["user"] == plan.IMAGE_USER and data["python"] == "3.11"


def test_rendering_is_the_same_in_another_process(specs):
    """No set order, time, path or environment leaks into a Dockerfile: a fresh interpreter with
    another hash seed and working directory renders the same bytes."""
    script = ("import sys; from pytorch_cuda import matrix, plan, render; "
              f"m = matrix.load({str(FIXTURE)!r}); s = plan.image_specs(m, [m.resolve(cuda='12.1')])[0]; "
              "sys.stdout.write(render.render_dockerfile(s))")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root), "TZ": "Asia/Tokyo"})
    assert done.stdout == render.render_dockerfile(specs["runtime"])


def test_undefined_template_variable_fails(tmp_path, specs):
    (tmp_path / "runtime.Dockerfile.j2").write_text("FROM {{ spec.no_such_field_xyz }}\n")
    with pytest.raises(jinja2.UndefinedError):
        render.render_dockerfile(specs["runtime"], templates_dir=tmp_path)


def test_lock_digest_is_labelled_and_a_changed_lock_changes_the_dockerfile(tmp_path, specs):
    spec = specs["runtime"]
    lock = tmp_path / "runtime.lock"
    lock.write_text("torch==2.4.1 --hash=sha256:00\n")
    first = render.render_dockerfile(replace(spec, lock_digest=lockfile.digest(lock)))
    lock.write_text("torch==2.4.1 --hash=sha256:11\n")
    second = render.render_dockerfile(replace(spec, lock_digest=lockfile.digest(lock)))
    assert f'io.pytorch-cuda.lock-digest="{lockfile.digest(lock)}"' in second
    assert first != second  # so the golden-file test fails until the Dockerfiles are re-rendered
    assert lockfile.digest(tmp_path / "missing.lock") == ""


def test_ssh_carries_the_runtime_lock_and_manifest_names_it(specs):
    assert specs["ssh"].lock == specs["runtime"].lock
    assert specs["jupyter"].lock.name == "jupyter.lock"
    assert json.loads(render.render_manifest(specs["jupyter"]))["lock_digest"] == specs["runtime"].lock_digest


def test_devel_images_point_cuda_home_at_their_toolkit_and_default_the_arch_list(m):
    cuda12, cuda124 = (plan.image_specs(m, [m.resolve(cuda=c)], variants=("devel",))[0] for c in ("12.1", "12.4"))
    assert render.cuda_home(cuda12) == "/usr/local/cuda-12.1"
    assert render.torch_arch_list(("sm_50", "sm_86", "sm_100", "sm_120", "compute_90")) == "5.0;8.6;10.0;12.0"
    text = render.render_dockerfile(cuda12)
    assert "FROM ${RUNTIME_IMAGE} AS toolkit" in text and "cuda-nvcc-12-1=12.1.105-1" in text
    assert 'TORCH_CUDA_ARCH_LIST="5.0;6.0;7.0;7.5;8.0;8.6;9.0"' in text and "RUN verify --quiet --only toolchain" in text
    # The proxy CA is declared only in builder stages, as everywhere.
    final = text.split("\nFROM ${RUNTIME_IMAGE}\n")[1]
    assert "PIP_CA_CERT" not in final and "gnupg" not in final
    assert json.loads(render.render_manifest(cuda12))["toolkit"] == "12.1.105"
    assert cuda124.manifest.parent.name == "devel" and cuda124.lock.name == "devel.lock"


def test_devel_from_nvidia_s_apt_repository_is_refused_for_arm64():
    """A CUDA 12 devel image takes nvcc from NVIDIA's x86_64 apt repository: even a line that had
    aarch64 wheels could not build it for arm64, and says so in one line."""
    real = matrix.load()
    cuda12 = replace(real.resolve(cuda="12.1"), arm64=real.resolve(cuda="13.0").arm64)
    assert cuda12.devel.get("apt") and matrix.ARM64 in cuda12.platforms
    plan.image_specs(real, [cuda12], variants=("runtime",), platform=matrix.ARM64)  # the runtime is fine
    with pytest.raises(UsageError, match=r"CUDA 12.1 .*NVIDIA's x86_64 apt repository, .*linux/amd64 only: drop --variant devel"):
        plan.image_specs(real, [cuda12], variants=("runtime", "devel"), platform=matrix.ARM64)


def test_devel_from_pypi_wheels_builds_for_arm64_with_the_aarch64_archs():
    real = matrix.load()
    build = real.resolve(cuda="13.0")
    spec = plan.image_specs(real, [build], variants=("devel",), platform=matrix.ARM64)[0]
    assert spec.tag.endswith("-devel-arm64") and spec.base_image == "arm64v8/debian:bookworm-slim"
    text = render.render_dockerfile(spec)
    assert f'TORCH_CUDA_ARCH_LIST="{render.torch_arch_list(build.arm64.archs)}"' in text
    assert "AS toolkit" not in text


def test_devel_from_pypi_wheels_links_libcudart_for_the_extension_linker():
    real = matrix.load()
    spec = plan.image_specs(real, [real.resolve(cuda="13.0")], variants=("devel",))[0]
    text = render.render_dockerfile(spec)
    home = "/opt/venv/lib/python3.11/site-packages/nvidia/cu13"
    assert render.cuda_home(spec) == home and f"ln -s libcudart.so.13 {home}/lib/libcudart.so" in text
    assert "AS toolkit" not in text and "NVIDIA_CUDA_REPO" not in text


@pytest.mark.parametrize("variant", plan.VARIANTS)
def test_one_list_of_an_images_files_serves_render_and_the_build_context(m, variant):
    """image_files: what --render writes is what the build context carries, and the context holds every
    file the Dockerfile COPYs from outside the repository's own directories (verify/, image-files/)."""
    spec = next(s for s in plan.image_specs(m, [m.resolve(cuda="12.1")], variants=plan.VARIANTS) if s.variant == variant)
    files = render.image_files(spec, m.variant_packages.get(variant, ()))
    step_locks = {step.lock_path for step in render.pip_steps(spec)} if variant == "runtime" else set()
    assert len(step_locks) == (3 if variant == "runtime" else 0) and (spec.rest_lock in step_locks) == (variant == "runtime")
    assert set(files.rendered) == {spec.dockerfile, spec.manifest, spec.constraints} | step_locks
    context = files.context()
    for path, text in files.rendered.items():
        assert context[render.repo_path(path)] == text.encode()
    assert render.repo_path(spec.runtime_lock) in context and render.repo_path(spec.lock) in context
    copied = {source for line in files.dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line
              for source in line.split()[1:-1] if not source.startswith(("verify", "image-files", "--"))}
    assert copied and copied <= set(context), copied - set(context)


def test_image_files_makes_the_manifest_once(m, specs, monkeypatch):
    made = []
    real = render.image_manifest
    monkeypatch.setattr(render, "image_manifest", lambda spec: made.append(spec) or real(spec))
    files = render.image_files(specs["runtime"])
    assert made == [specs["runtime"]]
    assert files.rendered[specs["runtime"].manifest] == render.render_manifest(specs["runtime"])


def test_the_images_etc_is_spelled_once():
    """/etc/pytorch-cuda, where an image keeps its contract: verify.userenv spells it (it runs at every start
    of the image's Python); verify.manifest, the builder and the templates (through render) take it from there."""
    in_code = re.compile(r"""["'=]/etc/pytorch-cuda""")  # a string that starts with it, not a docstring's mention
    root = matrix.REPO_ROOT
    sources = [*sorted((root / "pytorch_cuda").rglob("*.py")), *sorted((root / "verify").rglob("*.py"))]
    spelled = [path.relative_to(root).as_posix() for path in sources for line in path.read_text().splitlines()
               if in_code.search(line)]
    spelled += [path.name for path in sorted(render.TEMPLATES_DIR.rglob("*.j2")) if "/etc/pytorch-cuda" in path.read_text()]
    assert spelled == ["verify/userenv.py"], spelled
    from verify import manifest, sbom, userenv

    assert manifest.IMAGE_ETC == userenv.IMAGE_ETC and sbom.DEFAULT_PATH == manifest.SBOM_PATH

def test_the_runtime_points_at_its_contract_where_verify_looks(specs):
    from verify import manifest, userenv

    text = render.render_dockerfile(specs["runtime"])
    assert f"PYTORCH_CUDA_MANIFEST={manifest.DEFAULT_PATH} " in text and f"PIP_CONSTRAINT={userenv.CONSTRAINTS} " in text
