"""The CUDA 12.1 images the way platforms start containers: OpenShift's random uid in group 0, a uid outside
the image's group with a read-only root (what Apptainer, enroot and Charliecloud give), Docker's --read-only
with and without an exec /tmp, dropped capabilities, containerd 2's open-file limit, Kubernetes'
runAsNonRoot, Kubeflow's NB_PREFIX. Each runs the real image with the real Docker engine and a real client.
Charliecloud itself (ch-run, unprivileged) is in tests/test_hpc.py; Podman in tests/test_podman.py.
"""
from __future__ import annotations

import json
import secrets

import kubernetes_validate
import pytest

from pytorch_cuda.plan import IMAGE_GID, IMAGE_UID

from .clients import jupyter_get, published_port, wait_for_jupyter
from .dockerutil import VERIFY_SHM, verify_report, wait_healthy
from .wheels import make_wheel

pytestmark = pytest.mark.docker

# How each platform starts the container (docker run options).
OPENSHIFT = {"user": "12345:0"}  # restricted SCC: a random uid, group 0, no passwd entry
HPC_LIKE = {"user": "54321:54321", "read_only": True, "tmpfs": {"/tmp": "exec"}, "environment": {"HOME": "/tmp"}}
LOCKED_DOWN = {"read_only": True, "tmpfs": {"/tmp": "exec"}, "cap_drop": ["ALL"],
               "security_opt": ["no-new-privileges"]}
PLATFORMS = {"openshift-uid": OPENSHIFT, "other-uid-read-only": HPC_LIKE, "read-only-no-caps": LOCKED_DOWN}

COMPILE = ("import torch; f = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2); x = torch.randn(64); "
           "assert torch.allclose(f(x), torch.nn.functional.gelu(x) * 2, atol=1e-5); print('compiled-ok')")


# The real uid of the process running jupyter-lab, read from /proc (the image has no ps).
SERVER_UID = ("import os\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
              "    if b'jupyter-lab' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
              "        print(open(f'/proc/{pid}/status').read().split('Uid:')[1].split()[0]); break")


def with_options(options: dict, **more) -> dict:
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in options.items()}
    for key, value in more.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize("platform", PLATFORMS)
def test_verify_passes(built, containers, platform):
    code, report, table = verify_report(containers, built["runtime"].tag, **with_options(PLATFORMS[platform],
                                                                                         shm_size=VERIFY_SHM))
    assert code == 0, table
    compiled = next(check for check in report["checks"] if check["name"] == "compile")
    assert compiled["status"] == "pass", compiled
    uid = int(PLATFORMS[platform].get("user", f"{IMAGE_UID}").split(":")[0])
    assert compiled["figures"]["uid"] == uid  # measured in the process, not read from the image


