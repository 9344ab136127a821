"""The pipeline's rules with a fake engine: which images get tags and aliases, which are skipped or pushed.

The fake stands in for the engine's answers only (a build succeeds or fails, verify passes or not);
that real images build and run is shown by the docker-marked tests with the real engine.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytorch_cuda import matrix, pipeline, plan, render
from pytorch_cuda.engine import BuildEvents, failure_message
from pytorch_cuda.errors import BuildFailed, PushFailed, RegistryError
from pytorch_cuda.progress import Progress

FIXTURE = Path(__file__).parent / "fixtures" / "matrix.json"


@dataclass
class FakeEngine:
    fail_builds: set[str] = field(default_factory=set)  # tags whose build fails
    fail_verify: set[str] = field(default_factory=set)  # tags whose verify fails
    has_base: bool = True
    tags: dict[str, str] = field(default_factory=dict)  # reference -> image ID
    pushed: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    relabelled: list[dict] = field(default_factory=list)
    loopback: bool = True  # whether its builds reach this host's 127.0.0.1
    build_calls: dict[str, tuple[dict[str, str], bool]] = field(default_factory=dict)  # tag -> (args, host net)
    build_cpu_shares: dict[str, int | None] = field(default_factory=dict)  # tag -> the weight its build was given
    build_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # tag -> labels given to its build
    contexts: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # tag -> (its build context, Dockerfile path)
    # The registry: name (or repository@digest) -> (platforms, is an index), as create_index and push leave it.
    registry: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)  # names the registry refuses
    missing: set[str] = field(default_factory=set)  # images that are not here (exists() says so)
    repo_digests: dict[str, str] = field(default_factory=dict)  # local image -> the digest it was pulled at
    log: list[tuple[str, ...]] = field(default_factory=list)  # registry steps and audits, in order
    stages: list[tuple[str, str]] = field(default_factory=list)  # (tag, target) of each stage built alone

    def build(self, tag: str, context: io.BytesIO, dockerfile_path: str, buildargs: dict[str, str],
              nocache: bool = False, labels: dict[str, str] | None = None, events: BuildEvents | None = None,
              host_network: bool = False, cpu_shares: int | None = None, target: str | None = None) -> str:
        assert context.read(1), "an empty build context"
        if target is not None:  # a stage built alone first (the runtime's system stage): not an image of the run
            self.stages.append((tag, target))
            return f"sha256:{'f' * 64}"
        self.built.append(tag)
        self.build_cpu_shares[tag] = cpu_shares
        self.build_calls[tag] = (dict(buildargs), host_network)
        self.build_labels[tag] = dict(labels or {})
        self.contexts[tag] = (context.getvalue(), dockerfile_path)
        if tag in self.fail_builds:
            raise BuildFailed(tag, "step 7/20 (RUN pip install)", "exit code 1", ["ERROR: no such package"])
        return f"sha256:{len(self.built):064d}"

    def tag(self, image_id, references):
        for reference in references:  # like docker tag: the source may be a name of an image
            self.tags[reference] = self.tags.get(image_id, image_id)

    def push(self, references):
        for reference in references:  # like DockerEngine.push: one at a time, the first refusal stops it
            if reference in self.refuse:
                raise PushFailed(f"push of {reference} failed: denied: requested access to the resource is denied")
            self.pushed.append(reference)
            self.log.append(("push", reference))
            self.store(reference, ((plan.platform_of_tag(reference),), False))

    def store(self, reference, entry):
        digest = "sha256:" + hashlib.sha256(repr(entry).encode()).hexdigest()
        self.registry[reference] = self.registry[f"{reference.rsplit(':', 1)[0]}@{digest}"] = entry

    def create_index(self, reference, sources):
        """As `docker buildx imagetools create`: one source is copied as it is, several make an index."""
        if reference in self.refuse:
            raise PushFailed(f"index {reference}: `docker manifest push` failed: denied")
        absent = [source for source in sources if source not in self.registry]
        if absent:
            raise PushFailed(f"index {reference}: `docker manifest create` failed: no such manifest: {absent[0]}")
        entries = [self.registry[source] for source in sources]
        platforms = tuple(p for entry_platforms, _ in entries for p in entry_platforms)
        self.store(reference, (platforms, len(sources) > 1 or entries[0][1]))
        self.pushed.append(f"{reference} = {' + '.join(sources)}")
        self.log.append(("index", reference, *sources))

    def index_platforms(self, reference):
        if reference not in self.registry:
            raise RegistryError(f"{reference} in its registry: `docker manifest inspect` failed: no such manifest")
        platforms, is_index = self.registry[reference]
        return platforms if is_index else None

    def repo_digest(self, reference):
        return self.repo_digests.get(reference)

    def architecture(self, reference):
        return "arm64" if reference.startswith("arm64v8/") else "amd64"

    def image_size(self, reference):
        return 5_000_000_000

    def exists(self, reference):
        return self.has_base and reference not in self.missing

    def run_verify(self, reference, timeout=600):
        self.verified.append(reference)
        return (1, "verify: 1 failed") if reference in self.fail_verify else (0, "verify: all passed")

    def pull(self, reference):
        return "no registry here"

    def read_file(self, reference, path):
        return b'{"components": []}\n' if path.endswith("sbom.cdx.json") else None

    def reaches_host_loopback(self):
        return self.loopback

    def relabel(self, image_id, labels):
        self.relabelled.append(labels)
        return image_id + "+labels"


@pytest.fixture(scope="module")
def m() -> matrix.Matrix:
    return matrix.load(FIXTURE)


def specs(m, cuda="12.1", **kwargs):
    return plan.image_specs(m, [m.resolve(cuda=cuda)], **kwargs)


def build(engine, m, image_specs, **options):
    return pipeline.run(engine, m, image_specs, pipeline.BuildOptions(**options), Progress(stream=io.StringIO()))


RUNTIME, JUPYTER, SSH = (f"pytorch-cuda:2.4.1-cuda12.1-{v}" for v in ("runtime", "jupyter", "ssh"))
ALIAS = "pytorch-cuda:v2.4-cuda12.1-{}"


def test_every_image_is_tagged_and_aliased_after_it_built(m):
    engine = FakeEngine()
    results = build(engine, m, specs(m))
    assert [(r.tag, r.status) for r in results] == [(RUNTIME, "built"), (JUPYTER, "built"), (SSH, "built")]
    assert set(engine.tags) == {RUNTIME, JUPYTER, SSH, *(ALIAS.format(v) for v in ("runtime", "jupyter", "ssh"))}
    assert engine.tags[ALIAS.format("runtime")] == engine.tags[RUNTIME]
    assert engine.pushed == [] and engine.verified == []
    # The SBOM's digest is labelled before the tag: the tag names the labelled image.
    assert engine.tags[RUNTIME].endswith("+labels")
    assert engine.relabelled[0] == {"io.pytorch-cuda.sbom-digest": "sha256:" + hashlib.sha256(
        b'{"components": []}\n').hexdigest()}


def test_the_runtimes_shared_stages_are_built_alone_first_each_under_its_host_lock(m, monkeypatch, tmp_path):
    """Other builds share the system stage (every tag on one base and platform) and the builder stage's first
    steps (every tag whose builder runs on one image): build.py builds each alone, holding its lock while that
    build runs, before the image; not for variants (they have none), and not with --no-cache (which runs every
    step anew)."""
    engine = FakeEngine()
    seen = []

    @contextlib.contextmanager
    def lock(name, directory=None, on_wait=None):
        seen.append(("lock", name, list(engine.stages)))
        yield
        seen.append(("unlock", name, list(engine.stages)))

    monkeypatch.setattr(pipeline.hostlock, "held", lock)
    build(engine, m, specs(m))
    system, builder = "system-stage debian:bookworm-slim linux/amd64", "builder-stage debian:bookworm-slim"
    assert seen == [("lock", system, []), ("unlock", system, [(RUNTIME, "system")]),
                    ("lock", builder, [(RUNTIME, "system")]),
                    ("unlock", builder, [(RUNTIME, "system"), (RUNTIME, "builder")])]
    assert engine.built == [RUNTIME, JUPYTER, SSH]
    engine = FakeEngine()
    build(engine, m, specs(m), no_cache=True)
    assert engine.stages == [] and engine.built == [RUNTIME, JUPYTER, SSH]


def test_an_arm64_runtimes_builder_stage_takes_the_lock_of_the_image_it_runs_on(real_matrix):
    """Its builder runs on the engine's own base (BUILDER_IMAGE), like the amd64 builds beside it: one lock."""
    m = real_matrix
    [arm64] = plan.image_specs(m, [m.resolve(cuda="13.0")], variants=("runtime",), platform=matrix.ARM64)
    [amd64] = plan.image_specs(m, [m.resolve(cuda="13.0")], variants=("runtime",))
    dockerfile = render.image_files(arm64, ()).dockerfile
    arm64_locks = dict(pipeline.shared_stages(arm64, pipeline.build_args(arm64, dockerfile, None, "")))
    amd64_locks = dict(pipeline.shared_stages(amd64, pipeline.build_args(amd64, dockerfile, None, "")))
    assert arm64_locks["builder"] == amd64_locks["builder"] == f"builder-stage {amd64.base_image}"
    assert arm64_locks["system"] != amd64_locks["system"]  # each platform's own base


