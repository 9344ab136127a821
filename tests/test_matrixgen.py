"""The matrix generator (tools/matrixgen): pure parsing and selection, cross-checks, Range reading
against a local server, and the command line.

Only the last test goes to PyPI (marked ``network``): it regenerates the torch 2.4.1 entry and
compares it with the committed one, which shows the file came from wheel metadata.
"""
from __future__ import annotations

import http.server
import io
import json
import re
import ssl
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from packaging.requirements import Requirement

from pytorch_cuda import matrix
from tools.matrixgen import RefreshError, crosschecks, entries, pins, wheelmeta
from tools.matrixgen.__main__ import dump_matrix_json, main, merge, parse_index
from tools.matrixgen.pins import (
    CompanionMatcher,
    applicable_requirements,
    component_pin,
    cuda_from_runtime,
    cuda_of_version_py,
    exact_pin,
    find_arch_list,
    nvidia_pins,
    python_of_tag,
    select_wheels,
    triton_pin,
)
from tools.matrixgen.wheelmeta import (
    Http,
    HttpError,
    HttpRangeFile,
    IndexFile,
    MetadataReader,
    RemoteWheel,
    parse_simple_html,
    parse_simple_json,
    parse_wheel_filename,
)

REPO = Path(__file__).resolve().parent.parent

LINUX = 'platform_system == "Linux" and platform_machine == "x86_64"'

TORCH_CU12_METADATA = f"""\
Metadata-Version: 2.1
Name: torch
Version: 2.4.1
Requires-Dist: filelock
Requires-Dist: sympy
Requires-Dist: nvidia-cuda-runtime-cu12==12.1.105; {LINUX}
Requires-Dist: nvidia-cudnn-cu12==9.1.0.70; {LINUX}
Requires-Dist: nvidia-cublas-cu12==12.1.3.1; {LINUX}
Requires-Dist: nvidia-nccl-cu12==2.20.5; {LINUX}
Requires-Dist: nvidia-cusparselt-cu12>=0.6; {LINUX}
Requires-Dist: nvidia-nvtx-cu12==12.1.105; platform_system == "Windows"
Requires-Dist: nvidia-cufft-cu12==11.0.2.54; platform_machine == "aarch64"
Requires-Dist: triton==3.0.0; {LINUX} and python_version < "3.13"
Requires-Dist: opt-einsum>=3.3; extra == "opt-einsum"

Tensors and dynamic neural networks.
"""

TORCH_CU13_METADATA = """\
Metadata-Version: 2.4
Name: torch
Version: 2.11.0
Requires-Dist: cuda-toolkit[cublas,cudart]==13.0.2; platform_system == "Linux"
Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == "Linux"
Requires-Dist: nvidia-cudnn-cu13==9.19.0.56; platform_system == "Linux"
Requires-Dist: nvidia-nccl-cu13==2.28.9; platform_system == "Linux"
Requires-Dist: triton==3.6.0; platform_system == "Linux"
"""

CUDA_TOOLKIT_METADATA = """\
Metadata-Version: 2.4
Name: cuda-toolkit
Version: 13.0.2
Provides-Extra: cublas
Requires-Dist: nvidia-cublas==13.1.0.3.*; (sys_platform == 'linux' or sys_platform == 'win32') and extra == 'cublas'
Provides-Extra: cudart
Requires-Dist: nvidia-cuda-runtime==13.0.96.*; (sys_platform == 'linux' or sys_platform == 'win32') and extra == 'cudart'
Provides-Extra: cufft
Requires-Dist: nvidia-cufft==12.0.0.61.*; (sys_platform == 'linux' or sys_platform == 'win32') and extra == 'cufft'
Requires-Dist: nvidia-npp==13.0.1.2.*; sys_platform == 'win32' and extra == 'cudart'
"""

# Abridged from PyPI's torch-2.14.1-cp312-cp312-manylinux_2_28_aarch64.whl: the same CUDA 13 pins as the
# x86_64 wheel, under markers that hold on any Linux. The opencl extra is added here (torch asks none)
# to show that the cuda-toolkit expansion is evaluated for the machine too.
TORCH_AARCH64_CU13_METADATA = """\
Metadata-Version: 2.4
Name: torch
Version: 2.14.1
Requires-Dist: filelock
Requires-Dist: cuda-toolkit[cudart,cufile,opencl]==13.0.3; platform_system == "Linux"
Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"
Requires-Dist: nvidia-cudnn-cu13==9.24.0.43; platform_system == "Linux"
Requires-Dist: nvidia-nccl-cu13==2.30.7; platform_system == "Linux"
Requires-Dist: triton~=3.8.0; platform_system == "Linux" and python_version < "3.15"
"""

# Abridged from PyPI's cuda-toolkit 13.0.3: each line names the machines it exists for.
CUDA_TOOLKIT_1303_METADATA = """\
Metadata-Version: 2.4
Name: cuda-toolkit
Version: 13.0.3
Requires-Dist: nvidia-cuda-runtime==13.0.96.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'cudart'
Requires-Dist: nvidia-cufile==1.15.1.6.*; (sys_platform == 'linux' and platform_machine == 'aarch64' or sys_platform == 'linux' and platform_machine == 'x86_64') and extra == 'cufile'
Requires-Dist: nvidia-cuda-opencl==13.0.85.*; (sys_platform == 'linux' and platform_machine == 'x86_64' or sys_platform == 'win32' and platform_machine == 'AMD64') and extra == 'opencl'
"""

# Abridged from PyPI's torch-2.9.0-cp312-cp312-manylinux_2_28_aarch64.whl: every NVIDIA pin (and triton)
# is for x86_64 only, so the aarch64 wheel is a CPU build.
TORCH_AARCH64_CPU_METADATA = """\
Metadata-Version: 2.1
Name: torch
Version: 2.9.0
Requires-Dist: filelock
Requires-Dist: nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: nvidia-nccl-cu12==2.27.5; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: triton==3.5.0; platform_system == "Linux" and platform_machine == "x86_64"
"""


# ------------------------------------------------------------ requirements


