"""Real builds with the real Docker engine: `build.py --cuda 12.1` and what its images hold."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import docker.errors
import pytest

from pytorch_cuda import ca, lockfile
from pytorch_cuda.engine import BuildEvents, DockerEngine, dockerfile_context
from verify.packages import canonical

from .dockerutil import (
    REPO,
    TrackedContainers,
    build_failure,
    build_py,
    free_port,
    image_names,
    one_build_at_a_time,
    removing_leftovers_of_builds,
)

pytestmark = pytest.mark.docker


def test_three_images_and_aliases_are_tagged(built, docker_client, builds_here):
    for variant in ("runtime", "jupyter", "ssh"):
        spec = built[variant]
        image = docker_client.images.get(spec.tag)
        assert set(spec.aliases) <= set(image.tags), image.tags
    output = built.output
    assert "3 of 3 images built" in output
    for column in ("TAG", "STATUS", "TIME", "SIZE"):
        assert column in output  # the summary table


def test_torch_reports_the_tags_cuda(built, containers):
    spec = built["runtime"]
    code, out = containers.run(spec.tag, ["python", "-c", "import torch; print(torch.version.cuda)"])
    assert code == 0, out
    assert out.strip().splitlines()[-1] == spec.build.cuda


def test_cudnn_and_nccl_load_with_the_matrix_versions(built, containers):
    spec = built["runtime"]
    probe = (
        "import json, torch; "
        "print(json.dumps({'cudnn': torch.backends.cudnn.version(), 'nccl': list(torch.cuda.nccl.version()), "
        "'torch': torch.__version__, 'archs': torch._C._cuda_getArchFlags()}))"
    )
    code, out = containers.run(spec.tag, ["python", "-c", probe])
    assert code == 0, out
    found = json.loads(out.strip().splitlines()[-1])
    major, minor, patch = (int(p) for p in spec.build.cudnn.split(".")[:3])
    assert found["cudnn"] == major * 10000 + minor * 100 + patch  # cuDNN 9 encodes 9.1.0 as 90100
    assert ".".join(map(str, found["nccl"])) == spec.build.nccl
    assert found["torch"].split("+")[0] == spec.build.torch
    if spec.build.archs:
        assert set(spec.build.archs) <= set(found["archs"].split())


def test_labels_match_the_matrix_and_the_inside(built, docker_client, containers):
    spec = built["runtime"]
    labels = docker_client.images.get(spec.tag).labels
    build = spec.build
    expected = {
        "io.pytorch-cuda.torch": build.torch, "io.pytorch-cuda.cuda": build.cuda, "io.pytorch-cuda.cudnn": build.cudnn,
        "io.pytorch-cuda.nccl": build.nccl, "io.pytorch-cuda.python": spec.python,
        "io.pytorch-cuda.toolkit-driver": build.toolkit_driver, "io.pytorch-cuda.driver-floor": build.driver_floor,
        "io.pytorch-cuda.variant": "runtime",
        "org.opencontainers.image.version": f"{spec.stem}-runtime",
    }
    assert {k: labels.get(k) for k in expected} == expected
    code, out = containers.run(spec.tag, ["python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
    assert out.strip() == labels["io.pytorch-cuda.python"]
    env = docker_client.images.get(spec.tag).attrs["Config"]["Env"]
    # Minor version compatibility: any driver of the CUDA major (for 12: >= 525.60.13, which supports 12.0) runs it.
    assert f"NVIDIA_REQUIRE_CUDA=cuda>={build.cuda.split('.')[0]}.0" in env
    assert "NVIDIA_VISIBLE_DEVICES=all" in env


def test_runs_as_non_root_without_caches_or_apt_lists(built, containers):
    spec = built["runtime"]
    script = (
        "id -un; id -u; "
        "ls -A /var/lib/apt/lists | grep -v -x -e lock -e partial | wc -l; "
        "ls -d /root/.cache/pip /home/pytorch/.cache/pip 2>/dev/null | wc -l; "
        "ls /tmp/pip-ca.pem 2>/dev/null | wc -l"
    )
    code, out = containers.run(spec.tag, ["sh", "-c", script], user="")
    assert code == 0, out
    user, uid, lists, caches, ca_files = out.split()
    assert (user, uid) == ("pytorch", "1000")
    assert (lists, caches, ca_files) == ("0", "0", "0")


def _local_only_certificates(containers: TrackedContainers, tag: str) -> list[str]:
    """The CAs passed to pip that no public bundle has: the proxy's own, the one that must not leak.

    The build arg also carries public roots that Debian ships but certifi dropped; those are in the
    image's system bundle legitimately, so they cannot tell a leak.
    """
    ca_file = ca.find_ca_file(None)
    passed = ca.pem_certificates(ca.build_arg_for(ca_file)) if ca_file else []
    if not passed:
        return []
    code, image_bundle = containers.run(tag, ["cat", "/etc/ssl/certs/ca-certificates.crt"], entrypoint="")
    assert code == 0, image_bundle
    return ca.extra_certificates("\n".join(passed), image_bundle)


def test_proxy_ca_is_in_no_layer_and_no_history(built, docker_client, containers):
    """The proxy CA given to pip must be absent from every final image, its filesystem and its history."""
    local = _local_only_certificates(containers, built["runtime"].tag)
    if not local:
        pytest.skip("no CA outside the public bundles was passed to the build on this machine")
    # A base64 line from the middle of each certificate: unique to it, unlike the PEM headers.
    needles = [pem.splitlines()[len(pem.splitlines()) // 2] for pem in local]
    host_bundle = ca.find_ca_file(None).read_text()
    assert all(needle in host_bundle for needle in needles)  # the search looks for something real
    pattern = " ".join(f"-e '{needle}'" for needle in needles)
    for variant in ("runtime", "jupyter", "ssh"):
        spec = built[variant]
        for entry in docker_client.api.history(spec.tag):
            assert "PIP_CA_CERT" not in entry["CreatedBy"], (spec.tag, entry["CreatedBy"][:200])
            assert not any(needle in entry["CreatedBy"] for needle in needles)
        assert not any("PIP_CA_CERT" in e for e in docker_client.images.get(spec.tag).attrs["Config"]["Env"])
        # Text files anywhere an install could have left it; -I skips binaries quickly.
        code, out = containers.run(spec.tag,
                                   ["sh", "-c", f"grep -rIl -F {pattern} /etc /tmp /root /home /opt /usr/local /var 2>/dev/null; true"],
                                   user="root", entrypoint="")
        assert code == 0
        assert out.strip() == "", f"{spec.tag} holds the proxy CA in: {out}"


def test_variants_share_the_runtime_layers(built, docker_client):
    runtime_layers = docker_client.images.get(built["runtime"].tag).attrs["RootFS"]["Layers"]
    for variant in ("jupyter", "ssh"):
        layers = docker_client.images.get(built[variant].tag).attrs["RootFS"]["Layers"]
        assert layers[: len(runtime_layers)] == runtime_layers, f"{variant} does not build on the runtime image"


def test_no_change_rebuild_is_all_cache_hits(built, builds_here):
    with one_build_at_a_time(built["runtime"].build.cuda):
        result = build_py("--cuda", built["runtime"].build.cuda, "--verbose", timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Running in" not in output, "a step ran again although nothing changed"
    assert output.count("Using cache") > 10


def test_failing_step_leaves_no_tag(built, docker_client, builds_here):
    """pip in the build cannot reach the given index: exit 1, a one-line error, no tag applied (and --keep-going
    goes on). Without the wheel cache, so that it is the build's own pip step that fails."""
    registry = "localhost:5999/pytorch-cuda-failtest"
    with one_build_at_a_time(built["runtime"].build.cuda), removing_leftovers_of_builds(docker_client) as leftovers:
        result = build_py("--cuda", built["runtime"].build.cuda, "--registry", registry, "--keep-going",
                          "--no-wheel-cache", "--index-url", "http://127.0.0.1:9/simple", timeout=900)
        leftovers.saw(result.stdout + result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "skipped" in result.stdout  # summary: runtime failed, variants skipped
    # One short line names the step and its exit code (not the kilobytes of the pip step's command);
    # pip's own words are in the log lines shown above it.
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: build of")]
    assert error.endswith("its command exited with code 1") and len(error) < 300, error
    assert "127.0.0.1" in "\n".join(line for line in result.stderr.splitlines() if line.startswith("    | "))
    assert not [name for name in image_names(docker_client) if name.startswith(registry)]


# What a RUN step's cgroup says of its CPU weight when the build is given --cpu-shares 3072: cgroup v1's
# cpu.shares as given, or cgroup v2's cpu.weight that runc maps it to (1 + (shares - 2) * 9999 / 262142).
WEIGHT_SEEN = {"cpu.shares": "3072", "cpu.weight": "118"}


def test_a_build_given_cpu_shares_runs_its_steps_with_that_weight(built, docker_client):
    """Read in the RUN step's own cgroup, not taken from what we asked for."""
    context = dockerfile_context(f"FROM {built['runtime'].tag}\n"
                                 "RUN for f in /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu.weight; do "
                                 "[ -r $f ] && echo \"weight-seen $(basename $f) $(cat $f)\"; done; true\n")
    lines: list[str] = []
    image_id = DockerEngine(docker_client).build("pytorch-cuda-test/cpu-shares", context, "Dockerfile", {},
                                                 nocache=True, cpu_shares=3072,
                                                 events=BuildEvents(on_line=lines.append))
    docker_client.images.remove(image_id)
    [seen] = [line.split()[1:] for line in lines if line.startswith("weight-seen ")]
    assert WEIGHT_SEEN[seen[0]] == seen[1], seen


def test_wheels_the_cache_cannot_fetch_fail_the_image_in_one_line_before_any_step(built, docker_client, tmp_path,
                                                                                 builds_here):
    registry = "localhost:5999/pytorch-cuda-wheelfail"
    result = build_py("--cuda", built["runtime"].build.cuda, "--variant", "runtime", "--registry", registry,
                      "--index-url", "http://127.0.0.1:9/simple", timeout=300,
                      env={"PYTORCH_CUDA_WHEEL_CACHE": str(tmp_path / "wheels"), "PIP_RETRIES": "0",
                           "PYTORCH_CUDA_WHEEL_CACHE_PORT": str(free_port())})
    assert result.returncode == 1, result.stdout + result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: wheels of {registry}/{built['runtime'].tag}: downloading the wheels of "
                            "runtime.lock from http://127.0.0.1:9/simple failed"), error
    assert "step 1/" not in result.stderr  # no build step ran
    assert not [name for name in image_names(docker_client) if name.startswith(registry)]




