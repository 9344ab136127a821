"""The release rules (pytorch_cuda/release.py) with a fake engine and registry: what the GitHub workflow does
through `build.py --publish`, `--index` and `--move-alias`, and a local `--push`.

The promises: every image of a set is audited before any is pushed, and nothing is pushed unless all
are clean; a registry's refusal stops there, before any index; a tag of two platforms becomes the
index of both; an alias moves only to a digest that holds every platform of its tag, else it stays.
The engine's docker CLI plumbing (both index tools) is run against a fake `docker` at the end.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from pytorch_cuda import audit, matrix, plan, release
from pytorch_cuda.engine import IMAGETOOLS, MANIFEST, DockerEngine, listed_platforms
from pytorch_cuda.errors import (
    IndexIncomplete,
    NothingPushed,
    PushFailed,
    PytorchCudaError,
    RegistryError,
    UnknownAlias,
    UsageError,
)

from .test_pipeline import FakeEngine

REGISTRY = "r.example/team"
REPOSITORY = f"{REGISTRY}/pytorch-cuda"
BOTH = (matrix.AMD64, matrix.ARM64)


@pytest.fixture(scope="module")
def real() -> matrix.Matrix:
    return matrix.load()


@pytest.fixture(scope="module")
def m_fixture() -> matrix.Matrix:
    """The small fixture matrix of test_pipeline.py (CUDA 12.1 lines: linux/amd64 only)."""
    return matrix.load(Path(__file__).parent / "fixtures" / "matrix.json")


def specs_of(m: matrix.Matrix, cuda: str, platforms=(matrix.AMD64,), variants=("runtime",)) -> list[plan.ImageSpec]:
    return [spec for platform in platforms
            for spec in plan.image_specs(m, [m.resolve(cuda=cuda)], variants=variants, registry=REGISTRY,
                                         platform=platform)]


def auditor(engine: FakeEngine, unclean: dict[str, str] | None = None, unavailable: set[str] = frozenset()):
    """Audits every image asked, in the engine's log: clean, or with one finding (`unclean`: image -> package),
    or with a source that could not be asked."""
    def audit_one(reference: str) -> audit.AuditReport:
        engine.log.append(("audit", reference))
        report = audit.AuditReport(reference, checked={"debian": 120, "python": 80})
        if reference in (unclean or {}):
            report.findings.append(audit.Finding("python", unclean[reference], "2.4.1", "GHSA-53q9-r3pm-6pq6"))
        if reference in unavailable:
            report.unavailable.append("Python: OSV (https://api.osv.dev/v1/querybatch) cannot be asked: timed out")
        return report
    return audit_one


def lines() -> tuple[list[str], release.Say]:
    said: list[str] = []
    return said, said.append


# --- publish: audit, then push ------------------------------------------------------------------

def test_every_image_is_audited_before_any_is_pushed(m_fixture):
    image_specs = specs_of(m_fixture, "12.1", variants=plan.VARIANTS[:3])
    engine = FakeEngine()
    said, say = lines()
    release.publish(engine, release.release_of(image_specs), say, auditor=auditor(engine))
    tags = [spec.tag for spec in image_specs]
    assert engine.log == [*(("audit", tag) for tag in tags), *(("push", tag) for tag in tags)]
    assert engine.pushed == tags  # tags only: an alias moves by --move-alias, after verify
    assert f"audit {tags[0]}: clean (120 debian, 80 python packages checked)" in said


@pytest.mark.parametrize("problem", ["finding", "unavailable"])
def test_one_image_that_is_not_clean_pushes_nothing_of_the_set(m_fixture, problem):
    image_specs = specs_of(m_fixture, "12.1", variants=plan.VARIANTS[:3])
    jupyter = image_specs[1].tag
    engine = FakeEngine()
    check = auditor(engine, unclean={jupyter: "torch"}) if problem == "finding" else auditor(engine, unavailable={jupyter})
    said, say = lines()
    with pytest.raises(NothingPushed) as raised:
        release.publish(engine, release.release_of(image_specs), say, auditor=check)
    assert str(raised.value) == f"nothing pushed: 1 of 3 images did not pass the audit ({jupyter})"
    assert engine.pushed == [] and engine.registry == {}
    assert [step for step, *_ in engine.log] == ["audit"] * 3  # all audited: every finding is said at once
    if problem == "finding":
        assert "    python torch 2.4.1: fixed in GHSA-53q9-r3pm-6pq6" in said
    else:
        assert any(line.startswith("    could not audit: Python: OSV") for line in said)  # an audit that could not look


def test_an_image_not_built_here_pushes_nothing_and_is_not_audited(m_fixture):
    image_specs = specs_of(m_fixture, "12.1", variants=plan.VARIANTS[:3])
    engine = FakeEngine(missing={image_specs[2].tag})
    with pytest.raises(NothingPushed, match=rf"^nothing pushed: {image_specs[2].tag} is not here: build it first$"):
        release.publish(engine, release.release_of(image_specs), lines()[1], auditor=auditor(engine))
    assert engine.log == []


def test_images_that_did_not_build_or_pass_push_nothing(m_fixture):
    engine = FakeEngine()
    image_specs = specs_of(m_fixture, "12.1")
    with pytest.raises(NothingPushed, match="not every image built and passed verify"):
        release.publish(engine, release.release_of(image_specs), lines()[1], not_passed=[image_specs[0].tag])
    assert engine.pushed == []


def test_a_registry_refusal_is_one_line_and_stops_before_any_index(real):
    image_specs = specs_of(real, "13.0", platforms=BOTH)
    amd64, arm64 = image_specs
    engine = FakeEngine(refuse={arm64.tag})
    with pytest.raises(PushFailed) as raised:
        release.publish(engine, release.release_of(image_specs), lines()[1], auditor=auditor(engine))
    assert str(raised.value) == (f"push of {arm64.tag} failed: denied: requested access to the resource is denied "
                                 "(1 of 2 images pushed before it; no index made)")
    assert engine.pushed == [f"{amd64.tag}-amd64"] and amd64.tag not in engine.registry


# --- both platforms: one tag -------------------------------------------------------------------------

def test_both_platforms_in_one_set_push_their_members_then_the_index(real):
    image_specs = specs_of(real, "13.0", platforms=BOTH)
    amd64, arm64 = image_specs
    engine = FakeEngine()
    release.publish(engine, release.release_of(image_specs), lines()[1], auditor=auditor(engine))
    assert engine.log[2:] == [("push", f"{amd64.tag}-amd64"), ("push", arm64.tag),
                              ("index", amd64.tag, f"{amd64.tag}-amd64", arm64.tag)]
    assert engine.index_platforms(amd64.tag) == BOTH


def test_the_split_runners_of_ci_make_the_same_tag(real):
    """CI: amd64 and arm64 are built and published on their own runners, then --index joins them."""
    amd64, arm64 = specs_of(real, "13.0", platforms=BOTH)
    engine = FakeEngine()  # one registry, three jobs
    release.publish(engine, release.release_of([amd64]), lines()[1], auditor=auditor(engine))
    # Alone, the amd64 image holds the plain tag until the index (verify can pull it either way) and
    # goes as the member the index will name.
    assert engine.pushed == [amd64.tag, f"{amd64.tag}-amd64"] and engine.index_platforms(amd64.tag) is None
    release.publish(engine, release.release_of([arm64]), lines()[1], auditor=auditor(engine))
    assert engine.pushed[2:] == [arm64.tag]
    for index in release.release_of([amd64, arm64]).indexes:
        release.make_index(engine, index, lines()[1])
    assert engine.index_platforms(amd64.tag) == BOTH
    assert engine.index_platforms(f"{amd64.tag}-amd64") is None and engine.index_platforms(arm64.tag) is None


def test_an_index_whose_arm64_image_is_missing_fails_and_leaves_the_tag(real):
    amd64, arm64 = specs_of(real, "13.0", platforms=BOTH)
    engine = FakeEngine()
    release.publish(engine, release.release_of([amd64]), lines()[1])
    (index,) = release.release_of([amd64, arm64]).indexes
    with pytest.raises(PushFailed, match=f"no such manifest: {arm64.tag}$"):
        release.make_index(engine, index, lines()[1])
    assert engine.index_platforms(amd64.tag) is None  # still the amd64 image, pullable as before


def test_an_index_that_does_not_list_what_it_was_made_of_is_said(real):
    amd64, arm64 = specs_of(real, "13.0", platforms=BOTH)
    engine = FakeEngine()
    engine.push([f"{amd64.tag}-amd64"])
    engine.registry[arm64.tag] = ((matrix.AMD64,), False)  # an amd64 image pushed under the arm64 name
    (index,) = release.release_of([amd64, arm64]).indexes
    with pytest.raises(IndexIncomplete, match="is an index of linux/amd64, linux/amd64: a member is not the one"):
        release.make_index(engine, index, lines()[1])


def test_one_platform_of_a_one_platform_tag_is_pushed_as_it_is(m_fixture):
    (spec,) = specs_of(m_fixture, "12.1")
    assert release.release_of([spec]) == release.Release((release.Upload(spec.tag, (spec.tag,)),))


# --- aliases -----------------------------------------------------------------------------------------

def _registry_with_tag(real, platforms_indexed: tuple[str, ...] | None):
    """A CUDA 13.0 runtime tag in the registry as the verify job pulls it: the index of `platforms_indexed`, or
    (None) the amd64 image alone (the arm64 build or the index job failed). Returns (engine, spec, digest)."""
    amd64, _ = specs_of(real, "13.0", platforms=BOTH)
    engine = FakeEngine()
    if platforms_indexed is None:
        engine.push([amd64.tag])
    else:
        engine.store(amd64.tag, (platforms_indexed, True))
    digest = next(name for name, entry in engine.registry.items()
                  if "@sha256:" in name and entry == engine.registry[amd64.tag])
    engine.repo_digests[amd64.tag] = digest
    return engine, amd64, digest


@pytest.mark.parametrize("indexed, moved", [
    (BOTH, True),
    (None, False),  # the amd64 image alone
    ((matrix.AMD64,), False),  # an index, of one platform
], ids=["index-of-both", "one-image", "index-of-amd64"])
def test_an_alias_moves_only_to_an_index_of_every_platform_of_its_tag(real, indexed, moved):
    """For a release with aarch64 wheels, the alias must be the index of both, or Grace machines pulling
    it would get no image of theirs; otherwise it stays where it was."""
    engine, spec, digest = _registry_with_tag(real, indexed)
    alias = spec.aliases[0]
    engine.registry[alias] = before = ((matrix.AMD64, matrix.ARM64), True)  # last week's
    owner = release.alias_owner(real, alias)
    assert owner.tag == spec.tag and release.alias_platforms(owner) == BOTH
    target = release.named_digest(owner, spec.tag) or release.pulled_digest(engine, spec.tag)
    assert target == digest
    said, say = lines()
    if moved:
        release.move_alias(engine, alias, target, release.alias_platforms(owner), say)
        assert engine.log[-1] == ("index", alias, digest) and engine.registry[alias] == engine.registry[digest]
        assert said == [f"moving {alias} to {digest} (an index of linux/amd64, linux/arm64)"]
    else:
        with pytest.raises(IndexIncomplete) as raised:
            release.move_alias(engine, alias, target, release.alias_platforms(owner), say)
        what = "one image" if indexed is None else "an index of linux/amd64"
        assert str(raised.value) == (f"{digest} is {what}, not an index of linux/amd64, linux/arm64 (did the arm64 "
                                     f"build or the index fail?): {alias} stays where it is")
        assert engine.registry[alias] == before and ("index", alias, digest) not in engine.log


def test_an_alias_of_a_one_platform_tag_moves_to_its_image(m_fixture):
    (spec,) = specs_of(m_fixture, "12.1")
    engine = FakeEngine()
    engine.push([spec.tag])
    digest = next(name for name in engine.registry if "@sha256:" in name)
    release.move_alias(engine, spec.aliases[0], digest, (matrix.AMD64,), lines()[1])
    assert engine.index_platforms(spec.aliases[0]) is None  # a copy of the one image


def test_a_missing_digest_is_one_line_and_moves_nothing(real):
    engine, spec, _ = _registry_with_tag(real, BOTH)
    gone = f"{REPOSITORY}@sha256:{'0' * 64}"
    with pytest.raises(RegistryError, match=f"^{gone} in its registry: `docker manifest inspect` failed"):
        release.move_alias(engine, spec.aliases[0], gone, BOTH, lines()[1])
    assert spec.aliases[0] not in engine.registry


def test_every_alias_of_the_ci_matrix_is_found_with_the_platforms_of_its_tag(real):
    """What --move-alias checks the index against comes from the matrix, the same as --ci-matrix's `platforms`."""
    specs = [spec for platform in matrix.PLATFORMS
             for spec in plan.image_specs(real, [b for b in real.newest_per_tag() if platform in b.platforms],
                                          variants=plan.VARIANTS, registry=REGISTRY, platform=platform)]
    entries = [entry for entry in plan.ci_matrix(specs)["include"] if entry["alias"]]
    assert {entry["platform"] for entry in entries} == set(matrix.PLATFORMS)
    for entry in entries:
        owner = release.alias_owner(real, f"{REPOSITORY}:{entry['alias']}")
        assert owner.tag == f"{REPOSITORY}:{entry['tag']}"
        wanted = entry["platforms"] if entry["platform"] == matrix.AMD64 else entry["platform"]
        assert ",".join(release.alias_platforms(owner)) == wanted