def test_a_failed_runtime_gets_no_tag_and_its_variants_are_skipped(m):
    engine = FakeEngine(fail_builds={RUNTIME})
    results = build(engine, m, specs(m), keep_going=True)
    assert [(r.tag, r.status) for r in results] == [(RUNTIME, "failed"), (JUPYTER, "skipped"), (SSH, "skipped")]
    assert engine.tags == {} and engine.built == [RUNTIME]
    assert results[1].note == f"{RUNTIME} failed"


def test_without_keep_going_the_rest_is_not_started(m):
    engine = FakeEngine(fail_builds={JUPYTER})
    results = build(engine, m, specs(m))
    assert [(r.tag, r.status) for r in results] == [(RUNTIME, "built"), (JUPYTER, "failed"), (SSH, "skipped")]
    assert results[2].note == "not started (no --keep-going)"
    assert JUPYTER not in engine.tags and SSH not in engine.built


def test_an_image_that_fails_verify_keeps_its_tag_but_gets_no_alias_and_nothing_is_pushed(m):
    engine = FakeEngine(fail_verify={JUPYTER})
    image_specs = specs(m, registry="r.example/team")
    jupyter = image_specs[1].tag
    engine.fail_verify = {jupyter}
    results = build(engine, m, image_specs, verify=True, push=True)
    assert [r.verify for r in results] == ["passed", "FAILED (exit 1)", "passed"]
    assert jupyter in engine.tags and image_specs[1].aliases[0] not in engine.tags
    assert image_specs[0].aliases[0] in engine.tags
    assert engine.pushed == []