def test_requirements_apply_linux_x86_64_markers_only():
    names = [r.name for r in applicable_requirements(TORCH_CU12_METADATA, "3.12")]
    assert names == [
        "filelock", "sympy", "nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12",
        "nvidia-cublas-cu12", "nvidia-nccl-cu12", "nvidia-cusparselt-cu12", "triton",
    ]
    # python_version markers are evaluated for the wheel's own Python.
    assert "triton" not in [r.name for r in applicable_requirements(TORCH_CU12_METADATA, "3.13")]


@pytest.mark.parametrize(
    "line, pin",
    [
        ("a==1.2.3", "1.2.3"),
        ("a===1.2.3", "1.2.3"),
        ("a (==2.9.0)", "2.9.0"),
        ("a==13.0.96.*", "13.0.96.*"),
        ("a>=1", None),
        ("a~=3.8.0", None),
        ("a<=13.1.1.3,>=13.1.0.3", None),
        ("a", None),
    ],
)
def test_exact_pin(line, pin):
    assert exact_pin(Requirement(line)) == pin


def test_nvidia_pins_are_exact_linux_pins_only():
    pins = nvidia_pins(TORCH_CU12_METADATA, "3.12")
    assert pins == {
        "nvidia-cuda-runtime-cu12": "12.1.105",
        "nvidia-cudnn-cu12": "9.1.0.70",
        "nvidia-cublas-cu12": "12.1.3.1",
        "nvidia-nccl-cu12": "2.20.5",
    }
    assert triton_pin(TORCH_CU12_METADATA, "3.12") == "3.0.0"
    assert triton_pin(TORCH_CU12_METADATA, "3.13") is None


def test_cuda13_meta_package_is_expanded_for_its_extras():
    asked = []

    def expand(name, version, extras):
        asked.append((name, version, extras))
        return CUDA_TOOLKIT_METADATA

    pins = nvidia_pins(TORCH_CU13_METADATA, "3.12", expand)
    assert asked == [("cuda-toolkit", "13.0.2", frozenset({"cublas", "cudart"}))]
    assert pins == {
        "cuda-toolkit": "13.0.2",
        "nvidia-cublas": "13.1.0.3.*",
        "nvidia-cuda-runtime": "13.0.96.*",  # cufft: extra not asked for; npp: Windows only
        "nvidia-cudnn-cu13": "9.19.0.56",
        "nvidia-nccl-cu13": "2.28.9",
    }
    assert component_pin(pins, "nvidia-cuda-runtime") == "13.0.96.*"
    assert component_pin(pins, "nvidia-cudnn") == "9.19.0.56"
    assert cuda_from_runtime(component_pin(pins, "nvidia-cuda-runtime")) == "13.0"


def test_an_aarch64_cuda_wheel_pins_for_aarch64_with_the_toolkit_expanded_for_aarch64():
    asked = []

    def expand(name, version, extras):
        asked.append((name, version, extras))
        return CUDA_TOOLKIT_1303_METADATA

    aarch64 = nvidia_pins(TORCH_AARCH64_CU13_METADATA, "3.12", expand, machine=pins.AARCH64)
    assert asked == [("cuda-toolkit", "13.0.3", frozenset({"cudart", "cufile", "opencl"}))]
    assert aarch64 == {
        "cuda-toolkit": "13.0.3",
        "nvidia-cuda-runtime": "13.0.96.*",
        "nvidia-cufile": "1.15.1.6.*",  # no nvidia-cuda-opencl: x86_64 and Windows only
        "nvidia-cudnn-cu13": "9.24.0.43",
        "nvidia-nccl-cu13": "2.30.7",
    }
    x86_64 = nvidia_pins(TORCH_AARCH64_CU13_METADATA, "3.12", expand)
    assert x86_64 == {**aarch64, "nvidia-cuda-opencl": "13.0.85.*"}
    assert triton_pin(TORCH_AARCH64_CU13_METADATA, "3.12", pins.AARCH64) is None  # ~=3.8.0 is no exact pin


def test_an_aarch64_cpu_wheel_has_no_nvidia_pins_for_aarch64():
    assert nvidia_pins(TORCH_AARCH64_CPU_METADATA, "3.12", machine=pins.AARCH64) == {}
    assert triton_pin(TORCH_AARCH64_CPU_METADATA, "3.12", pins.AARCH64) is None
    assert [r.name for r in applicable_requirements(TORCH_AARCH64_CPU_METADATA, "3.12", machine="aarch64")] == [
        "filelock"]
    # The same text read for x86_64, as the entry's own wheels are.
    assert nvidia_pins(TORCH_AARCH64_CPU_METADATA, "3.12") == {
        "nvidia-cuda-runtime-cu12": "12.8.90",
        "nvidia-cudnn-cu12": "9.10.2.21",
        "nvidia-nccl-cu12": "2.27.5",
    }
    assert triton_pin(TORCH_AARCH64_CPU_METADATA, "3.12") == "3.5.0"


def test_cpu_build_has_no_nvidia_pins():
    assert nvidia_pins("Name: torch\nVersion: 2.4.1\nRequires-Dist: filelock\n", "3.12") == {}


def test_component_pin_naming_and_ambiguity():
    assert component_pin({"nvidia-nccl-cu12": "2.20.5"}, "nvidia-nccl") == "2.20.5"
    assert component_pin({"nvidia-nccl-cu13": "2.28.9"}, "nvidia-nccl") == "2.28.9"
    assert component_pin({"nvidia-nccl": "2.30.1"}, "nvidia-nccl") == "2.30.1"
    assert component_pin({"nvidia-nccl-cu12": "2.20.5"}, "nvidia-cudnn") is None
    assert component_pin({"nvidia-cuda-runtime-cu12": "1"}, "nvidia-cuda") is None
    with pytest.raises(RefreshError):
        component_pin({"nvidia-nccl-cu12": "2.20.5", "nvidia-nccl-cu13": "2.28.9"}, "nvidia-nccl")


@pytest.mark.parametrize(
    "pin, cuda", [("12.1.105", "12.1"), ("12.4.127", "12.4"), ("13.0.96.*", "13.0"), ("12.8", "12.8")]
)
def test_cuda_from_runtime_pin(pin, cuda):
    assert cuda_from_runtime(pin) == cuda


