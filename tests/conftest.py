"""Shared fixtures. Docker clients are made in fixtures, never at import, so unit tests need no daemon."""
from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import pytest

from pytorch_cuda import hostlock, matrix, plan

from .dockerutil import (
    TrackedContainers,
    build_failure,
    build_py,
    kept_registry,
    one_build_at_a_time,
    remove_kept_registry,
    remove_pushed_names,
)

BUILD_CUDA = "12.1"  # the integration build: PyPI's newest torch for CUDA 12.1


def _docker_client(timeout: int = 600):
    import docker

    try:
        client = docker.from_env(timeout=timeout)
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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--image", action="append", default=[], metavar="REF",
                     help="test this existing image ([registry/]pytorch-cuda:<tag>, pulled if not here) instead of "
                          "building the CUDA 12.1 images; repeat it for each variant. Tests that build skip.")


# Heavy chains of image tests, each kept on one xdist worker (pytest.ini: --dist loadgroup) so that they run
# beside each other and beside the unit tests, which any worker takes.
ARM64_GROUP, CUDA13_GROUP, CUDA12_GROUP, RELEASE_GROUP, LAYERS_GROUP = "arm64", "cuda13", "cuda12.1", "release", "layers"
# The longest emulated and compiling tests, each on a worker of its own beside the rest of its chain: they are the
# run's longest, and in one chain with the others the run waited for them one after another at its end. The other
# worker of the chain finds the chain's images built (a host lock, then cache hits) and pushed (a kept registry).
ARM64_LONG = ("test_verify_passes_its_cpu_checks_in_the_arm64_image_under_emulation",)
CUDA13_LONG = ("test_load_inline_builds_sass_for_each_requested_arch",)
PODMAN_GROUP = "podman"  # its own service, and the runtime image copied into Podman's storage
PLATFORMS_GROUP = "platforms"  # the 12.1 images under other uids, read-only roots, ch-run: beside cuda12.1


# One worker per heavy group (two for each CUDA 13.0 chain) plus two for the unit tests. A run without the
# image tests gets one worker more than the machine has cores: its torchrun and timeout tests spend seconds
# waiting, and a third worker fills them (measured 2026-12-06, 2 cores: 92.4 s on 2 workers, 81.3 s on 3, 84.6 s on 4).
FULL_RUN_WORKERS = 11


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    if "not docker" in (config.getoption("markexpr") or ""):
        return max(2, os.cpu_count() or 2) + 1
    return FULL_RUN_WORKERS


def pytest_itemcollected(item: pytest.Item) -> None:
    """The item's group, as it is collected: before any collection_modifyitems, xdist's (which reads it) included."""
    path = item.path.as_posix()
    if path.endswith("tests/cuda13/test_arm64.py"):
        group = ARM64_GROUP if item.originalname in ARM64_LONG else f"{ARM64_GROUP}-clients"
    elif "/tests/cuda13/" in path:
        group = CUDA13_GROUP if item.originalname in CUDA13_LONG else f"{CUDA13_GROUP}-more"
    elif path.endswith("tests/test_layer_sharing.py"):  # 2.4.0's build and pushes, beside the --no-cache rebuild
        group = LAYERS_GROUP
    elif path.endswith("tests/test_podman.py"):  # before the `built` rule: it waits for the 12.1 build like it
        group = PODMAN_GROUP
    elif path.endswith(("tests/test_platforms.py", "tests/test_hpc.py")):
        group = PLATFORMS_GROUP
    elif path.endswith("tests/test_verify_run.py") and "full_run" in getattr(item, "fixturenames", ()):
        group = "verify-full-run"  # one worker: its one module-scoped verify run serves them all
    elif "built" in getattr(item, "fixturenames", ()):
        # Tests that build 12.1 images wait for the --no-cache rebuild (one_build_at_a_time): they run on its
        # worker, before it, rather than hold up the worker of the tests that only run the images.
        builds = item.get_closest_marker("release") or "builds_here" in item.fixturenames
        group = RELEASE_GROUP if builds else CUDA12_GROUP
    else:
        return
    item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def given_images(request) -> list[str]:
    return list(request.config.getoption("--image"))


@pytest.fixture
def builds_here(given_images) -> None:
    """For a test that builds: with --image the images under test were built elsewhere, so it skips."""
    if given_images:
        pytest.skip("--image: this test builds images, and the images under test were built elsewhere")