def test_push_sends_every_tag_and_alias_once_all_passed(m):
    engine = FakeEngine()
    image_specs = specs(m, registry="r.example/team")
    build(engine, m, image_specs, verify=True, push=True)
    assert engine.pushed == [ref for spec in image_specs for ref in (spec.tag, *spec.aliases)]


def test_both_platforms_push_suffixed_images_then_one_index_per_name():
    real = matrix.load()
    build_13 = real.resolve(cuda="13.0")
    image_specs = [spec for platform in matrix.PLATFORMS
                   for spec in plan.image_specs(real, [build_13], variants=("runtime",), registry="r.example/team",
                                                platform=platform)]
    engine = FakeEngine()
    build(engine, real, image_specs, push=True)
    tag = "r.example/team/pytorch-cuda:2.14.1-cuda13.0-runtime"
    alias = "r.example/team/pytorch-cuda:v2.14-cuda13.0-runtime"
    assert engine.pushed == [
        f"{tag}-amd64", f"{alias}-amd64", f"{tag}-arm64", f"{alias}-arm64",
        f"{tag} = {tag}-amd64 + {tag}-arm64", f"{alias} = {alias}-amd64 + {alias}-arm64",
    ]
    # Locally the plain tag stays the amd64 image (an engine holds one image per name).
    assert engine.tags[tag] == engine.tags[f"{tag}-amd64"] != engine.tags[f"{tag}-arm64"]