@pytest.mark.parametrize("alias", [
    f"{REPOSITORY}:v2.4-cuda99.9-runtime",
    f"{REGISTRY}/other:v2.14-cuda13.0-runtime",
    f"{REPOSITORY}:2.14.1-cuda13.0-runtime",  # a tag, not its alias
])
def test_a_name_that_is_no_alias_is_a_usage_error(real, alias):
    with pytest.raises(UnknownAlias, match=f"^{alias} is no alias of a tag of the matrix"):
        release.alias_owner(real, alias)


def test_to_names_the_aliases_own_tag_or_a_digest_of_its_repository(real):
    owner = release.alias_owner(real, f"{REPOSITORY}:v2.14-cuda13.0-jupyter")
    digest = "sha256:" + "ab" * 32
    assert release.named_digest(owner, digest) == f"{REPOSITORY}@{digest}"
    assert release.named_digest(owner, f"{REPOSITORY}@{digest}") == f"{REPOSITORY}@{digest}"
    assert release.named_digest(owner, owner.tag) is None  # the digest this engine pulled it at
    for wrong in (f"{REPOSITORY}:2.14.1-cuda13.0-runtime", f"elsewhere/pytorch-cuda@{digest}", "sha256:00"):
        with pytest.raises(UsageError, match=f"^--to {wrong}: "):
            release.named_digest(owner, wrong)
    with pytest.raises(PytorchCudaError, match="has no registry digest here: pull it first"):
        release.pulled_digest(FakeEngine(), owner.tag)


