"""Shared fixtures. Docker clients are made in fixtures, never at import, so unit tests need no daemon."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from pytorch_cuda import matrix, plan

from .dockerutil import TrackedContainers, build_failure, build_py, local_registry

BUILD_CUDA = "12.1"  # the integration build: PyPI's newest torch for CUDA 12.1


def _docker_client():
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client, None
    except Exception as err:  # any failure to reach the daemon
        return None, f"{type(err).__name__}: {err}"


@pytest.fixture(scope="session")
def docker_client():
    client, reason = _docker_client()
    if client is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have a Docker engine (.ci/run starts dockerd): {reason}")
        pytest.skip(f"no Docker engine: {reason}")
    return client


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (`item.report_setup`, `.report_call`, `.report_teardown`),
    so a fixture's teardown knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def containers(docker_client, request) -> Iterator[TrackedContainers]:
    """The test's own containers: all removed with their volumes after it, their logs printed if it failed."""
    tracked = TrackedContainers(docker_client)
    yield tracked
    report = getattr(request.node, "report_call", None)
    tracked.close(failed=report is None or report.failed)  # no call report: it never finished


@pytest.fixture(scope="session")
def real_matrix() -> matrix.Matrix:
    return matrix.load()


@pytest.fixture(scope="session")
def built(docker_client, real_matrix) -> dict[str, plan.ImageSpec]:
    """The three images of `build.py --cuda 12.1`, built once per session by the real CLI.

    The images are the product and stay as a layer cache for the next run; throwaway images made
    by other tests are removed by those tests.
    """
    result = build_py("--cuda", BUILD_CUDA, timeout=3600)
    assert result.returncode == 0, f"build.py --cuda {BUILD_CUDA} failed:\n{build_failure(result)}"
    specs = plan.image_specs(real_matrix, [real_matrix.resolve(cuda=BUILD_CUDA)])
    built = {spec.variant: spec for spec in specs}
    built["_output"] = result.stdout + result.stderr  # type: ignore[assignment]
    return built


@pytest.fixture(scope="session")
def registry(docker_client) -> Iterator[tuple[str, str, object]]:
    """One local registry for the session's pushes of the CUDA 12.1 images: (address, url, container).

    Shared so that the 2.4.1 runtime is compressed and uploaded once (about 3 GB): a second push of
    the same layers to another repository of it is a cross-repository mount.
    """
    with local_registry(docker_client) as found:
        yield found
