"""compose.yaml and its CPU override with the real `docker compose`: what they resolve to, both
services healthy, one workspace seen from Jupyter, SSH and the host, nothing left after `down`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytorch_cuda import plan

from .clients import (
    COMPOSE_FILES,
    ComposeProject,
    SshClient,
    compose_missing,
    compose_project,
    jupyter_get,
    needs_gpu,
    run_in_kernel,
    wait_for,
    wait_for_jupyter,
)
from .conftest import BUILD_CUDA

BASE = COMPOSE_FILES[:1]


def skip_without_compose() -> None:
    """A developer's machine may lack the plugin: skip, saying why. CI installs it, so there it fails."""
    why = compose_missing()
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must have Compose v2: {why}")
    if why:
        pytest.skip(why)


def _config(files: tuple[Path, ...], **env: str) -> dict:
    """`docker compose config` as JSON: it validates the files and resolves variables and overrides."""
    skip_without_compose()
    result = ComposeProject(env, files, name="pytorch-cuda")("config", "--format", "json", timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _unset_ports() -> dict[str, str]:
    return {"BIND_ADDRESS": "", "JUPYTER_PORT": "", "SSH_PORT": ""}  # empty counts as unset: the defaults


def test_config_defaults_are_the_build_py_tags_on_loopback_with_all_gpus(real_matrix):
    specs = {s.variant: s for s in plan.image_specs(real_matrix, [real_matrix.resolve(cuda=BUILD_CUDA)])}
    config = _config(BASE, **_unset_ports())
    services = config["services"]
    assert set(services) == {"jupyter", "ssh"}
    published = {}
    for name, service in services.items():
        assert service["image"] == specs[name].tag  # what `build.py --cuda 12.1` makes
        (port,) = service["ports"]
        assert port["host_ip"] == "127.0.0.1"
        published[name] = (port["published"], port["target"])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia" and device["count"] in (-1, "all")
        assert {v["target"] for v in service["volumes"] if v["source"] == "workspace"} == {"/workspace"}
        assert int(service["shm_size"]) >= 1 << 30 and service["restart"] == "unless-stopped"
    assert published == {"jupyter": ("8888", 8888), "ssh": ("2222", 22)}
    assert [v["target"] for v in services["ssh"]["volumes"] if v["source"] == "ssh-host-keys"] == ["/etc/ssh/host-keys"]
    assert services["jupyter"]["environment"]["JUPYTER_TOKEN"] == ""  # empty: the container makes one


def test_config_variables_and_the_cpu_override(real_matrix):
    config = _config(COMPOSE_FILES, PYTORCH_CUDA_TAG="2.3.1-cuda11.8", JUPYTER_PORT="18888", SSH_PORT="12222")
    services = config["services"]
    assert services["jupyter"]["image"] == "pytorch-cuda:2.3.1-cuda11.8-jupyter"
    assert services["ssh"]["image"] == "pytorch-cuda:2.3.1-cuda11.8-ssh"
    assert services["jupyter"]["ports"][0]["published"] == "18888"
    assert services["ssh"]["ports"][0]["published"] == "12222"
    for service in services.values():
        assert "deploy" not in service or not service["deploy"].get("resources"), service.get("deploy")


# --- the running stack ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(built, tmp_path_factory):
    """Both services from compose.yaml + compose.cpu.yaml; no JUPYTER_TOKEN, as a user who sets none."""
    skip_without_compose()
    client = SshClient.make(tmp_path_factory.mktemp("compose-ssh"))
    env = {"PYTORCH_CUDA_TAG": built["jupyter"].stem, "PUBLIC_KEY": client.public_key}
    with compose_project(env) as project:
        project.up()
        yield SimpleNamespace(project=project, client=client,
                              jupyter_url=f"http://127.0.0.1:{project.port('jupyter', 8888)}",
                              ssh_port=project.port("ssh", 22))



def _token(project: ComposeProject) -> str | None:
    match = re.search(r"/lab\?token=([A-Za-z0-9_-]+)", project("logs", "jupyter").stdout)
    return match.group(1) if match else None


@pytest.mark.docker
def test_up_brings_both_services_to_healthy(stack):
    states = [json.loads(line) for line in stack.project("ps", "--format", "json").stdout.splitlines() if line.strip()]
    assert sorted((s["Service"], s["State"], s["Health"]) for s in states) == [
        ("jupyter", "running", "healthy"), ("ssh", "running", "healthy")], states


@pytest.mark.docker
def test_a_workspace_file_from_jupyter_is_seen_over_ssh_and_on_the_host(stack):
    token = wait_for(lambda: _token(stack.project), 30, "the generated token in the jupyter log")
    assert jupyter_get(stack.jupyter_url, "/api/contents").status_code == 403
    wait_for_jupyter(stack.jupyter_url, token)
    text = f"written by the kernel {uuid.uuid4().hex}"
    run_in_kernel(stack.jupyter_url, token, f"open('/workspace/x.txt', 'w').write({text!r})")

    stack.client.wait(stack.ssh_port)
    over_ssh = stack.client.run(stack.ssh_port, "cat x.txt")  # relative: the session starts in /workspace
    assert over_ssh.returncode == 0 and over_ssh.stdout == text, (over_ssh.stdout, over_ssh.stderr)

    volume = f"{stack.project.name}_workspace"
    inspect = subprocess.run(["docker", "volume", "inspect", volume], capture_output=True, text=True, timeout=60, check=True)
    on_host = Path(json.loads(inspect.stdout)[0]["Mountpoint"]) / "x.txt"
    assert on_host.read_text() == text  # read as root on the Docker host
    assert on_host.stat().st_uid == 1000


@pytest.mark.docker
def test_down_leaves_no_container_and_down_v_no_volume(stack):
    """Last in this module: it takes the stack down."""
    assert stack.project.containers()
    stack.project.down()
    assert stack.project.containers() == []
    assert sorted(stack.project.volumes()) == sorted(f"{stack.project.name}_{v}" for v in ("workspace", "ssh-host-keys"))
    stack.project.down(volumes=True)
    assert stack.project.volumes() == []


@pytest.mark.docker
@pytest.mark.gpu
@needs_gpu
def test_compose_without_override_gives_jupyter_the_gpus(built):
    token = uuid.uuid4().hex
    with compose_project({"PYTORCH_CUDA_TAG": built["jupyter"].stem, "JUPYTER_TOKEN": token}, files=BASE) as project:
        project.up("jupyter")
        url = f"http://127.0.0.1:{project.port('jupyter', 8888)}"
        wait_for_jupyter(url, token)
        out = run_in_kernel(url, token, "import torch; print(torch.cuda.device_count())")
    assert int(out.split()[-1]) >= 1, out