def test_locally_an_alias_moves_only_to_an_image_that_passed(m_fixture):
    (spec,) = specs_of(m_fixture, "12.1")
    engine = FakeEngine()
    assert release.alias_locally(engine, "sha256:1", spec, passed=False) == () and engine.tags == {}
    assert release.alias_locally(engine, "sha256:1", spec, passed=True) == spec.aliases
    assert engine.tags == {spec.aliases[0]: "sha256:1"}


# --- the engine's side: what a registry answers, and the docker CLI for both tools ---------------------

def _manifest_list(*platforms: str) -> str:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{i:064x}", "size": 1000,
         "platform": {"os": platform.split("/")[0], "architecture": platform.split("/")[1]}}
        for i, platform in enumerate(platforms)]})


ONE_IMAGE = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []})


def test_the_platforms_an_index_lists():
    assert listed_platforms(_manifest_list("linux/amd64", "linux/arm64")) == BOTH
    # BuildKit's attestation manifests are listed as unknown/unknown: no platform
    assert listed_platforms(_manifest_list("linux/amd64", "unknown/unknown")) == (matrix.AMD64,)
    assert listed_platforms(ONE_IMAGE) is None
    assert release.missing_platforms(None, BOTH) == list(BOTH) and release.missing_platforms(None, (matrix.AMD64,)) == []


