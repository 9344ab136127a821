"""Resolution of --cuda/--torch/--python against a small fixture matrix, and the loader's schema."""
import json
from pathlib import Path

import pytest

from pytorch_cuda import matrix
from pytorch_cuda.errors import IncompatibleCombination, MatrixError, UnknownVersion, UsageError
from verify import versions

FIXTURE = Path(__file__).parent / "fixtures" / "matrix.json"


@pytest.fixture(scope="module")
def m() -> matrix.Matrix:
    return matrix.load(FIXTURE)


def test_cuda_alone_picks_newest_torch_from_pypi(m):
    build = m.resolve(cuda="12.1")
    assert (build.torch, build.cuda, build.index) == ("2.4.1", "12.1", "pypi")


def test_cuda_only_on_a_per_cuda_index_is_still_found(m):
    build = m.resolve(cuda="11.8")
    assert (build.torch, build.index, build.index_url) == ("2.4.1", "cu118", "https://download.pytorch.org/whl/cu118")


def test_torch_minor_narrows_to_newest_patch(m):
    assert m.resolve(cuda="12.1", torch="2.4").torch == "2.4.1"
    assert m.resolve(cuda="12.1", torch="2.4.0").torch == "2.4.0"


def test_torch_alone_prefers_pypi_build(m):
    build = m.resolve(torch="2.4.1")
    assert (build.cuda, build.index) == ("12.1", "pypi")


def test_unknown_cuda_lists_supported(m):
    with pytest.raises(UnknownVersion) as err:
        m.resolve(cuda="99.9")
    assert "CUDA 99.9 is not in the matrix" in str(err.value)
    assert "11.8, 12.1, 12.4" in str(err.value)


def test_unknown_torch(m):
    with pytest.raises(UnknownVersion, match=r"torch 1\.0 is not in the matrix; supported: 2\.3\.1"):
        m.resolve(cuda="12.1", torch="1.0")


def test_incompatible_combination_names_what_exists(m):
    with pytest.raises(IncompatibleCombination) as err:
        m.resolve(cuda="12.4", torch="2.4")
    message = str(err.value)
    assert "torch 2.4 with CUDA 12.4" in message
    assert "CUDA 12.4: torch 2.5.1, 2.6.0" in message
    assert "torch 2.4: CUDA 11.8, 12.1" in message


def test_python_filters_and_is_checked(m):
    assert m.resolve(cuda="12.4", python="3.13").torch == "2.6.0"
    with pytest.raises(IncompatibleCombination):
        m.resolve(cuda="12.1", python="3.13")
    with pytest.raises(UnknownVersion, match=r"Python 3\.7"):
        m.resolve(cuda="12.1", python="3.7")


def test_python_for_defaults_to_base_python(m):
    assert m.python_for(m.resolve(cuda="12.4"), None) == "3.11"


def test_newest_per_tag_dedupes_and_sorts(m):
    keys = [(b.torch, b.cuda) for b in m.newest_per_tag()]
    assert keys == sorted(set(keys), key=lambda k: (versions.parse_version(k[0]), versions.parse_version(k[1])))
    assert len(keys) == len(m.builds)  # the fixture has no (torch, cuda) twice


def test_alias_only_on_newest_patch(m):
    by_torch = {b.torch: b for b in m.builds if b.cuda == "12.1"}
    assert m.is_newest_of_minor(by_torch["2.4.1"])
    assert not m.is_newest_of_minor(by_torch["2.4.0"])


def test_version_key_orders_numerically():
    assert sorted(["2.10.0", "2.9.1", "2.1.0"], key=versions.parse_version) == ["2.1.0", "2.9.1", "2.10.0"]


def test_missing_matrix_is_a_clear_error(tmp_path):
    with pytest.raises(MatrixError, match="regenerate it"):
        matrix.load(tmp_path / "nope.json")


# -- schema 4: the arm64 key -------------------------------------------------------------------

ARM64 = {
    "archs": ["sm_87", "sm_90"],
    "archs_source": "torch/lib/libtorch_python.so",
    "cuda_runtime": "12.4.127",
    "nvidia_packages": {"nvidia-cuda-runtime-cu12": "12.4.127", "nvidia-cudnn-cu12": "9.1.0.70"},
    "pythons": ["3.12", "3.13"],
    "triton": None,
}


def _fixture_with(tmp_path: Path, edit) -> Path:
    """The fixture matrix, edited by `edit(doc)`, written to a temporary file."""
    doc = json.loads(FIXTURE.read_text())
    edit(doc)
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(doc))
    return path


def _set_arm64(torch: str, value):
    def edit(doc):
        for b in doc["builds"]:
            if b["torch"] == torch:
                b["arm64"] = value
    return edit


def test_a_null_arm64_means_amd64_only(m):
    assert all(b.arm64 is None and b.platforms == ("linux/amd64",) for b in m.builds)
    assert m.builds_on("linux/arm64") == []
    assert m.builds_on("linux/amd64") == list(m.builds)


def test_arm64_loads_as_a_typed_frozen_platform_build(tmp_path):
    loaded = matrix.load(_fixture_with(tmp_path, _set_arm64("2.6.0", ARM64)))
    build = loaded.resolve(torch="2.6.0")
    assert build.arm64 == matrix.PlatformBuild(
        pythons=("3.12", "3.13"), cuda_runtime="12.4.127", triton=None,
        nvidia_packages={"nvidia-cuda-runtime-cu12": "12.4.127", "nvidia-cudnn-cu12": "9.1.0.70"},
        archs=("sm_87", "sm_90"),
    )
    assert build.arm64.nvidia_packages["nvidia-cudnn-cu12"] == "9.1.0.70"
    with pytest.raises(AttributeError):
        build.arm64.archs = ()  # type: ignore[misc]
    assert build.platforms == ("linux/amd64", "linux/arm64")
    assert [b.torch for b in loaded.builds_on("linux/arm64")] == ["2.6.0"]
    assert hash(build) == hash(build)  # entries stay usable as set members and keys
    with pytest.raises(UsageError, match="platform linux/s390x is not one of linux/amd64, linux/arm64"):
        loaded.builds_on("linux/s390x")


def test_an_arm64_without_an_arch_list_loads_with_archs_none(tmp_path):
    loaded = matrix.load(_fixture_with(tmp_path, _set_arm64("2.6.0", {**ARM64, "archs": None,
                                                                     "archs_source": "not read: too big"})))
    assert loaded.resolve(torch="2.6.0").arm64.archs is None


@pytest.mark.parametrize("edit, message", [
    (lambda doc: doc.update(schema=3), "schema 3, this code reads schema 4"),
    (lambda doc: doc["builds"][0].pop("arm64"), "KeyError: 'arm64'"),
    (_set_arm64("2.6.0", {**ARM64, "cuda": "12.4"}), "arm64 keys"),
    (_set_arm64("2.6.0", {k: v for k, v in ARM64.items() if k != "triton"}), "arm64 keys"),
])
def test_a_matrix_of_another_schema_is_refused(tmp_path, edit, message):
    with pytest.raises(MatrixError, match="regenerate it") as err:
        matrix.load(_fixture_with(tmp_path, edit))
    assert message in str(err.value)