def test_one_platform_alone_pushes_no_index():
    real = matrix.load()
    image_specs = plan.image_specs(real, [real.resolve(cuda="13.0")], variants=("runtime",),
                                   registry="r.example/team", platform=matrix.ARM64)
    engine = FakeEngine()
    build(engine, real, image_specs, push=True, move_aliases=False)
    assert engine.pushed == ["r.example/team/pytorch-cuda:2.14.1-cuda13.0-runtime-arm64"]


def test_no_alias_when_ci_moves_them_later(m):
    engine = FakeEngine()
    build(engine, m, specs(m), move_aliases=False)
    assert set(engine.tags) == {RUNTIME, JUPYTER, SSH}


def test_every_build_gets_the_cpu_weight_asked_for_and_none_by_default(m):
    engine = FakeEngine()
    build(engine, m, specs(m), cpu_shares=4096)
    assert engine.build_cpu_shares == {RUNTIME: 4096, JUPYTER: 4096, SSH: 4096}
    engine = FakeEngine()
    build(engine, m, specs(m))
    assert set(engine.build_cpu_shares.values()) == {None}  # the engine's own default, not a number of ours


def test_an_older_patch_never_gets_the_short_alias(m):
    engine = FakeEngine()
    old = plan.image_specs(m, [m.resolve(cuda="12.1", torch="2.4.0")], variants=("runtime",))
    build(engine, m, old)
    assert set(engine.tags) == {"pytorch-cuda:2.4.0-cuda12.1-runtime"}


def test_build_args_are_only_what_each_dockerfile_declares(m):
    from pytorch_cuda import render

    image_specs = {s.variant: s for s in specs(m, registry="r.example")}
    args = {variant: pipeline.build_args(spec, render.render_dockerfile(spec, m.variant_packages.get(variant, ())),
                                         None, "CA") for variant, spec in image_specs.items()}
    assert args["runtime"] == {"BASE_IMAGE": "debian:bookworm-slim", "PIP_INDEX_URL": "https://pypi.org/simple",
                               "PIP_CA_CERT": "CA"}
    assert args["jupyter"] == {"RUNTIME_IMAGE": "r.example/pytorch-cuda:2.4.1-cuda12.1-runtime", "PIP_CA_CERT": "CA"}
    assert args["ssh"] == {"RUNTIME_IMAGE": "r.example/pytorch-cuda:2.4.1-cuda12.1-runtime"}
    jupyter = render.render_dockerfile(image_specs["jupyter"], ())
    mirror = pipeline.build_args(image_specs["jupyter"], jupyter, "http://mirror/simple", "")
    assert mirror["PIP_INDEX_URL"] == "http://mirror/simple" and "PIP_CA_CERT" not in mirror


def test_the_build_context_is_the_same_bytes_every_time(m):
    spec = specs(m)[0]
    files = {"images/x/Dockerfile": b"FROM scratch\n", "images/x/manifest.json": b"{}\n"}
    first, second = pipeline.make_context(files).getvalue(), pipeline.make_context(dict(reversed(files.items()))).getvalue()
    assert first == second  # same cache keys whatever the order or the checkout's mtimes
    assert spec.dockerfile.name == "Dockerfile"


@pytest.mark.parametrize(("builder_says", "line"), [
    # Docker 20.10's classic builder quotes the whole RUN command: kilobytes for the pip step.
    ("The command '/bin/sh -c set -eu; if [ -n \"${PIP_CA_CERT}\" ]; then\n  pip install -r /tmp/r.lock; fi' "
     "returned a non-zero code: 1", "its command exited with code 1"),
    ("The command '/bin/sh -c exit 100' returned a non-zero code: 100", "its command exited with code 100"),
    ("COPY failed: file not found in build context or excluded by .dockerignore:\n stat x: no such file",
     "COPY failed: file not found in build context or excluded by .dockerignore: stat x: no such file"),
])
def test_a_failed_step_is_told_in_one_short_line(builder_says, line):
    assert failure_message(builder_says) == line


