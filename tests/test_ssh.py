"""The ssh image with the real OpenSSH client and paramiko: key-only logins for `pytorch`, no root,
host keys made per container (kept by compose's volume), sessions that see what `docker exec` sees."""
from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import docker.types
import paramiko
import pytest

from .clients import (
    ComposeProject,
    SshClient,
    compose_project,
    host_key_fingerprint,
    needs_gpu,
    published_port,
    wait_for,
)
from .dockerutil import container

pytestmark = pytest.mark.docker

PORT = "22/tcp"
LOCAL_RANDOM_PORT = {PORT: ("127.0.0.1", None)}  # Docker picks a free port on the loopback only
# Passed to the container: sessions must get them exactly, quotes and spaces included.
EXTRA_ENV = {"CUDA_VISIBLE_DEVICES": "0", "PYTORCH_CUDA_TEST_VALUE": 'two words, a "quote" and a \\ backslash'}
# Set per session by sshd or the shell, so they differ from `docker exec` by design.
PER_SESSION = {"HOSTNAME", "HOME", "TERM", "PWD", "OLDPWD", "SHLVL", "_"}


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> SshClient:
    return SshClient.make(tmp_path_factory.mktemp("ssh-client"))


@pytest.fixture(scope="module")
def sshd(built, docker_client, client, tmp_path_factory):
    """One server for the module, its login key in a file mounted at /authorized_keys."""
    keys = tmp_path_factory.mktemp("ssh-keys") / "authorized_keys"
    keys.write_text(client.public_key + "\n")
    mounts = {str(keys): {"bind": "/authorized_keys", "mode": "ro"}}
    with container(docker_client, built["ssh"].tag, environment=EXTRA_ENV, volumes=mounts, ports=LOCAL_RANDOM_PORT,
                   shm_size="1g") as box:
        port = published_port(box, PORT)
        client.wait(port)
        yield SimpleNamespace(box=box, port=port)