def test_cuda_from_runtime_pin_rejects_nonsense():
    with pytest.raises(RefreshError):
        cuda_from_runtime("twelve")


def test_cuda_of_version_py():
    assert cuda_of_version_py("__version__ = '2.1.0+cu121'\ncuda = '12.1'\n") == "12.1"
    assert cuda_of_version_py("cuda: Optional[str] = '13.0'\n") == "13.0"
    assert cuda_of_version_py("cuda: Optional[str] = None\n") is None


# ------------------------------------------------------------------ wheels


def _f(name: str, yanked: bool = False) -> IndexFile:
    return IndexFile(name, f"https://files.example/{name}", yanked=yanked)


def test_select_wheels_picks_linux_x86_64_cpython_wheels():
    files = [
        _f("torch-2.4.1-cp38-cp38-manylinux1_x86_64.whl"),
        _f("torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl"),
        _f("torch-2.4.1-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        _f("torch-2.4.1-cp311-cp311-manylinux2014_aarch64.whl"),
        _f("torch-2.4.1-cp311-cp311-macosx_11_0_arm64.whl"),
        _f("torch-2.4.1-cp311-cp311-win_amd64.whl"),
        _f("torch-2.4.1-cp313-cp313t-manylinux_2_28_x86_64.whl"),  # free-threaded
        _f("torch-2.4.1-cp39-cp39-manylinux1_x86_64.whl", yanked=True),
        _f("torch-2.4.1.tar.gz"),
        _f("torchvision-0.19.1-cp311-cp311-manylinux1_x86_64.whl"),
        _f("torch-2.5.0rc1-cp311-cp311-manylinux1_x86_64.whl"),
        _f("torch-2.4.1+cu121-cp311-cp311-linux_x86_64.whl"),  # per-CUDA index naming
    ]
    grouped = select_wheels(files, "torch")
    assert sorted(grouped) == ["2.4.1", "2.4.1+cu121", "2.5.0rc1"]
    assert pins.sort_pythons(grouped["2.4.1"]) == ["3.8", "3.10", "3.12"]
    assert list(grouped["2.4.1+cu121"]) == ["3.11"]
    assert not pins.is_final("2.5.0rc1") and pins.is_final("2.4.1+cu121")


def test_select_wheels_for_aarch64_picks_linux_aarch64_wheels_only():
    files = [
        _f("torch-2.4.1-cp311-cp311-manylinux2014_aarch64.whl"),
        _f("torch-2.9.0-cp312-cp312-manylinux_2_28_aarch64.whl"),
        _f("torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl"),
        _f("torch-2.9.0-cp313-cp313-macosx_11_0_arm64.whl"),
        _f("torch-2.9.0-cp313-cp313t-manylinux_2_28_aarch64.whl"),  # free-threaded
        _f("torch-2.9.0+cu128-cp310-cp310-linux_aarch64.whl"),
    ]
    grouped = select_wheels(files, "torch", pins.AARCH64)
    assert {v: sorted(by_python) for v, by_python in grouped.items()} == {
        "2.4.1": ["3.11"], "2.9.0": ["3.12"], "2.9.0+cu128": ["3.10"]}
    assert grouped["2.9.0"]["3.12"].filename == "torch-2.9.0-cp312-cp312-manylinux_2_28_aarch64.whl"
    assert list(select_wheels(files, "torch")) == ["2.9.0"]  # x86_64, the default


def test_select_wheels_prefers_the_highest_build_tag():
    files = [
        _f("torch-2.10.0-cp312-cp312-manylinux_2_28_x86_64.whl"),
        _f("torch-2.10.0-3-cp312-cp312-manylinux_2_28_x86_64.whl"),
        _f("torch-2.10.0-1-cp312-cp312-manylinux_2_28_x86_64.whl"),
    ]
    chosen = select_wheels(files, "torch")["2.10.0"]["3.12"]
    assert chosen.filename == "torch-2.10.0-3-cp312-cp312-manylinux_2_28_x86_64.whl"


def test_wheel_filename_and_python_tags():
    w = parse_wheel_filename("torch-2.10.0-3-cp314-cp314t-manylinux_2_28_x86_64.whl")
    assert (w.version, w.build, w.pythons, w.abis) == ("2.10.0", (3, ""), ("cp314",), ("cp314t",))
    assert parse_wheel_filename("torch-2.4.1.tar.gz") is None
    assert python_of_tag("cp38") == "3.8" and python_of_tag("cp315") == "3.15"
    assert python_of_tag("cp313t") is None and python_of_tag("py3") is None


def test_refresher_releases_and_pythons_from_a_file_list():
    r = entries.Refresher({"pypi": "https://pypi.example/simple"}, pins.DriverTable({}, {}))
    r._files[("pypi", "torch")] = [
        _f("torch-2.0.1-cp311-cp311-manylinux1_x86_64.whl"),
        _f("torch-2.1.0-cp311-cp311-manylinux1_x86_64.whl"),
        _f("torch-2.1.0-cp38-cp38-manylinux1_x86_64.whl"),
        _f("torch-2.10.0-cp312-cp312-manylinux_2_28_x86_64.whl"),
        _f("torch-2.9.0-cp314-cp314t-manylinux_2_28_x86_64.whl"),
        _f("torch-2.11.0.dev20260101-cp312-cp312-manylinux_2_28_x86_64.whl"),
        _f("torch-2.10.0-cp312-cp312-manylinux_2_28_aarch64.whl"),
        _f("torch-2.10.0-cp313-cp313-manylinux_2_28_aarch64.whl"),
    ]
    releases = r.releases("pypi", "2.1")
    assert [(x.version, pins.sort_pythons(x.wheels), pins.sort_pythons(x.aarch64_wheels)) for x in releases] == [
        ("2.1.0", ["3.8", "3.11"], []),
        ("2.10.0", ["3.12"], ["3.12", "3.13"]),
    ]
    assert [x.version for x in r.releases("pypi", "2.1", ["2.10.0"])] == ["2.10.0"]


def test_ssl_context_trusts_the_projects_ca_file(monkeypatch, tmp_path):
    """One precedence for the whole project: pytorch_cuda.ca's (PIP_CERT first), else the system's."""
    pip_cert, ssl_cert = tmp_path / "pip.pem", tmp_path / "ssl.pem"
    pip_cert.write_text("x")
    ssl_cert.write_text("x")
    seen = []
    monkeypatch.setattr(ssl, "create_default_context", lambda cafile=None: seen.append(cafile))
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ssl_cert))
    monkeypatch.setenv("PIP_CERT", str(pip_cert))
    wheelmeta.ssl_context()
    monkeypatch.delenv("PIP_CERT")
    wheelmeta.ssl_context()
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setattr(wheelmeta, "DEFAULT_CA_BUNDLE", str(tmp_path / "none.pem"))
    wheelmeta.ssl_context()
    assert seen == [str(pip_cert), str(ssl_cert), None]