_PIP_FAILED = "The command '/bin/sh -c pip install -r /tmp/r.lock' returned a non-zero code: 1"


def test_our_own_steps_words_come_before_the_builders():
    tail = ["Step 4/9 : ARG TARGETARCH", "Step 5/9 : RUN case \"${TARGETARCH}\" in amd64) ;;"
            " *) echo \"pytorch-cuda: error: no wheels for TARGETARCH=${TARGETARCH}\" >&2; exit 1 ;; esac",
            " ---> Running in 0123456789ab", "pytorch-cuda: error: no wheels for TARGETARCH=riscv64"]
    assert failure_message(_PIP_FAILED, tail) == "no wheels for TARGETARCH=riscv64"


def test_the_echoed_command_is_not_taken_for_what_the_step_said():
    # The Step line quotes the command, marker and all, mid-line; pip's own failure said nothing of ours.
    tail = ["Step 5/9 : RUN case x in *) echo \"pytorch-cuda: error: no wheels\" >&2 ;; esac; pip install",
            "ERROR: Could not find a version that satisfies the requirement torch==2.4.1"]
    assert failure_message(_PIP_FAILED, tail) == "its command exited with code 1"


@pytest.fixture
def wheel_cache(monkeypatch, tmp_path):
    """The wheel cache's host side stood in for: what was fetched, for which lock and platform."""
    fetched: list[tuple[str, str, str]] = []

    def prefetch(lock, directory, architecture, python, upstream, ca_file=None):
        if "unreachable" in upstream:
            raise pipeline.wheelcache.WheelCacheError(f"downloading the wheels of {lock.name} from {upstream} failed")
        fetched.append((render_path(lock), architecture, upstream))
        return pipeline.wheelcache.Fetch(downloaded=0, downloaded_bytes=0, reused=3)

    monkeypatch.setattr(pipeline.wheelcache, "prefetch", prefetch)
    monkeypatch.setattr(pipeline.wheelcache, "ensure_server", lambda directory, port, say: f"http://127.0.0.1:{port}/simple/")
    return tmp_path, fetched


def render_path(path: Path) -> str:
    return path.relative_to(matrix.REPO_ROOT).as_posix() if path.is_absolute() else str(path)


def test_with_the_wheel_cache_pip_steps_read_from_loopback_and_the_rest_build_as_before(m, wheel_cache):
    directory, fetched = wheel_cache
    engine = FakeEngine()
    build(engine, m, specs(m), wheel_cache=directory, wheel_cache_port=40001)
    runtime_args, runtime_host = engine.build_calls[RUNTIME]
    assert runtime_args["PIP_INDEX_URL"] == "http://127.0.0.1:40001/simple/" and runtime_host
    assert engine.build_calls[JUPYTER][0]["PIP_INDEX_URL"] == "http://127.0.0.1:40001/simple/"
    # no pip step: no cache, no host network; FROM the runtime this run built (its content image)
    assert engine.build_calls[SSH] == ({"RUNTIME_IMAGE": f"sha256:{1:064d}"}, False)
    runtime_spec = specs(m)[0]
    assert fetched == [(render_path(runtime_spec.lock), "amd64", runtime_spec.build.index_url),
                       (render_path(specs(m)[1].lock), "amd64", matrix.PYPI_URL)]


def test_an_arm64_runtime_also_caches_the_builders_own_tools(wheel_cache):
    directory, fetched = wheel_cache
    real = matrix.load()
    build(FakeEngine(), real, specs(real, cuda="13.0", variants=("runtime",), platform=matrix.ARM64),
          wheel_cache=directory)
    assert [(lock.rsplit("/", 1)[-1], architecture) for lock, architecture, _ in fetched] == [
        ("runtime.lock", "arm64"), ("builder-tools.lock", "amd64")]