def _lock_pins(lock_text: str) -> dict[str, str]:
    pins = {}
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def _freeze(containers: TrackedContainers, tag: str) -> dict[str, str]:
    code, out = containers.run(tag, ["python", "-m", "pip", "freeze", "--all", "--disable-pip-version-check"], entrypoint="")
    assert code == 0, out
    return {canonical(name): version for name, version in (line.split("==", 1) for line in out.split() if "==" in line)}


def test_the_image_holds_exactly_its_lock(built, docker_client, containers):
    spec = built["runtime"]
    assert _freeze(containers, spec.tag) == _lock_pins(spec.lock.read_text())
    # The label names the lock the image was really built from: the copy inside it (its bill of
    # materials reads it), hashed here, and that copy is the committed lock.
    code, inside = containers.run(spec.tag, ["sha256sum", "/etc/pytorch-cuda/runtime.lock"], entrypoint="")
    assert code == 0, inside
    labels = docker_client.images.get(spec.tag).labels
    assert labels["io.pytorch-cuda.lock-digest"] == "sha256:" + inside.split()[0]
    assert labels["io.pytorch-cuda.lock-digest"] == lockfile.digest(spec.lock)


# The --no-cache rebuild starts from its own copy of the base image: the same layer under another image ID
# (one label more). The classic builder takes the newest image that matches a step as that step's cache,
# and the builder stage's first steps are the same for every tag, CUDA line and platform; a --no-cache chain
# from the shared base became the cache of every build that ran beside it (in a cold run the CUDA 13.0
# builder stages were rebuilt on it, three times 6 GB, and the disk filled).
REPRO_BASE = "pytorch-cuda-test/repro-base:bookworm-slim"
REPRO_BASE_LABEL = "io.pytorch-cuda.test.copy-of"