def test_pytorch_cuda_does_not_import_the_generator():
    """The generator is the maintainer's side: builds never load it."""
    for path in sorted((REPO / "pytorch_cuda").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+tools\b", text, re.M), path.name


# ----------------------------------------------------------- arch string


def test_find_arch_list_in_binary_rodata():
    blob = (
        b"\x7fELF\x00junk\x00requires sm_80\x00"
        # glued to a preceding string_view literal (no NUL between), as in torch 2.9's .so
        + b"std::string ipc_hsm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120\x00more\x00"
    )
    assert find_arch_list(blob) == ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert find_arch_list(b"\x00sm_90a compute_90a\x00") == ["sm_90a", "compute_90a"]
    assert find_arch_list(b"\x00sm_50 sm_60\x00\x00sm_70 sm_80\x00") is None  # ambiguous
    assert find_arch_list(b"nothing here\x00") is None


# ------------------------------------------------------------ simple API


def test_parse_simple_html_pep503():
    page = """<!DOCTYPE html><html><body>
    <a href="/whl/cu121/torch-2.4.1%2Bcu121-cp311-cp311-linux_x86_64.whl#sha256=AB12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12"
       data-dist-info-metadata="sha256=00">torch-2.4.1+cu121-cp311-cp311-linux_x86_64.whl</a><br/>
    <a href="torch-2.4.0-cp311-cp311-linux_x86_64.whl" data-yanked="">torch-2.4.0-cp311-cp311-linux_x86_64.whl</a>
    </body></html>"""
    files = parse_simple_html(page, "https://download.example/whl/cu121/torch/")
    assert files[0] == IndexFile(
        "torch-2.4.1+cu121-cp311-cp311-linux_x86_64.whl",
        "https://download.example/whl/cu121/torch-2.4.1%2Bcu121-cp311-cp311-linux_x86_64.whl",
        "ab12" * 16, False, True,
    )
    assert files[1].url == "https://download.example/whl/cu121/torch/torch-2.4.0-cp311-cp311-linux_x86_64.whl"
    assert files[1].yanked and files[1].core_metadata is None


def test_parse_simple_json_pep691():
    data = {"files": [
        {"filename": "a-1-py3-none-any.whl", "url": "../../a-1-py3-none-any.whl",
         "hashes": {"sha256": "ff"}, "core-metadata": {"sha256": "ee"}},
        {"filename": "a-2-py3-none-any.whl", "url": "https://f.example/a-2-py3-none-any.whl",
         "hashes": {}, "yanked": "broken", "core-metadata": False},
    ]}
    files = parse_simple_json(data, "https://i.example/simple/a/")
    assert files[0] == IndexFile("a-1-py3-none-any.whl", "https://i.example/a-1-py3-none-any.whl",
                                 "ff", False, True)
    assert files[1].yanked and files[1].core_metadata is False


def test_parse_index_argument():
    assert parse_index("cu121=https://download.pytorch.org/whl/cu121/") == (
        "cu121", "https://download.pytorch.org/whl/cu121")
    assert parse_index("https://download.pytorch.org/whl/cu124") == (
        "cu124", "https://download.pytorch.org/whl/cu124")
    assert parse_index("https://pypi.org/simple") == ("pypi", "https://pypi.org/simple")


# ----------------------------------------------------- local Range server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, str]] = {}
    honour_range = True
    log: list[str] = []

    def do_GET(self) -> None:
        self.log.append(f"{self.path} {self.headers.get('Range', '')}")
        if self.path not in self.files:
            self.send_error(404)
            return
        body, ctype = self.files[self.path]
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng)
            assert m, rng
            if m.group(1) == "":
                start, end = max(0, len(body) - int(m.group(2))), len(body) - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else len(body) - 1, len(body) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            body = body[start : end + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"files": {}, "log": [], "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _wheel_bytes(
    metadata: str = TORCH_CU12_METADATA, cuda: str = "12.1", archs: bytes = b"sm_75 sm_80 sm_90"
) -> tuple[bytes, bytes]:
    """A torch-like wheel: many members, a large incompressible one, METADATA and the .so."""
    import os

    so = os.urandom(3 << 20) + b"\x00" + archs + b"\x00" + os.urandom(1 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(300):
            zf.writestr(f"torch/include/h{i}.h", f"// header {i}\n" * 50)
        zf.writestr("torch/lib/libtorch_cuda.so", os.urandom(8 << 20))
        zf.writestr("torch/lib/libtorch_python.so", so)
        zf.writestr("torch/version.py", f"cuda: Optional[str] = '{cuda}'\n")
        zf.writestr("torch-2.4.1.dist-info/METADATA", metadata)
        zf.writestr("torch-2.4.1.dist-info/RECORD", "")
    return buf.getvalue(), so


def test_range_file_reads_one_member_of_a_remote_zip(server):
    base, handler = server
    wheel, so = _wheel_bytes()
    handler.files["/torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl"] = (wheel, "application/zip")
    http = Http(retries=0)
    rf = HttpRangeFile(f"{base}/torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl", http)
    assert rf.size == len(wheel)
    with zipfile.ZipFile(rf) as zf:
        assert len(zf.namelist()) == 305
        assert zf.read("torch/version.py") == b"cuda: Optional[str] = '12.1'\n"
        assert zf.read("torch/lib/libtorch_python.so") == so
    # Only Range requests; the 8 MB member and most of the file were never fetched.
    assert all("bytes=" in line for line in handler.log)
    assert rf.fetched < len(so) + (1 << 20) < len(wheel)
    assert rf.requests <= 6
    # Reads served from the cache cost no request.
    before = rf.requests
    rf.seek(-100, io.SEEK_END)
    assert rf.read(100) == wheel[-100:]
    assert rf.requests == before


def test_range_file_seek_and_partial_reads(server):
    base, handler = server
    data = bytes(range(256)) * 4096  # 1 MiB
    handler.files["/blob"] = (data, "application/octet-stream")
    rf = HttpRangeFile(f"{base}/blob", Http(retries=0), block=1000)
    assert rf.seek(5000) == 5000
    assert rf.read(10) == data[5000:5010]
    assert rf.tell() == 5010
    rf.seek(10, io.SEEK_CUR)
    assert rf.read(3000) == data[5020:8020]
    rf.seek(-5, io.SEEK_END)
    assert rf.read() == data[-5:] and rf.read() == b""
    with pytest.raises(OSError):
        rf.seek(-1)


def test_server_that_ignores_range_is_an_error(server):
    base, handler = server
    handler.honour_range = False
    handler.files["/blob"] = (b"x" * 1000, "application/octet-stream")
    with pytest.raises(HttpError, match="Range"):
        HttpRangeFile(f"{base}/blob", Http(retries=0))


def test_metadata_pep658_first_then_wheel_by_range(server):
    base, handler = server
    wheel, _ = _wheel_bytes()
    handler.files["/a/torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl"] = (wheel, "application/zip")
    handler.files["/b/torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl"] = (wheel, "application/zip")
    handler.files["/b/torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl.metadata"] = (
        b"Name: torch\nVersion: 2.4.1\n", "application/octet-stream")
    reader = MetadataReader(Http(retries=0))
    name = "torch-2.4.1-cp312-cp312-manylinux1_x86_64.whl"
    # No .metadata file (404): METADATA is read out of the wheel.
    assert reader.metadata(IndexFile(name, f"{base}/a/{name}")) == TORCH_CU12_METADATA
    assert (reader.via_pep658, reader.via_range) == (0, 1)
    assert reader.metadata(IndexFile(name, f"{base}/b/{name}")).startswith("Name: torch")
    assert (reader.via_pep658, reader.via_range) == (1, 1)
    reader.metadata(IndexFile(name, f"{base}/a/{name}"))  # cached
    assert (reader.via_pep658, reader.via_range) == (1, 1)
    wheel_obj = RemoteWheel(f"{base}/a/{name}", Http(retries=0))
    assert wheel_obj.dist_info_member("METADATA") == "torch-2.4.1.dist-info/METADATA"


def _serve_cu121_index(handler: type[_Handler]) -> None:
    """A PEP 503-only index (like download.pytorch.org/whl/cu121) with one torch wheel at /whl."""
    wheel, _ = _wheel_bytes()
    name = "torch-2.4.1+cu121-cp312-cp312-linux_x86_64.whl"
    handler.files[f"/whl/{name.replace('+', '%2B')}"] = (wheel, "application/zip")
    handler.files["/whl/torch/"] = (
        f'<a href="/whl/{name.replace("+", "%2B")}#sha256={"0" * 64}">{name}</a>'.encode(),
        "text/html",
    )
    # Two CUDA 12.1 releases of PyPI's cuda-toolkit: only 12.1.1 pins the runtime torch pins.
    toolkits = {"12.1.0": ("12.1.55", "12.1.0.26", "12.1.66", "12.1.55"),
                "12.1.1": ("12.1.105", "12.1.3.1", "12.1.105", "12.1.109")}
    handler.files["/whl/cuda-toolkit/"] = ("".join(
        f'<a href="/whl/cuda_toolkit-{v}-py2.py3-none-any.whl">cuda_toolkit-{v}-py2.py3-none-any.whl</a>'
        for v in toolkits).encode(), "text/html")
    for version, (cudart, cublas, nvcc, cccl) in toolkits.items():
        handler.files[f"/whl/cuda_toolkit-{version}-py2.py3-none-any.whl.metadata"] = (
            (f"Name: cuda-toolkit\nVersion: {version}\n"
             f"Requires-Dist: nvidia-cuda-runtime-cu12=={cudart}.*; extra == 'cudart'\n"
             f"Requires-Dist: nvidia-cublas-cu12=={cublas}.*; extra == 'cublas'\n"
             f"Requires-Dist: nvidia-cuda-nvcc-cu12=={nvcc}.*; extra == 'nvcc'\n"
             f"Requires-Dist: nvidia-cuda-cccl-cu12=={cccl}.*; extra == 'cccl'\n").encode(), "text/plain")
    for project, version in (("torchvision", "0.19.1"), ("torchaudio", "2.4.1")):
        comp = f"{project}-{version}+cu121-cp312-cp312-linux_x86_64.whl"
        handler.files[f"/whl/{project}/"] = (f'<a href="/whl/{comp}">{comp}</a>'.encode(), "text/html")
        handler.files[f"/whl/{comp}.metadata"] = (
            f"Name: {project}\nVersion: {version}\nRequires-Dist: torch==2.4.1\n".encode(), "text/plain")


def test_index_html_fallback_and_arch_read_end_to_end(server):
    """A PEP 503-only index (like download.pytorch.org) read through Refresher.build."""
    base, handler = server
    _serve_cu121_index(handler)
    drivers = pins.DriverTable({"12.1": "530.30.02"}, {"12": "525.60.13"})
    r = entries.Refresher({"cu121": f"{base}/whl"}, drivers, Http(retries=0), devel=DEVEL)
    builds = r.run("2.1")
    assert len(builds) == 1
    b = builds[0]
    assert set(b) == matrix.ENTRY_KEYS
    assert (b["torch"], b["cuda"], b["index"], b["pythons"]) == ("2.4.1", "12.1", "cu121", ["3.12"])
    assert (b["torchvision"], b["torchaudio"], b["triton"]) == ("0.19.1", "2.4.1", "3.0.0")
    assert b["archs"] == ["sm_75", "sm_80", "sm_90"]
    assert b["archs_source"] == "torch/lib/libtorch_python.so"
    assert b["arm64"] is None  # the index has no aarch64 wheel
    assert b["toolkit_driver"] == "530.30.02" and b["driver_floor"] == "525.60.13"
    assert b["cudnn"] == "9.1.0.70"
    # The devel image's compiler: CUDA 12.1.1's (the cuda-toolkit whose runtime torch pins) from apt.
    assert b["devel"] == {
        "toolkit": "12.1.105", "toolkit_release": "12.1.1", "pip": [],
        "apt": {"cuda-cccl-12-1": "12.1.109-1", "cuda-cudart-dev-12-1": "12.1.105-1",
                "cuda-cuobjdump-12-1": "12.1.111-1", "cuda-nvcc-12-1": "12.1.105-1",
                "cuda-nvdisasm-12-1": "12.1.105-1"},
        "apt_repository": "https://repo.example/debian11/x86_64/", "apt_key": "key.pub", "apt_key_fingerprint": "AB12",
    }


# A hand-made aarch64 wheel of the cu121 index's torch 2.4.1: cuBLAS pinned for aarch64 only, NCCL and
# triton for x86_64 only, the rest on any Linux.
TORCH_AARCH64_CU121_METADATA = """\
Metadata-Version: 2.1
Name: torch
Version: 2.4.1
Requires-Dist: filelock
Requires-Dist: nvidia-cuda-runtime-cu12==12.1.105; platform_system == "Linux"
Requires-Dist: nvidia-cudnn-cu12==9.1.0.70; platform_system == "Linux"
Requires-Dist: nvidia-cublas-cu12==12.1.3.1; platform_system == "Linux" and platform_machine == "aarch64"
Requires-Dist: nvidia-nccl-cu12==2.20.5; platform_system == "Linux" and platform_machine == "x86_64"
Requires-Dist: triton==3.0.0; platform_system == "Linux" and platform_machine == "x86_64"
"""


def _serve_aarch64_wheel(handler: type[_Handler], metadata: str, cuda: str) -> None:
    """Add an aarch64 wheel of torch 2.4.1+cu121 (archs sm_87 sm_90) to the index of _serve_cu121_index."""
    wheel, _ = _wheel_bytes(metadata, cuda, b"sm_87 sm_90")
    names = ["torch-2.4.1+cu121-cp312-cp312-linux_x86_64.whl", "torch-2.4.1+cu121-cp312-cp312-manylinux_2_28_aarch64.whl"]
    handler.files[f"/whl/{names[1].replace('+', '%2B')}"] = (wheel, "application/zip")
    handler.files["/whl/torch/"] = ("".join(
        f'<a href="/whl/{n.replace("+", "%2B")}#sha256={"0" * 64}">{n}</a>' for n in names).encode(), "text/html")


def test_the_aarch64_wheel_of_a_release_fills_its_arm64_key(server):
    base, handler = server
    _serve_cu121_index(handler)
    _serve_aarch64_wheel(handler, TORCH_AARCH64_CU121_METADATA, "12.1")
    drivers = pins.DriverTable({"12.1": "530.30.02"}, {"12": "525.60.13"})
    [b] = entries.Refresher({"cu121": f"{base}/whl"}, drivers, Http(retries=0), devel=DEVEL).run("2.1")
    assert b["arm64"] == {
        "archs": ["sm_87", "sm_90"],
        "archs_source": "torch/lib/libtorch_python.so",
        "cuda_runtime": "12.1.105",
        "nvidia_packages": {
            "nvidia-cublas-cu12": "12.1.3.1",
            "nvidia-cuda-runtime-cu12": "12.1.105",
            "nvidia-cudnn-cu12": "9.1.0.70",
        },
        "pythons": ["3.12"],
        "triton": None,
    }
    # The top-level facts stay the x86_64 wheel's.
    assert b["archs"] == ["sm_75", "sm_80", "sm_90"] and b["triton"] == "3.0.0"
    assert b["nvidia_packages"] == {
        "nvidia-cublas-cu12": "12.1.3.1", "nvidia-cuda-runtime-cu12": "12.1.105",
        "nvidia-cudnn-cu12": "9.1.0.70", "nvidia-nccl-cu12": "2.20.5"}


def test_a_cpu_only_aarch64_wheel_gives_a_null_arm64(server):
    base, handler = server
    _serve_cu121_index(handler)
    _serve_aarch64_wheel(handler, TORCH_AARCH64_CPU_METADATA, "12.1")
    drivers = pins.DriverTable({"12.1": "530.30.02"}, {"12": "525.60.13"})
    [b] = entries.Refresher({"cu121": f"{base}/whl"}, drivers, Http(retries=0), devel=DEVEL).run("2.1")
    assert b["arm64"] is None and b["cuda"] == "12.1"


@pytest.mark.parametrize("metadata, version_py, message", [
    (TORCH_AARCH64_CU121_METADATA.replace("runtime-cu12==12.1.105", "runtime-cu12==12.4.127"), "12.1",
     "the aarch64 wheel's runtime pin says CUDA 12.4, the x86_64 wheel's 12.1"),
    (TORCH_AARCH64_CU121_METADATA, "12.4", "the aarch64 wheel's torch/version.py says CUDA 12.4, the x86_64 wheel's 12.1"),
])
def test_an_aarch64_wheel_of_another_cuda_stops_the_run(server, metadata, version_py, message):
    base, handler = server
    _serve_cu121_index(handler)
    _serve_aarch64_wheel(handler, metadata, version_py)
    drivers = pins.DriverTable({"12.1": "530.30.02"}, {"12": "525.60.13"})
    with pytest.raises(RefreshError, match=re.escape(message)):
        entries.Refresher({"cu121": f"{base}/whl"}, drivers, Http(retries=0), devel=DEVEL).run("2.1")


DEVEL = pins.DevelTable("key.pub", "AB12", {"12.1.1": {
    "apt_repository": "https://repo.example/debian11/x86_64/", "cuda_cuobjdump": "12.1.111", "cuda_nvdisasm": "12.1.105"}})


def test_a_cuda_13_devel_takes_the_compiler_extras_and_the_first_inspection_tools_of_its_major():
    metadata = ("Name: cuda-toolkit\nVersion: 13.0.2\n"
                "Requires-Dist: nvidia-cuda-nvcc==13.0.88.*; extra == 'nvcc'\n"
                "Requires-Dist: nvidia-nvvm==13.0.88.*; extra == 'nvcc'\n"
                "Requires-Dist: nvidia-cuda-cccl==13.0.85.*; extra == 'cccl'\n"
                "Requires-Dist: nvidia-cublas==13.1.0.3.*; extra == 'cublas'\n")
    extras = pins.extra_pins(metadata, "3.12", pins.DEVEL_WHEEL_EXTRAS)
    assert extras == {"nvidia-cuda-nvcc": "13.0.88.*", "nvidia-nvvm": "13.0.88.*", "nvidia-cuda-cccl": "13.0.85.*"}
    devel = pins.devel_from_wheels("13.0.2", extras, {"nvidia-cuda-cuobjdump": "13.2.51"})
    assert devel["toolkit"] == "13.0.88" and devel["apt"] == {}
    assert devel["pip"] == ["nvidia-cuda-cccl==13.0.85.*", "nvidia-cuda-cuobjdump==13.2.51",
                            "nvidia-cuda-nvcc==13.0.88.*", "nvidia-nvvm==13.0.88.*"]


def test_a_cuda_12_release_without_component_versions_is_an_error():
    with pytest.raises(RefreshError, match=r"no cuobjdump/nvdisasm versions for CUDA 12\.9\.1"):
        pins.devel_from_apt("12.9", "12.9.1", {}, DEVEL)


def test_command_line_writes_then_checks_the_file(server, tmp_path):
    """`python -m tools.matrixgen`: exit 0 written or current, 1 out of date under --check, 2 errors."""
    base, handler = server
    _serve_cu121_index(handler)
    drivers = tmp_path / "cuda_drivers.json"
    drivers.write_text(json.dumps({"toolkit_driver": {"12.1": "530.30.02"},
                                   "minor_version_compatibility": {"12": "525.60.13"}}))
    out = tmp_path / "matrix.json"
    devel = tmp_path / "cuda_devel.json"
    devel.write_text(json.dumps({"apt_key": "key.pub", "apt_key_fingerprint": "AB12", "components": {
        "12.1.1": {"apt_repository": "https://repo.example/", "cuda_cuobjdump": "12.1.111", "cuda_nvdisasm": "12.1.105"}}}))
    args = ["--index", f"cu121={base}/whl", "--drivers", str(drivers), "--devel", str(devel), "--output", str(out)]
    assert main([*args, "--check"]) == 1 and not out.exists()
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == matrix.SCHEMA and out.read_text() == dump_matrix_json(doc)
    assert [(b["torch"], b["cuda"], b["index"]) for b in doc["builds"]] == [("2.4.1", "12.1", "cu121")]
    assert main([*args, "--check", "--only-torch", "2.4.1"]) == 0
    out.write_text(out.read_text().replace('"530.30.02"', '"530.30.01"'))
    assert main([*args, "--check"]) == 1
    assert main([*args, "--only-torch", "2.9.9"]) == 2  # no such release on the index
    assert main([*args, "--since", "two"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


# ----------------------------------------------------------- cross-checks


def test_crosschecks_accept_agreeing_facts():
    nvidia = {"nvidia-cuda-runtime-cu12": "12.1.105", "nvidia-cudnn-cu12": "9.1.0.70"}
    assert crosschecks.nvidia_pins_agree("2.4.1", "pypi", {"3.11": nvidia, "3.12": dict(nvidia)}) == nvidia
    assert crosschecks.runtime_pin("2.4.1", nvidia) == "12.1.105"
    assert crosschecks.single_triton_pin("2.4.1", {"3.0.0"}) == "3.0.0"
    assert crosschecks.single_triton_pin("2.4.1", set()) is None
    crosschecks.cuda_agrees("2.4.1+cu121", "12.1", "12.1")
    crosschecks.cuda_agrees("2.4.1", "12.1", None)
    crosschecks.arch_tokens_valid("t.whl", ["sm_90a", "compute_90"])
    crosschecks.machine_cuda_agrees("2.14.1", "aarch64", "13.0", "13.0", "13.0")
    crosschecks.machine_cuda_agrees("2.14.1", "aarch64", "13.0", "13.0", None)
    crosschecks.no_duplicate_keys([("2.4.1", "12.1", "pypi"), ("2.4.1", "12.1", "cu121")])


@pytest.mark.parametrize(
    "check, message",
    [
        (lambda: crosschecks.nvidia_pins_agree(
            "2.4.1", "pypi", {"3.11": {"nvidia-nccl-cu12": "1"}, "3.12": {"nvidia-nccl-cu12": "2"}}),
         "torch 2.4.1 on pypi: NVIDIA pins differ between python wheels"),
        (lambda: crosschecks.nvidia_pins_agree(
            "2.4.1", "pypi", {"3.11": {"nvidia-nccl-cu12": "1"}, "3.12": {}}),
         "torch 2.4.1 on pypi: NVIDIA pins differ between python wheels"),
        (lambda: crosschecks.runtime_pin("2.4.1", {"nvidia-nccl-cu12": "1"}),
         "torch 2.4.1: NVIDIA pins but no nvidia-cuda-runtime"),
        (lambda: crosschecks.single_triton_pin("2.4.1", {"3.0.0", "2.3.1"}),
         "torch 2.4.1: several triton pins ['2.3.1', '3.0.0']"),
        (lambda: crosschecks.cuda_agrees("2.4.1", "12.1", "12.4"),
         "torch 2.4.1: runtime pin says CUDA 12.1, torch/version.py says 12.4"),
        (lambda: crosschecks.cuda_agrees("2.4.1+cu118", "12.1", None),
         "torch 2.4.1+cu118: local label disagrees with CUDA 12.1"),
        (lambda: crosschecks.arch_tokens_valid("t.whl", ["sm_90", "gfx90a"]),
         "t.whl: odd arch list ['sm_90', 'gfx90a']"),
        (lambda: crosschecks.no_duplicate_keys([("2.4.1", "12.1", "pypi")] * 2),
         "two builds share the key ('2.4.1', '12.1', 'pypi')"),
        (lambda: crosschecks.entry_keys_exact({"torch": "2.4.1", "z": 1}),
         "torch 2.4.1: entry keys differ from matrix.ENTRY_KEYS"),
        (lambda: crosschecks.entry_keys_exact({**dict.fromkeys(matrix.ENTRY_KEYS), "torch": "2.4.1", "arm64": {"archs": []}}),
         "torch 2.4.1: arm64 keys ['archs'] differ from matrix.PLATFORM_BUILD_KEYS"),
        (lambda: crosschecks.machine_cuda_agrees("2.14.1", "aarch64", "13.0", "12.8", None),
         "torch 2.14.1: the aarch64 wheel's runtime pin says CUDA 12.8, the x86_64 wheel's 13.0"),
    ],
)
def test_crosschecks_name_the_release_and_the_disagreement(check, message):
    with pytest.raises(RefreshError) as exc:
        check()
    assert str(exc.value).startswith(message)


# -------------------------------------------------------------- companions


def test_companion_matching_rules():
    metadata = {
        "torchvision-0.29.1": "Requires-Dist: torch (>=2.14.0)\n",
        "torchvision-0.29.0": "Requires-Dist: torch (==2.14.0)\n",
        "torchvision-0.28.0": "Requires-Dist: torch (==2.13.0)\n",
        "torchvision-0.27.0": "Requires-Dist: torch (==2.12.0)\n",
        "torchaudio-2.11.0": "Requires-Dist: numpy\n",
        "torchaudio-2.10.0": "Requires-Dist: torch==2.10.0\n",
    }
    files = [_f(f"{k}-cp312-cp312-manylinux_2_28_x86_64.whl") for k in metadata]
    fetched = []

    def read(f: IndexFile) -> str:
        key = f.filename.split("-cp")[0]
        fetched.append(key)
        return metadata[key]

    vision = CompanionMatcher("torchvision", files, read)
    assert vision.match("2.14.0").version == "0.29.0"
    assert vision.match("2.13.0").how == "torchvision 0.28.0 pins torch==2.13.0"
    # 0.29.1 only says >=2.14.0: no exact pin; the search stops at 0.28.0 (older torch).
    assert vision.match("2.14.1").version is None
    fetched.clear()
    assert vision.match("2.15.0").version is None
    assert "torchvision-0.27.0" not in fetched

    audio = CompanionMatcher("torchaudio", files, read, same_version_fallback=True)
    assert audio.match("2.10.0").version == "2.10.0"
    m = audio.match("2.11.0")
    assert m.version == "2.11.0" and "pins no torch" in m.how
    assert audio.match("2.12.0").version is None
    assert audio.match("2.4.1").version is None  # the rule never picks a torch-less newer release


# ------------------------------------------------------------------ output


def _entry(torch: str, cuda: str, index: str = "pypi") -> dict:
    return {"torch": torch, "cuda": cuda, "index": index, "pythons": ["3.12"], "z": 1, "a": 2}


def test_dump_matrix_json_is_deterministic_and_sorted():
    doc = merge(None, [_entry("2.10.0", "12.8"), _entry("2.9.0", "12.8"), _entry("2.9.0", "12.6")],
                {"pypi": "https://pypi.org/simple"}, lambda b: True, "2026-01-02")
    text = dump_matrix_json(doc)
    assert doc["schema"] == matrix.SCHEMA
    assert text == dump_matrix_json(json.loads(text)) and text.endswith("}\n") and not text.endswith("\n\n")
    assert [(b["torch"], b["cuda"]) for b in doc["builds"]] == [
        ("2.9.0", "12.6"), ("2.9.0", "12.8"), ("2.10.0", "12.8")]
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert '\n  "builds": [\n    {\n      "a": 2,' in text


def test_merge_keeps_date_when_nothing_changed_and_entries_out_of_scope():
    indexes = {"pypi": "https://pypi.org/simple"}
    old = merge(None, [_entry("2.4.1", "12.1"), _entry("2.5.0", "12.4")], indexes,
                lambda b: True, "2026-01-01")
    again = merge(old, [_entry("2.4.1", "12.1")], indexes, lambda b: b["torch"] == "2.4.1", "2026-02-02")
    assert dump_matrix_json(again) == dump_matrix_json(old)  # 2.5.0 kept, date kept: no diff
    changed = dict(_entry("2.4.1", "12.1"), z=3)
    new = merge(old, [changed], indexes, lambda b: b["torch"] == "2.4.1", "2026-02-02")
    assert new["generated_on"] == "2026-02-02" and len(new["builds"]) == 2
    cu = merge(old, [_entry("2.4.1", "12.1", "cu121")], {"cu121": "https://d.example/whl/cu121"},
               lambda b: b["index"] == "cu121", "2026-02-02")
    assert cu["indexes"] == {"cu121": "https://d.example/whl/cu121", "pypi": "https://pypi.org/simple"}
    assert len(cu["builds"]) == 3


# -------------------------------------------------------------------- live


@pytest.mark.network
def test_live_refresh_of_torch_241_equals_committed_entry():
    committed = json.loads((REPO / "images" / "matrix.json").read_text())
    entry = next(b for b in committed["builds"] if b["torch"] == "2.4.1" and b["index"] == "pypi")
    drivers = pins.read_drivers(REPO / "images" / "cuda_drivers.json")
    try:
        devel = pins.read_devel(REPO / "images" / "cuda_devel.json")
        builds = entries.Refresher({"pypi": wheelmeta.PYPI_SIMPLE}, drivers, devel=devel).run("2.1", ["2.4.1"])
    except HttpError as exc:
        if exc.status is None:
            pytest.skip(f"PyPI not reachable: {exc}")
        raise
    assert builds == [entry]
