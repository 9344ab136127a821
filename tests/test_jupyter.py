"""The jupyter image with real clients: a token always required, a kernel that imports the image's
torch over Jupyter's REST and websocket API, a server that never runs as root."""
from __future__ import annotations

import json
import re
import secrets
from types import SimpleNamespace

import docker.types
import pytest

from .clients import jupyter_get, needs_gpu, published_port, run_in_kernel, wait_for, wait_for_jupyter
from .dockerutil import container

pytestmark = pytest.mark.docker

PORT = "8888/tcp"
LOCAL_RANDOM_PORT = {PORT: ("127.0.0.1", None)}  # Docker picks a free port on the loopback only


@pytest.fixture(scope="module")
def jupyter(built, docker_client):
    """One server for the module, started with a token of ours."""
    spec = built["jupyter"]
    token = secrets.token_urlsafe(24)
    with container(docker_client, spec.tag, environment={"JUPYTER_TOKEN": token}, ports=LOCAL_RANDOM_PORT,
                   shm_size="1g") as box:
        base_url = f"http://127.0.0.1:{published_port(box, PORT)}"
        wait_for_jupyter(base_url, token)
        yield SimpleNamespace(box=box, base_url=base_url, token=token, spec=spec)


def test_requests_without_the_token_are_refused(jupyter):
    for path in ("/api/kernels", "/api/contents", "/api/sessions", "/api/terminals"):
        assert jupyter_get(jupyter.base_url, path).status_code == 403, path
        assert jupyter_get(jupyter.base_url, path, token="not-" + jupyter.token).status_code == 403, path
        assert jupyter_get(jupyter.base_url, path, token=jupyter.token).status_code == 200, path
    # The UI sends a browser without the token to the login page, and takes the token in the URL.
    page = jupyter_get(jupyter.base_url, "/lab")
    assert page.status_code == 302 and "/login" in page.headers["Location"], (page.status_code, page.headers)
    assert jupyter_get(jupyter.base_url, f"/lab?token={jupyter.token}").status_code == 200


def test_kernel_runs_the_images_torch_as_the_image_user_in_the_workspace(jupyter, docker_client):
    code = ("import json, os, torch; print(json.dumps({'torch': torch.__version__, 'uid': os.getuid(), "
            "'cwd': os.getcwd(), 'venv': os.environ.get('VIRTUAL_ENV')}))")
    found = json.loads(run_in_kernel(jupyter.base_url, jupyter.token, code).strip().splitlines()[-1])
    label = docker_client.images.get(jupyter.spec.tag).labels["io.pytorch-cuda.torch"]
    assert found["torch"].split("+")[0] == label, found
    assert (found["uid"], found["cwd"], found["venv"]) == (1000, "/workspace", "/opt/venv")


def test_server_runs_as_uid_1000(jupyter):
    processes = jupyter.box.top(ps_args="-eo pid,uid,args")
    uid_column = processes["Titles"].index("UID")
    rows = [(row[uid_column], row[-1]) for row in processes["Processes"]]
    assert any("jupyter-lab" in args or "jupyter lab" in args for _, args in rows), rows
    assert {uid for uid, _ in rows} == {"1000"}, rows


def test_no_token_given_makes_one_and_prints_it_with_the_url(built, containers):
    box = containers.start(built["jupyter"].tag, ports=LOCAL_RANDOM_PORT)
    base_url = f"http://127.0.0.1:{published_port(box, PORT)}"

    def printed_token():
        match = re.search(r"http://127\.0\.0\.1:8888/lab\?token=([A-Za-z0-9_-]+)", box.logs().decode())
        return match.group(1) if match else None

    token = wait_for(printed_token, 60, "the generated token in the log")
    assert len(token) >= 32
    wait_for_jupyter(base_url, token)
    assert jupyter_get(base_url, "/api/kernels").status_code == 403
    env = box.attrs["Config"]["Env"]
    assert not any(e.startswith("JUPYTER_TOKEN=") for e in env), "the generated token must not be in the config"


def test_refuses_to_start_as_root(built, containers):
    code, out = containers.run(built["jupyter"].tag, None, timeout=60, user="root")
    assert code == 1 and "refusing to run as root" in out, (code, out)


def test_image_holds_no_token_or_password(built, docker_client, containers):
    tag = built["jupyter"].tag
    image = docker_client.images.get(tag)
    assert not [e for e in image.attrs["Config"]["Env"] if re.match(r"JUPYTER_(TOKEN|PASSWORD)=", e)]
    for entry in docker_client.api.history(tag):
        assert not re.search(r"(JUPYTER_TOKEN|JUPYTER_PASSWORD|token|password)=\S", entry["CreatedBy"]), entry["CreatedBy"][:300]
    # No Jupyter configuration anywhere in the image sets a token or a password.
    script = ("jupyter --paths --json; echo @@; "
              "grep -rIlE '(token|password)[\"]?[[:space:]]*[:=][[:space:]]*[\"'\\'']?[^\"'\\''[:space:]]' "
              "/etc/jupyter /usr/local/etc/jupyter /opt/venv/etc/jupyter /home/pytorch/.jupyter 2>/dev/null; true")
    code, out = containers.run(tag, ["sh", "-c", script], timeout=120, entrypoint="")
    assert code == 0, out
    paths, _, hits = out.partition("@@")
    assert "/opt/venv/etc/jupyter" in json.loads(paths)["config"]  # the directories grepped are the ones read
    assert hits.strip() == "", f"Jupyter configuration with a token or password: {hits}"


@pytest.mark.gpu
@needs_gpu
def test_kernel_sees_the_gpus(built, containers):
    token = secrets.token_urlsafe(24)
    gpus = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    box = containers.start(built["jupyter"].tag, environment={"JUPYTER_TOKEN": token},
                           ports=LOCAL_RANDOM_PORT, device_requests=gpus)
    base_url = f"http://127.0.0.1:{published_port(box, PORT)}"
    wait_for_jupyter(base_url, token)
    out = run_in_kernel(base_url, token, "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())")
    available, count = out.split()
    assert available == "True" and int(count) >= 1, out
