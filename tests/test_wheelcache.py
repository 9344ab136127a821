"""The wheel cache: where it lives, which wheels a platform takes, the index it serves, and (with PyPI) that
pip's hash check keeps it honest."""
from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pytorch_cuda import lockfile, wheelcache
from pytorch_cuda.render import BUILDER_TOOLS_LOCK

from .dockerutil import free_port


def test_the_cache_lives_where_the_variable_or_xdg_says_else_in_the_home_cache():
    assert wheelcache.cache_dir({"PYTORCH_CUDA_WHEEL_CACHE": "/data/wheels", "XDG_CACHE_HOME": "/x"}) == Path("/data/wheels")
    assert wheelcache.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/pytorch-cuda/wheels")
    assert wheelcache.cache_dir({}) == Path.home() / ".cache" / "pytorch-cuda" / "wheels"


def test_the_port_is_fixed_unless_set_and_a_bad_one_is_said():
    assert wheelcache.port({}) == 38741
    assert wheelcache.port({"PYTORCH_CUDA_WHEEL_CACHE_PORT": "40000"}) == 40000
    for bad in ("http", "0", "70000"):
        with pytest.raises(wheelcache.WheelCacheError, match="is not a TCP port"):
            wheelcache.port({"PYTORCH_CUDA_WHEEL_CACHE_PORT": bad})


@pytest.mark.parametrize("filename, project", [
    ("nvidia_cudnn_cu12-9.1.0.70-py3-none-manylinux2014_x86_64.whl", "nvidia-cudnn-cu12"),
    ("torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl", "torch"),
    ("Jinja2-3.1.6-py3-none-any.whl", "jinja2"),
    ("zope.interface-7.0-cp311-cp311-manylinux_2_17_aarch64.whl", "zope-interface"),
    ("torch-2.4.1.tar.gz", None),
    (".lock", None),
])
def test_a_wheel_file_names_its_project_as_pep_503_compares_them(filename, project):
    assert wheelcache.project_of(filename) == project