def _base_copy(docker_client, base: str) -> str:
    docker_client.images.build(fileobj=dockerfile_context(f"FROM {base}\nLABEL {REPRO_BASE_LABEL}={base}\n"),
                               custom_context=True, tag=REPRO_BASE, pull=False, rm=True)
    return REPRO_BASE


@pytest.mark.release
def test_rebuild_without_cache_gives_the_same_packages_and_labels(built, docker_client, containers, builds_here):
    """Reproducible: the same tag built again from nothing installs the same packages."""
    registry = "pytorch-cuda-repro.invalid"
    spec = built["runtime"]
    again = f"{registry}/{spec.tag}"
    base = _base_copy(docker_client, spec.base_image)
    # the second builder stage (about 5 GB) goes after
    with one_build_at_a_time(spec.build.cuda), removing_leftovers_of_builds(docker_client) as leftovers:
        try:
            result = build_py("--torch", spec.build.torch, "--cuda", spec.build.cuda, "--variant", "runtime",
                              "--base", base, "--no-cache", "--no-alias", "--registry", registry, "--verbose",
                              timeout=2400)
            leftovers.saw(result.stdout + result.stderr)
            assert result.returncode == 0, build_failure(result)
            # The wheel cache served every wheel: pip's download into it found each file there.
            said = [line for line in result.stderr.splitlines() if line.startswith("wheel cache: ")]
            assert any(f"{spec.directory.name}/runtime.lock (amd64): " in line and " 0 downloaded" in line
                       for line in said), said
            assert _freeze(containers, again) == _freeze(containers, spec.tag)
            # The same labels, but for the base's name (and the copy's own label, inherited).
            labels = dict(docker_client.images.get(again).labels)
            assert labels.pop(REPRO_BASE_LABEL) == spec.base_image
            assert labels.pop("org.opencontainers.image.base.name") == base
            first_labels = dict(docker_client.images.get(spec.tag).labels)
            assert first_labels.pop("org.opencontainers.image.base.name") == spec.base_image
            assert labels == first_labels
            # Deterministic layers: the base, every component layer of the plan and the verify
            # layer come out byte for byte the same (same diffIDs); Debian's packages above them
            # are installed anew and may differ.
            first = docker_client.images.get(spec.tag).attrs["RootFS"]["Layers"]
            second = docker_client.images.get(again).attrs["RootFS"]["Layers"]
            components = 1 + len(spec.layer_plan) + 1
            assert len(first) == len(second) > components
            assert second[:components] == first[:components]
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                # force: the stopped containers of _freeze hold it until the `containers` fixture removes them
                docker_client.images.remove(again, force=True)


def test_the_suite_tests_a_given_image_without_building_it(built, builds_here, tmp_path):
    """`pytest --image REF`: the image tests run against that image; a test that builds, or one that needs a
    variant not given, skips. Run as a user would, in a pytest of its own."""
    runtime = built["runtime"].tag
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-rs", "--image", runtime,
         "tests/test_images.py::test_torch_reports_the_tags_cuda", "tests/test_images.py::test_no_change_rebuild_is_all_cache_hits",
         "tests/test_images.py::test_variants_share_the_runtime_layers", f"--basetemp={tmp_path / 'inner'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "1 passed, 2 skipped" in said, said[-3000:]
    assert "--image: this test builds images" in said and f"no jupyter image among --image {runtime}" in said, said