@pytest.mark.parametrize("platform", PLATFORMS)
def test_torch_compile_pip_and_collect_env_work(built, containers, platform, tmp_path):
    """torch.compile in a user's own script, `pip install` of a local wheel (into the venv where it is
    writable, else into HOME, which Python then finds), PyTorch's collect_env."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheels.chmod(0o755)
    make_wheel(wheels, "pcuda-demo", "1.0")
    script = (f"python -c \"{COMPILE}\" && "
              "pip install --no-index --disable-pip-version-check --quiet /wheels/pcuda_demo-1.0-py3-none-any.whl && "
              "python -c 'import pcuda_demo, sys; print(\"imported\", pcuda_demo.__file__)' && "
              "python -m torch.utils.collect_env > /tmp/env.txt && grep -c 'PyTorch version' /tmp/env.txt")
    options = with_options(PLATFORMS[platform], volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}})
    code, out = containers.run(built["runtime"].tag, ["sh", "-c", script], entrypoint="", **options)
    assert code == 0, out
    assert "compiled-ok" in out
    where = next(line.split()[1] for line in out.splitlines() if line.startswith("imported "))
    if options.get("read_only"):  # the venv is read-only: the package went to a prefix under HOME
        assert where.startswith("/tmp/") and "/pytorch-cuda/" in where, where
    else:
        assert where.startswith("/opt/venv/"), where
    assert out.strip().splitlines()[-1] == "1"


# What a runtime that drops the image's ENV gives a process (Charliecloud without --set-env, enroot without its
# environment file): the default PATH, a HOME the image does not have, no VIRTUAL_ENV or PIP_CONSTRAINT.
BARE = "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/home/nobody "


@pytest.mark.parametrize("variant, its_own", [("runtime", []), ("jupyter", ["jupyter-lab --version"])])
def test_the_commands_work_without_the_images_environment(built, containers, variant, its_own):
    commands = ["python -c 'import sys, torch, os; print(sys.prefix, os.environ[\"PIP_CONSTRAINT\"], os.environ[\"HOME\"])'",
                "pip --version", "torchrun --help >/dev/null", "verify --only environment >/dev/null", *its_own]
    script = " && ".join(BARE + command for command in commands)
    code, out = containers.run(built[variant].tag, ["sh", "-c", script], entrypoint="", **HPC_LIKE)
    assert code == 0, out
    prefix, constraint, home = out.splitlines()[0].split()
    assert prefix == "/opt/venv" and constraint == "/etc/pytorch-cuda/constraints.txt", out
    assert home == "/tmp/pytorch-cuda-home-54321", out  # /home/nobody does not exist: a private one instead
    assert "/opt/venv/lib/python3.11/site-packages/pip" in out


def test_a_noexec_tmp_is_named_as_the_cause_with_its_fix(built, containers):
    """Docker's --tmpfs /tmp is noexec: Inductor's compiled code cannot be loaded from it."""
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "compile",
                                        read_only=True, tmpfs={"/tmp": ""})
    assert code == 1, table
    compiled = report["checks"][0]
    assert compiled["status"] == "fail"
    assert "mounted noexec" in compiled["reason"] and "TORCHINDUCTOR_CACHE_DIR" in compiled["reason"], compiled
    code, report, table = verify_report(containers, built["runtime"].tag, "--only", "compile", read_only=True,
                                        tmpfs={"/tmp": "", "/cache": "exec"},
                                        environment={"TORCHINDUCTOR_CACHE_DIR": "/cache"})
    assert code == 0, table  # the fix the reason names works


def test_verify_passes_with_containerd_2s_open_file_limit(built, containers):
    code, report, table = verify_report(containers, built["runtime"].tag, shm_size=VERIFY_SHM,
                                        ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 1024}])
    assert code == 0, table


@pytest.mark.parametrize("platform", PLATFORMS)
def test_jupyter_serves_its_api_with_the_token(built, containers, platform):
    token = secrets.token_urlsafe(24)
    options = with_options(PLATFORMS[platform], environment={"JUPYTER_TOKEN": token},
                           ports={"8888/tcp": ("127.0.0.1", None)})
    box = containers.start(built["jupyter"].tag, **options)
    base_url = f"http://127.0.0.1:{published_port(box, '8888/tcp')}"
    wait_for_jupyter(base_url, token)
    assert jupyter_get(base_url, "/api/status").status_code == 403  # the token rules are the same everywhere
    assert jupyter_get(base_url, "/api/status", token).json()["kernels"] == 0
    server_uid = box.exec_run(["python", "-c", SERVER_UID]).output.decode().strip()
    assert server_uid == PLATFORMS[platform].get("user", str(IMAGE_UID)).split(":")[0], server_uid


def test_jupyter_answers_under_kubeflows_nb_prefix_and_stays_healthy(built, containers):
    token, prefix = secrets.token_urlsafe(24), "/notebook/team-a/my-notebook"
    box = containers.start(built["jupyter"].tag, environment={"JUPYTER_TOKEN": token, "NB_PREFIX": prefix},
                           ports={"8888/tcp": ("127.0.0.1", None)}, **OPENSHIFT)
    base_url = f"http://127.0.0.1:{published_port(box, '8888/tcp')}"
    wait_for_jupyter(base_url + prefix, token)
    assert jupyter_get(base_url, "/api/status", token).status_code == 404  # nothing outside the prefix
    wait_healthy(box, timeout=90)  # the HEALTHCHECK asks under the prefix too


def test_ssh_under_a_platform_uid_exits_at_once_saying_what_it_needs(built, containers):
    code, out = containers.run(built["ssh"].tag, None, timeout=60, environment={"PUBLIC_KEY": "ssh-ed25519 AAAA x"},
                               **OPENSHIFT)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, out
    assert "must start as root" in lines[0] and "uid 12345" in lines[0] and "jupyter image" in lines[0]


# --- Kubernetes runAsNonRoot ---------------------------------------------------------------------

def kubelet_refuses(pod_run_as_user: int | None, image_user: str) -> str | None:
    """The kubelet's runAsNonRoot rule for one container (kubelet verifyRunAsNonRoot, Kubernetes docs
    "Configure a Security Context"): the pod's runAsUser decides if set; else the image's USER, whose
    user part must be a number other than 0 (a name cannot be verified; no USER means root)."""
    if pod_run_as_user is not None:
        return "runAsUser breaks non-root policy" if pod_run_as_user == 0 else None
    user = image_user.split(":", 1)[0]
    if user == "":
        return "image will run as root"
    if not user.isdigit():
        return f"image has non-numeric user ({user}), cannot verify user is non-root"
    return "image will run as root" if int(user) == 0 else None


@pytest.mark.parametrize(("run_as_user", "image_user", "refused"), [
    (None, "pytorch", True),  # the image before: kuard#43, statsd_exporter#406
    (None, "", True), (None, "0", True), (None, "0:0", True),
    (None, "1000", False), (None, "1000:0", False),
    (1000, "pytorch", False), (0, "1000", True),
])
def test_the_kubelet_rule(run_as_user, image_user, refused):
    assert (kubelet_refuses(run_as_user, image_user) is not None) == refused


@pytest.mark.parametrize("variant", ["runtime", "jupyter"])
def test_a_run_as_non_root_pod_without_run_as_user_starts(built, docker_client, variant):
    tag = built[variant].tag
    image_user = docker_client.images.get(tag).attrs["Config"]["User"]
    assert image_user == f"{IMAGE_UID}:{IMAGE_GID}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "notebook"},
           "spec": {"securityContext": {"runAsNonRoot": True},
                    "containers": [{"name": variant, "image": tag,
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "readOnlyRootFilesystem": True,
                                                        "capabilities": {"drop": ["ALL"]}},
                                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {}}]}}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    run_as_user = pod["spec"]["securityContext"].get("runAsUser")
    assert kubelet_refuses(run_as_user, image_user) is None
    assert json.dumps(pod).count("runAsUser") == 0