def test_wheels_that_cannot_be_fetched_fail_that_image_in_one_line_and_tag_nothing(m, wheel_cache):
    directory, _ = wheel_cache
    engine = FakeEngine()
    stream = io.StringIO()
    results = pipeline.run(engine, m, specs(m), pipeline.BuildOptions(wheel_cache=directory, keep_going=True,
                                                                      index_url="http://unreachable.invalid/simple"),
                           Progress(stream=stream))
    assert [(r.tag, r.status) for r in results] == [(RUNTIME, "failed"), (JUPYTER, "skipped"), (SSH, "skipped")]
    assert engine.built == [] and engine.tags == {}
    [error] = [line for line in stream.getvalue().splitlines() if line.startswith("error:")]
    assert error == (f"error: wheels of {RUNTIME}: downloading the wheels of runtime.lock from "
                     "http://unreachable.invalid/simple failed")


def test_an_engine_that_cannot_reach_loopback_builds_without_the_cache_and_says_so(m, wheel_cache):
    directory, fetched = wheel_cache
    engine = FakeEngine(loopback=False)
    stream = io.StringIO()
    pipeline.run(engine, m, specs(m), pipeline.BuildOptions(wheel_cache=directory), Progress(stream=stream))
    assert fetched == [] and "PIP_INDEX_URL" not in engine.build_calls[JUPYTER][0]
    assert engine.build_calls[RUNTIME][1] is False
    assert "wheel cache: off (this engine's builds cannot reach this host's loopback" in stream.getvalue()


def test_variants_build_from_the_runtimes_content_image_so_a_new_revision_rebuilds_none_of_them(m):
    """The git revision and the SBOM digest are labels added on top of what was built: the runtime's tag
    carries them, its variants build FROM the image under them, which a new commit does not change."""
    runs = []
    for revision in ("1111111", "2222222"):
        engine = FakeEngine()
        build(engine, m, specs(m), labels={"org.opencontainers.image.revision": revision})
        runs.append(engine)
        runtime_built = f"sha256:{1:064d}"
        assert engine.build_calls[JUPYTER][0]["RUNTIME_IMAGE"] == runtime_built
        assert engine.tags[RUNTIME] == runtime_built + "+labels"  # users pull the labelled one
        assert engine.relabelled[0]["org.opencontainers.image.revision"] == revision
        assert "io.pytorch-cuda.sbom-digest" in engine.relabelled[0]
    assert runs[0].build_calls == runs[1].build_calls  # the builds themselves: the same inputs, the same cache
    assert runs[0].build_labels == runs[1].build_labels == {tag: {} for tag in (RUNTIME, JUPYTER, SSH)}


def test_a_variant_built_alone_builds_on_the_runtimes_tag(m):
    engine = FakeEngine()
    build(engine, m, specs(m, variants=("jupyter",)))
    assert engine.build_calls[JUPYTER][0]["RUNTIME_IMAGE"] == RUNTIME


def test_each_image_is_built_from_one_list_of_its_files(m, monkeypatch):
    """render.image_files, once per image: the build context holds exactly what --render writes and the locks,
    and the pipeline asks render for nothing else (its manifest is made once)."""
    import tarfile

    from pytorch_cuda import render

    listed, manifests = [], []
    real_files, real_manifest = render.image_files, render.image_manifest
    monkeypatch.setattr(render, "image_files", lambda spec, *a: listed.append(spec.tag) or real_files(spec, *a))
    monkeypatch.setattr(render, "image_manifest", lambda spec: manifests.append(spec.tag) or real_manifest(spec))
    engine = FakeEngine()
    image_specs = specs(m, variants=plan.VARIANTS)
    build(engine, m, image_specs)
    assert listed == manifests == [spec.tag for spec in image_specs]
    for spec in image_specs:
        context, dockerfile_path = engine.contexts[spec.tag]
        with tarfile.open(fileobj=io.BytesIO(context)) as tar:
            names = {name for name in tar.getnames() if not name.startswith(pipeline.CONTEXT_DIRS)}
        files = real_files(spec, m.variant_packages.get(spec.variant, ()))
        assert names == set(files.context()) and dockerfile_path == render.repo_path(spec.dockerfile)