def test_verify_runs_over_ssh(sshd, client):
    result = client.run(sshd.port, "verify", "--only", "environment,autograd", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_command_lands_in_the_workspace_with_the_venv_on_path(sshd, client):
    result = client.run(sshd.port, "echo $PATH; pwd; whoami")
    assert result.returncode == 0, result.stderr
    path, pwd, user = result.stdout.split()
    assert path.split(":")[0] == "/opt/venv/bin" and pwd == "/workspace" and user == "pytorch", result.stdout


def _env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_command_sees_the_docker_exec_environment(sshd, client):
    code, exec_out = sshd.box.exec_run(["env"], user="pytorch")
    assert code == 0
    expected = {k: v for k, v in _env(exec_out.decode()).items() if k not in PER_SESSION}
    for name in ("VIRTUAL_ENV", "PATH", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_REQUIRE_CUDA", *EXTRA_ENV):
        assert name in expected, f"{name} missing from the container's environment"
    result = client.run(sshd.port, "env")
    assert result.returncode == 0, result.stderr
    session = _env(result.stdout)
    assert {k: session.get(k) for k in expected} == expected
    assert "PUBLIC_KEY" not in session


def test_an_interactive_login_shell_gets_the_same(sshd, client):
    """A terminal session reads /etc/profile, which resets PATH on Debian: it must come back."""
    line = 'printf "MARK|%s|%s|%s|%s\\n" "$PATH" "$PWD" "$VIRTUAL_ENV" "$-"; exit\n'
    result = client.run(sshd.port, options=("-tt",), input=line, timeout=60)
    found = [m for m in re.findall(r"MARK\|([^|\r\n]*)\|([^|\r\n]*)\|([^|\r\n]*)\|([^|\r\n]*)", result.stdout)
             if m[0] != "%s"]  # not the terminal's echo of the typed line
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    path, pwd, venv, flags = found[0]
    assert path.split(":")[0] == "/opt/venv/bin" and pwd == "/workspace" and venv == "/opt/venv", found[0]
    assert "i" in flags, f"not an interactive shell: {flags}"


def test_password_login_is_refused(sshd, client):
    with paramiko.Transport(("127.0.0.1", sshd.port)) as transport:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("pytorch", "pytorch")
        assert refused.value.allowed_types == ["publickey"]
    result = client.run(sshd.port, "true", options=("-o", "PreferredAuthentications=password,keyboard-interactive",
                                                    "-o", "PubkeyAuthentication=no"))
    assert result.returncode == 255 and "Permission denied" in result.stderr, result.stderr


def test_root_cannot_log_in_even_with_an_authorized_key(sshd, client):
    script = f"install -d -m 700 /root/.ssh && echo '{client.public_key}' > /root/.ssh/authorized_keys"
    code, out = sshd.box.exec_run(["sh", "-c", script], user="root")
    assert code == 0, out
    result = client.run(sshd.port, "true", user="root")
    assert result.returncode == 255 and "Permission denied" in result.stderr, (result.returncode, result.stderr)
    assert client.run(sshd.port, "true").returncode == 0  # the same key still lets pytorch in


def test_public_key_env_and_a_second_container_has_its_own_host_key(sshd, built, containers, client):
    box = containers.start(built["ssh"].tag, environment={"PUBLIC_KEY": client.public_key}, ports=LOCAL_RANDOM_PORT)
    port = published_port(box, PORT)
    client.wait(port)
    assert client.run(port, "whoami").stdout.strip() == "pytorch"
    assert host_key_fingerprint(port) != host_key_fingerprint(sshd.port)


def test_without_a_login_key_it_says_so_and_stops(built, containers):
    code, out = containers.run(built["ssh"].tag, None, timeout=60)
    assert code == 1 and "no login key" in out, (code, out)


@pytest.mark.parametrize("variant", ["runtime", "jupyter", "ssh"])
def test_image_holds_no_host_key_and_no_password_hash(built, docker_client, containers, variant):
    tag = built[variant].tag
    script = "find / -xdev -name 'ssh_host_*' 2>/dev/null; echo @@; cat /etc/shadow"
    code, out = containers.run(tag, ["sh", "-c", script], timeout=120, user="root", entrypoint="")
    assert code == 0, out
    host_keys, _, shadow = out.partition("@@")
    assert host_keys.strip() == "", f"{tag} holds host keys: {host_keys}"
    entries = [line.split(":") for line in shadow.split() if line]
    assert [e[0] for e in entries if e[0] == "pytorch"] == ["pytorch"]
    for user, password, *_ in entries:
        assert re.fullmatch(r"[!*]+", password), f"{tag}: {user} has a password field {password[:3]!r}..., not a lock"
    # Nor do the image's configuration and history: no key or password set at build time.
    image = docker_client.images.get(tag)
    assert not [e for e in image.attrs["Config"]["Env"] if re.match(r"(PUBLIC_KEY|JUPYTER_TOKEN|JUPYTER_PASSWORD)=", e)]
    for entry in docker_client.api.history(tag):
        assert not re.search(r"ssh-keygen|chpasswd|usermod\s.*-p\s|--password|openssl passwd", entry["CreatedBy"]), \
            entry["CreatedBy"][:300]


def test_compose_keeps_the_host_key_until_its_volume_goes(built, client, tmp_path):
    """`up ssh` starts only ssh; `down` + `up` keeps the fingerprint; `down -v` makes a new one."""
    client = dataclasses.replace(client, known_hosts=tmp_path / "known_hosts")  # a port may be reused
    env = {"PYTORCH_CUDA_TAG": built["ssh"].stem, "PUBLIC_KEY": client.public_key}
    with compose_project(env) as project:

        def up_and_fingerprint() -> str:
            project.up("ssh", wait=False)  # the key exchange is the readiness that matters here
            port = project.port("ssh", 22)
            return wait_for(lambda: host_key_fingerprint(port), 60, "the ssh service's host key")

        first = up_and_fingerprint()
        assert _running_services(project) == ["ssh"]
        client.wait(project.port("ssh", 22))
        assert client.run(project.port("ssh", 22), "whoami").stdout.strip() == "pytorch"

        project.down()
        assert project.containers() == []
        assert up_and_fingerprint() == first

        project.down(volumes=True)
        assert project.volumes() == []
        assert up_and_fingerprint() != first


def _running_services(project: ComposeProject) -> list[str]:
    return sorted(project("ps", "--services", "--status", "running").stdout.split())


@pytest.mark.gpu
@needs_gpu
def test_a_session_sees_the_gpus(built, containers, client):
    gpus = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
    box = containers.start(built["ssh"].tag, environment={"PUBLIC_KEY": client.public_key},
                           ports=LOCAL_RANDOM_PORT, device_requests=gpus)
    port = published_port(box, PORT)
    client.wait(port)
    result = client.run(port, "nvidia-smi -L && python -c 'import torch; print(torch.cuda.is_available())'")
    assert result.returncode == 0 and result.stdout.strip().endswith("True"), result.stdout + result.stderr
