"""Resolution of --cuda/--torch/--python against a small fixture matrix."""
from pathlib import Path

import pytest

from pytorch_cuda import matrix
from pytorch_cuda.errors import IncompatibleCombination, MatrixError, UnknownVersion
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