def test_platforms_are_those_a_glibc_2_36_image_installs():
    # PEP 600: a glibc 2.36 system takes manylinux_2_36 down to the oldest tag of its architecture;
    # manylinux2014 is manylinux_2_17, manylinux2010 is 2_12 and manylinux1 is 2_5 (x86_64 only).
    amd64 = wheelcache.platform_tags("amd64")
    assert amd64[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in amd64
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(amd64)
    assert "manylinux_2_37_x86_64" not in amd64
    arm64 = wheelcache.platform_tags("arm64")
    assert arm64[0] == "manylinux_2_36_aarch64" and arm64[-1] == "manylinux2014_aarch64"
    assert not any("x86_64" in tag or "manylinux1" in tag for tag in arm64)
    with pytest.raises(wheelcache.WheelCacheError, match="riscv64"):
        wheelcache.platform_tags("riscv64")


# Expected answers from PEP 425 (python-abi-platform tags, dotted sets), PEP 384 (abi3: built for this CPython or
# an older 3.x) and PEP 600 (manylinux_2_N runs on glibc >= 2.N): for a glibc 2.36 image with CPython 3.11.
@pytest.mark.parametrize("filename, architecture, expected", [
    ("torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl", "amd64", True),
    ("torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl", "arm64", False),  # another machine
    ("torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl", "amd64", False),  # another CPython
    ("torch-2.4.1-cp311-cp311-win_amd64.whl", "amd64", False),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "amd64", True),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_39_x86_64.whl", "amd64", False),  # needs a newer glibc than 2.36
    ("triton-3.0.0-1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "amd64", True),  # a build tag
    ("argon2_cffi_bindings-26.2.0-cp310-abi3-manylinux_2_26_aarch64.manylinux_2_28_aarch64.whl", "arm64", True),
    ("somelib-1.0-cp312-abi3-manylinux_2_17_x86_64.whl", "amd64", False),  # abi3 from a newer CPython
    ("Jinja2-3.1.6-py3-none-any.whl", "arm64", True),
    ("six-1.17.0-py2.py3-none-any.whl", "amd64", True),
    ("oldlib-1.0-py2-none-any.whl", "amd64", False),
    ("torch-2.4.1.tar.gz", "amd64", False),
])
def test_which_cached_files_an_image_would_install(filename, architecture, expected):
    assert wheelcache.installable(filename, architecture, "3.11") is expected


def test_a_lock_entry_is_satisfied_only_by_a_cached_file_with_its_hash_for_the_platform(tmp_path):
    """What the prefetch need not ask the index for: files whose bytes have a hash the entry lists."""
    import hashlib

    files = {"good_pkg-1.0-py3-none-any.whl": b"good", "arm_only-2.0-cp311-cp311-manylinux2014_aarch64.whl": b"arm",
             "tampered-3.0-py3-none-any.whl": b"not what was locked", "old_version-1.0-py3-none-any.whl": b"v1"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    lock = (f"good-pkg==1.0 \\\n    --hash=sha256:{sha(b'good')}\n"
            f"arm-only==2.0 \\\n    --hash=sha256:{sha(b'arm')}\n"
            f"tampered==3.0 \\\n    --hash=sha256:{sha(b'what was locked')}\n"
            f"old-version==2.0 \\\n    --hash=sha256:{sha(b'v1')}\n"
            f"absent==1.0 \\\n    --hash=sha256:{sha(b'absent')}\n")
    entries = lockfile.entries(lock)
    assert wheelcache.satisfied_entries(entries, tmp_path, "amd64", "3.11") == {"good-pkg": "good_pkg-1.0-py3-none-any.whl"}
    assert wheelcache.satisfied_entries(entries, tmp_path, "arm64", "3.11") == {
        "good-pkg": "good_pkg-1.0-py3-none-any.whl", "arm-only": "arm_only-2.0-cp311-cp311-manylinux2014_aarch64.whl"}


def test_the_download_requires_hashes_and_wheels_of_the_images_platform_and_python(tmp_path):
    command = wheelcache.download_command(Path("runtime.lock"), tmp_path, "arm64", "3.12", "https://pypi.org/simple",
                                          Path("/etc/proxy-ca.pem"))
    assert command[1:4] == ["-m", "pip", "download"]
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in command
    joined = " ".join(command)
    assert "--python-version 3.12 --implementation cp --abi cp312" in joined
    assert "--platform manylinux_2_36_aarch64" in joined and "--index-url https://pypi.org/simple" in joined
    assert f"--dest {tmp_path} -r runtime.lock" in joined and joined.endswith("--cert /etc/proxy-ca.pem")


@pytest.fixture
def server(tmp_path):
    """The cache's server on a free loopback port, over a directory with two wheels and a stray file."""
    (tmp_path / "torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl").write_bytes(b"torch wheel")
    (tmp_path / "triton-3.0.0-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"triton wheel")
    (tmp_path / "notes.txt").write_text("not a wheel")
    port = free_port()
    thread = threading.Thread(target=wheelcache.serve, args=(tmp_path, port, 1.5), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(50):
        try:
            urllib.request.urlopen(url + wheelcache.MARKER, timeout=1)
            break
        except OSError:
            threading.Event().wait(0.1)
    return url, tmp_path, port, thread


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_the_index_lists_a_projects_cached_wheels_and_serves_their_bytes(server):
    url, directory, _, _ = server
    status, page = _get(f"{url}/simple/Torch/")
    assert status == 200
    assert b'href="/files/torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl"' in page and b"triton" not in page
    assert _get(f"{url}/files/torch-2.4.1-cp311-cp311-manylinux1_x86_64.whl") == (200, b"torch wheel")
    assert _get(f"{url}{wheelcache.MARKER}") == (200, str(directory).encode())


def test_what_is_not_cached_is_not_found_and_nothing_outside_the_cache_is_served(server):
    url, _, _, _ = server
    assert _get(f"{url}/simple/numpy/")[0] == 404  # pip in the build then fails, naming the package
    assert _get(f"{url}/files/notes.txt")[0] == 404
    assert _get(f"{url}/files/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert _get(f"{url}/files/../../etc/passwd")[0] == 404


def test_the_server_ends_when_idle_and_another_cache_on_its_port_is_refused(server, tmp_path_factory):
    url, directory, port, thread = server
    other = tmp_path_factory.mktemp("other-cache")
    with pytest.raises(wheelcache.WheelCacheError, match=f"port {port} serves another wheel cache"):
        wheelcache.ensure_server(other, port, say=lambda line: None)
    assert wheelcache.ensure_server(directory, port, say=lambda line: None) == f"http://127.0.0.1:{port}/simple/"
    thread.join(timeout=15)
    assert not thread.is_alive(), "the server did not stop after its idle time"


@pytest.mark.network
def test_prefetch_downloads_once_and_replaces_a_file_whose_hash_is_wrong(tmp_path):
    first = wheelcache.prefetch(BUILDER_TOOLS_LOCK, tmp_path, "amd64", "3.11", "https://pypi.org/simple")
    assert (first.downloaded, first.reused) == (1, 0) and first.downloaded_bytes > 1_000_000
    [wheel] = tmp_path.glob("uv-*.whl")
    good = wheel.read_bytes()
    again = wheelcache.prefetch(BUILDER_TOOLS_LOCK, tmp_path, "amd64", "3.11", "https://pypi.org/simple")
    assert (again.downloaded, again.reused) == (0, 1)
    wheel.write_bytes(b"tampered")
    repaired = wheelcache.prefetch(BUILDER_TOOLS_LOCK, tmp_path, "amd64", "3.11", "https://pypi.org/simple")
    assert repaired.downloaded == 1 and wheel.read_bytes() == good


def test_an_unreachable_index_is_one_line_naming_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_RETRIES", "0")  # the user's pip settings reach the download; here, no retries
    with pytest.raises(wheelcache.WheelCacheError) as failed:
        wheelcache.prefetch(BUILDER_TOOLS_LOCK, tmp_path, "amd64", "3.11", "http://127.0.0.1:9/simple")
    message = str(failed.value)
    assert message.startswith("downloading the wheels of builder-tools.lock from http://127.0.0.1:9/simple failed")
    assert "\n" not in message