def _specs_of_given(client, m: matrix.Matrix, references: list[str]) -> dict[str, plan.ImageSpec]:
    """The spec of each --image, from its own labels; the reference must be named as ours."""
    import docker.errors

    from pytorch_cuda import refs

    found: dict[str, plan.ImageSpec] = {}
    for reference in references:
        if refs.repository_name(reference) != plan.REPOSITORY:
            pytest.fail(f"--image {reference}: name it as ours, [registry/]{plan.REPOSITORY}:<tag>")
        try:
            image = client.images.get(reference)
        except docker.errors.ImageNotFound:
            image = client.images.pull(reference)
        labels = image.labels
        variant = labels["org.opencontainers.image.version"].rsplit("-", 1)[-1]
        build = m.resolve(cuda=labels["io.pytorch-cuda.cuda"], torch=labels["io.pytorch-cuda.torch"])
        repository = refs.split(reference)[0]
        registry = repository[: -len(plan.REPOSITORY)].rstrip("/") or None
        [spec] = plan.image_specs(m, [build], variants=(variant,), registry=registry)
        if spec.tag != reference:
            pytest.fail(f"--image {reference}: its labels say {spec.tag}")
        found[variant] = spec
    return found


class BuiltImages(dict):
    """variant -> ImageSpec of the images under test; a variant not given with --image skips the test that asks."""

    def __init__(self, specs: dict[str, plan.ImageSpec], output: str, given: bool) -> None:
        super().__init__(specs)
        self.output, self.given = output, given

    def __missing__(self, variant: str) -> plan.ImageSpec:
        pytest.skip(f"no {variant} image among --image {' '.join(spec.tag for spec in self.values())}")


@pytest.fixture(scope="session")
def built(docker_client, real_matrix, given_images) -> BuiltImages:
    """The three images of `build.py --cuda 12.1`, built by the real CLI, or the images given with --image.

    Built once for the whole run: the xdist workers that need them take turns (host lock), and the
    second finds every step in the layer cache. The images are the product and stay for the next run.
    """
    if given_images:
        return BuiltImages(_specs_of_given(docker_client, real_matrix, given_images), "", given=True)
    specs = plan.image_specs(real_matrix, [real_matrix.resolve(cuda=BUILD_CUDA)])
    # The first worker builds; the others find its output and run no build of their own, so none of them
    # waits behind a --no-cache rebuild that holds the line's build turn.
    # Without xdist (-n 0) there is no other worker, and a file named by anything else could be found by a
    # later run: no file then. Files of earlier runs go (a run lasts well under a day).
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    done = hostlock.lock_dir() / f"tests-built-cuda{BUILD_CUDA}-{run_id}.out"
    with hostlock.held(f"tests-built-cuda{BUILD_CUDA}"):
        for old in hostlock.lock_dir().glob("tests-built-cuda*.out"):
            if time.time() - old.stat().st_mtime > 86400:
                old.unlink(missing_ok=True)
        if run_id and done.exists():
            return BuiltImages({spec.variant: spec for spec in specs}, done.read_text(), given=False)
        with one_build_at_a_time(BUILD_CUDA):
            result = build_py("--cuda", BUILD_CUDA, timeout=3600)
        assert result.returncode == 0, f"build.py --cuda {BUILD_CUDA} failed:\n{build_failure(result)}"
        if run_id:
            done.write_text(result.stdout + result.stderr)
    return BuiltImages({spec.variant: spec for spec in specs}, result.stdout + result.stderr, given=False)


@pytest.fixture(scope="session")
def registry(docker_client) -> tuple[str, str, object]:
    """The registry the run's pushes share (address, url, container): one for every worker, its storage kept
    between runs (dockerutil.kept_registry), so a push of layers an earlier run pushed compresses nothing.
    Each test pushes under its own repository (`layers/`, `release/`, `cuda13/`)."""
    return kept_registry(docker_client, os.environ[RUN_ID])


# This run's id, in the environment of every process of it: xdist's workers and a pytest a test starts (which then
# leaves the run's shared things to the run that made them).
RUN_ID = "PYTORCH_CUDA_TEST_RUN"
_OWNS_RUN = pytest.StashKey[bool]()  # set in the process that chose the id


def pytest_configure(config: pytest.Config) -> None:
    if RUN_ID not in os.environ:
        os.environ[RUN_ID] = uuid.uuid4().hex
        config.stash[_OWNS_RUN] = True


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's first process, once every worker is done: the kept registry's container goes if this run started
    it (its volume stays), and so do the names the CUDA 13.0 images got for their push."""
    if not session.config.stash.get(_OWNS_RUN, False):
        return
    client, _ = _docker_client(timeout=10)
    if client is not None:
        remove_kept_registry(client, os.environ[RUN_ID])
        remove_pushed_names(client)
