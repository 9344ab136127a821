"""Users add packages: `pip install` as the image's user, under other uids, in notebooks and derived images,
while the CUDA torch packages stay at their locked versions (PIP_CONSTRAINT) and verify notices a change.

Wheels are made locally (tests/wheels.py) and installed with --no-index from a mounted folder.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from .clients import published_port, run_in_kernel, wait_for_jupyter
from .dockerutil import removing_leftovers_of_builds, unique
from .wheels import make_wheel

pytestmark = pytest.mark.docker

# The runtime image's size before the venv became group-writable (measured 2026-12-02, the same
# tag and lock, `docker image inspect -f {{.Size}}`): changing owners in a later layer would have
# stored the 5.3 GB venv twice, so the size must stay within 1% of it.
RUNTIME_SIZE_BEFORE = 5_788_612_998


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("wheels")
    directory.chmod(0o755)
    make_wheel(directory, "pcuda-demo", "1.0")
    make_wheel(directory, "wants-old-torch", "1.0", requires=("torch==2.3.0",))
    make_wheel(directory, "nvidia-nvtx-cu12", "99.0", module="nvtx_impostor")
    return directory


def mounted(wheels: Path) -> dict:
    return {str(wheels): {"bind": "/wheels", "mode": "ro"}}


def pip(*args: str) -> str:
    return "pip install --no-index --disable-pip-version-check " + " ".join(args)


@pytest.mark.parametrize("variant", ["runtime", "jupyter", "ssh"])
# The image's user; any uid with the image's group, 0 (OpenShift, Kubernetes runAsGroup: 0).
@pytest.mark.parametrize("user", ["pytorch", "12345:0"])
def test_pip_install_works_for_the_user(built, containers, wheels, variant, user):
    script = f"{pip('/wheels/pcuda_demo-1.0-py3-none-any.whl')} && python -c 'import pcuda_demo, torch; print(pcuda_demo.VERSION)'"
    code, out = containers.run(built[variant].tag, ["sh", "-c", script], entrypoint="", user=user,
                               volumes=mounted(wheels))
    assert code == 0, out
    assert out.strip().splitlines()[-1] == "1.0"


def test_the_venv_belongs_to_the_image_user_and_group_and_nothing_else_opens_to_group_0(built, containers):
    script = ("stat -c '%u:%g %a' /opt/venv /opt/venv/bin /opt/venv/lib/python3.11/site-packages "
              "/opt/venv/lib/python3.11/site-packages/torch/__init__.py /workspace /home/pytorch; id -u; id -g; "
              "find / -xdev -group 0 -perm -g+w ! -type l ! -path '/opt/venv*' ! -path '/workspace*' ! -path /home/pytorch "
              "! -path '/proc/*' ! -path '/tmp' ! -path '/var/tmp' ! -path '/run/lock' ! -path '/dev/*' 2>/dev/null; true")
    code, out = containers.run(built["runtime"].tag, ["sh", "-c", script], entrypoint="")
    assert code == 0, out
    lines = out.strip().splitlines()
    # HOME too (a uid of group 0 with no passwd entry gets it: README, Platforms), but not the files in it.
    assert lines[:6] == ["1000:0 2775", "1000:0 2775", "1000:0 2775", "1000:0 664", "1000:0 2775", "1000:0 2775"], lines
    assert lines[6:8] == ["1000", "0"]
    assert lines[8:] == [], f"group-writable for group 0 outside the venv, workspace and home: {lines[8:]}"


def test_a_package_that_wants_another_torch_is_refused_and_torch_stays(built, containers, wheels):
    before = "python -c 'import torch; print(torch.__version__)'"
    script = (f"{before}; {pip('--find-links /wheels wants-old-torch')}; echo exit=$?; {before}")
    code, out = containers.run(built["runtime"].tag, ["sh", "-c", script], entrypoint="", volumes=mounted(wheels))
    lines = out.strip().splitlines()
    assert "exit=1" in lines, out
    assert "The user requested (constraint) torch==2.4.1" in out and "conflicting dependencies" in out, out
    assert lines[0] == lines[-1] and lines[0].startswith("2.4.1"), out


def test_lifting_the_constraint_is_one_documented_step(built, containers, wheels):
    """`PIP_CONSTRAINT= pip install ...`: pip then looks for the other torch (absent from the local folder)."""
    script = f"PIP_CONSTRAINT= {pip('--find-links /wheels wants-old-torch')}"
    code, out = containers.run(built["runtime"].tag, ["sh", "-c", script], entrypoint="", volumes=mounted(wheels))
    assert code == 1 and "constraint" not in out and "No matching distribution found for torch==2.3.0" in out, out


def test_verify_fails_when_a_cuda_package_was_replaced(built, containers, wheels):
    script = (f"PIP_CONSTRAINT= {pip('--no-deps /wheels/nvidia_nvtx_cu12-99.0-py3-none-any.whl')} >/dev/null && "
              "verify --only environment --json /tmp/r.json >/dev/null; echo exit=$?; cat /tmp/r.json")
    code, out = containers.run(built["runtime"].tag, ["sh", "-c", script], entrypoint="", volumes=mounted(wheels))
    head, _, report = out.partition("\n{")
    assert "exit=1" in head, out
    environment = json.loads("{" + report)["checks"][0]
    assert environment["status"] == "fail"
    assert "nvidia-nvtx-cu12 is 99.0, the image was built with 12.1.105" in environment["reason"], environment


def test_a_derived_image_installs_a_package_and_imports_it_with_torch(built, docker_client, containers, wheels):
    dockerfile = (f"FROM {built['runtime'].tag}\n"
                  "COPY pcuda_demo-1.0-py3-none-any.whl /tmp/\n"
                  "RUN pip install --no-index --no-cache-dir /tmp/pcuda_demo-1.0-py3-none-any.whl\n")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()),
                           ("pcuda_demo-1.0-py3-none-any.whl", (wheels / "pcuda_demo-1.0-py3-none-any.whl").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = f"pytorch-cuda-derived:{unique('test')}"
    with removing_leftovers_of_builds(docker_client) as leftovers:
        _, log = docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True)
        for chunk in log:
            leftovers.saw(str(chunk.get("stream", "")))
        try:
            code, out = containers.run(tag, ["python", "-c", "import torch, pcuda_demo; print(torch.__version__)"])
            assert code == 0 and out.strip().startswith("2.4.1"), out
        finally:  # force: the stopped container holds the image until the `containers` fixture removes it
            docker_client.images.remove(tag, force=True)


def test_percent_pip_install_in_a_notebook(built, containers, wheels):
    token = "t" * 32
    box = containers.start(built["jupyter"].tag, environment={"JUPYTER_TOKEN": token},
                           ports={"8888/tcp": ("127.0.0.1", None)}, volumes=mounted(wheels))
    base_url = f"http://127.0.0.1:{published_port(box, '8888/tcp')}"
    wait_for_jupyter(base_url, token)
    out = run_in_kernel(base_url, token, "%pip install --no-index /wheels/pcuda_demo-1.0-py3-none-any.whl\n"
                                         "import importlib, pcuda_demo; print('imported', pcuda_demo.VERSION)")
    assert "Successfully installed pcuda-demo-1.0" in out and "imported 1.0" in out, out


def test_the_runtime_image_did_not_grow(built, docker_client):
    size = docker_client.api.inspect_image(built["runtime"].tag)["Size"]
    print(f"runtime image: {size} bytes, before {RUNTIME_SIZE_BEFORE} ({size / RUNTIME_SIZE_BEFORE - 1:+.2%})")
    assert size <= 1.01 * RUNTIME_SIZE_BEFORE