FAKE_DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:2] == ["buildx", "version"]:
    sys.exit(0 if os.environ.get("FAKE_BUILDX") else 1)
if "inspect" in args:
    reference = args[-1]
    answers = json.loads(os.environ["FAKE_ANSWERS"])
    if reference not in answers:
        print(f"no such manifest: {{reference}}", file=sys.stderr)
        sys.exit(1)
    print(answers[reference])
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` on PATH that logs its arguments and answers inspects from `answers`; returns (answers, calls)."""
    (tmp_path / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (tmp_path / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    answers: dict[str, str] = {}

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def use(buildx: bool) -> None:
        monkeypatch.setenv("FAKE_ANSWERS", json.dumps(answers))
        if buildx:
            monkeypatch.setenv("FAKE_BUILDX", "1")
    return answers, calls, use


def test_with_buildx_the_engine_uses_imagetools_and_says_so_under_v(fake_docker, caplog):
    answers, calls, use = fake_docker
    index = f"{REPOSITORY}@sha256:{'ab' * 32}"
    answers[index] = _manifest_list("linux/amd64", "linux/arm64")
    use(buildx=True)
    engine = DockerEngine(client=None)
    with caplog.at_level(logging.INFO, logger="pytorch_cuda"):
        assert engine.index_platforms(index) == BOTH
        engine.create_index(f"{REPOSITORY}:v2.14-cuda13.0-runtime", [index])
    assert engine.index_tool() == IMAGETOOLS
    assert calls() == [["buildx", "version"], ["buildx", "imagetools", "inspect", "--raw", index],
                       ["buildx", "imagetools", "create", "--tag", f"{REPOSITORY}:v2.14-cuda13.0-runtime", index]]
    assert [r.getMessage() for r in caplog.records] == ["registry indexes through `docker buildx imagetools`"]


def test_without_buildx_docker_manifest_makes_the_index_and_an_index_source_gives_its_images(fake_docker, caplog):
    answers, calls, use = fake_docker
    registry = "127.0.0.1:5000/team"  # loopback: plain HTTP, as the engine speaks to it
    tag, alias = f"{registry}/pytorch-cuda:2.14.1-cuda13.0-runtime", f"{registry}/pytorch-cuda:v2.14-cuda13.0-runtime"
    answers.update({f"{tag}-amd64": ONE_IMAGE, f"{tag}-arm64": ONE_IMAGE, tag: _manifest_list("linux/amd64", "linux/arm64")})
    use(buildx=False)
    engine = DockerEngine(client=None)
    with caplog.at_level(logging.INFO, logger="pytorch_cuda"):
        engine.create_index(tag, [f"{tag}-amd64", f"{tag}-arm64"])
        engine.create_index(alias, [tag])
    members = [f"{registry}/pytorch-cuda@sha256:{i:064x}" for i in range(2)]
    assert calls() == [
        ["buildx", "version"],
        ["manifest", "inspect", "--insecure", f"{tag}-amd64"], ["manifest", "inspect", "--insecure", f"{tag}-arm64"],
        ["manifest", "create", "--amend", "--insecure", tag, f"{tag}-amd64", f"{tag}-arm64"],
        ["manifest", "push", "--purge", "--insecure", tag],
        ["manifest", "inspect", "--insecure", tag],
        ["manifest", "create", "--amend", "--insecure", alias, *members],
        ["manifest", "push", "--purge", "--insecure", alias],
    ]
    assert engine.index_tool() == MANIFEST
    assert [r.getMessage() for r in caplog.records] == [
        "registry indexes through `docker manifest` (the docker CLI here has no buildx)"]


def test_a_failed_docker_command_is_one_line_naming_the_step(fake_docker):
    _, _, use = fake_docker
    use(buildx=False)
    with pytest.raises(PushFailed) as raised:
        DockerEngine(client=None).create_index(f"{REPOSITORY}:x", [f"{REPOSITORY}:x-arm64"])
    assert str(raised.value) == (f"index {REPOSITORY}:x: `docker manifest inspect` failed: no such manifest: "
                                 f"{REPOSITORY}:x-arm64")
    with pytest.raises(RegistryError, match=r"^r.example/team/pytorch-cuda:y in its registry: `docker manifest inspect`"):
        DockerEngine(client=None).index_platforms(f"{REPOSITORY}:y")


class _Api:
    def inspect_image(self, reference):
        return {"RepoDigests": ["other.example/pytorch-cuda@sha256:" + "cd" * 32, f"{REPOSITORY}@sha256:" + "ab" * 32]}


class _Client:
    api = _Api()


def test_the_digest_pulled_is_the_one_of_the_tags_own_repository():
    engine = DockerEngine(_Client())
    assert engine.repo_digest(f"{REPOSITORY}:2.14.1-cuda13.0-runtime") == f"{REPOSITORY}@sha256:{'ab' * 32}"
    assert engine.repo_digest("elsewhere.example/pytorch-cuda:x") is None
