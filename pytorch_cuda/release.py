"""Releasing images: publish (audit, then push), multi-platform indexes, and alias moves.

The release rules, in one implementation: build.py's --push (after a build), --publish, --index and
--move-alias call them, and so does the GitHub workflow, whose every push, index and alias move is one
build.py call. Unit-tested with a fake engine (tests/test_release.py).

- Nothing is pushed unless every image of the set is here, built and passed verify (where it ran) and
  the audit (where asked): a registry never holds half a release.
- A tag of several platforms is, in the registry, one image per platform (`<tag>-amd64`, `<tag>-arm64`)
  and the plain tag an index of them, made once all are there, so `docker pull` of it picks the
  machine's platform. An amd64 image published alone holds the plain tag until its index is made.
- An alias moves (in the engine) only to an image that passed verify, and (in a registry) only to a
  digest that holds every platform of its tag, so a Grace machine pulling the alias never loses its
  arm64 image; otherwise it stays where it was.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from . import audit, plan, refs
from .errors import IndexIncomplete, NothingPushed, PushFailed, PytorchCudaError, UnknownAlias, UsageError
from .matrix import AMD64, ARM64, Matrix
from .plan import ImageSpec

if TYPE_CHECKING:
    from .engine import Engine

Say = Callable[[str], None]
Auditor = Callable[[str], audit.AuditReport]  # an image reference -> its audit
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Upload:
    """One image of this engine and the names it goes to the registry under."""

    image: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    """A name that becomes, in the registry, an index of one image per platform."""

    name: str
    members: tuple[tuple[str, str], ...]  # (platform, the member's name), in the matrix's platform order

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(platform for platform, _ in self.members)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(member for _, member in self.members)


@dataclass(frozen=True)
class Release:
    """What publishing a set of images does: its uploads, then its indexes."""

    uploads: tuple[Upload, ...]
    indexes: tuple[Index, ...] = ()


def suffixed(name: str, platform: str) -> str:
    """The name of a tag's one-platform image in the registry: 'x:2.14.1-cuda13.0-runtime-amd64'."""
    return f"{name}-{plan.architecture_of(platform)}"


def release_of(specs: Sequence[ImageSpec], carried: Mapping[str, Sequence[str]] | None = None) -> Release:
    """What publishing `specs` pushes, and the indexes made after. `carried`: tag -> the names its image
    has here (its tag, and the aliases moved to it after verify); without it, each tag alone.

    With both platforms of a tag in the set, the amd64 image goes as `<name>-amd64` and the plain name
    becomes the index of it and `<name>-arm64`. The amd64 image of a multi-platform tag published alone
    goes as `<name>` and `<name>-amd64`: the plain name works at once, and --index makes it the index
    once the arm64 image is in the registry too (published from another machine)."""
    def names_of(spec: ImageSpec) -> tuple[str, ...]:
        return tuple(carried.get(spec.tag, ())) if carried is not None else (spec.tag,)

    arm64 = {(s.repository, s.stem, s.variant): s for s in specs if s.platform == ARM64}
    uploads, indexes = [], []
    for spec in specs:
        names = names_of(spec)
        partner = arm64.get((spec.repository, spec.stem, spec.variant)) if spec.platform == AMD64 else None
        if partner is not None:
            counterpart = dict(zip((spec.tag, *spec.aliases), (partner.tag, *partner.aliases)))
            indexes += [Index(name, ((AMD64, suffixed(name, AMD64)), (ARM64, counterpart[name])))
                        for name in names if counterpart.get(name) in names_of(partner)]
            names = tuple(suffixed(name, AMD64) for name in names)
        elif spec.platform == AMD64 and len(spec.build.platforms) > 1:
            names = (*names, *(suffixed(name, AMD64) for name in names))
        uploads.append(Upload(spec.tag, names))
    return Release(tuple(uploads), tuple(indexes))


def _audited(report: audit.AuditReport, say: Say) -> bool:
    for finding in report.findings:
        say(f"    {finding.source} {finding.package} {finding.installed}: fixed in {finding.fixed}")
    for line in report.unavailable:
        say(f"    could not audit: {line}")
    checked = ", ".join(f"{count} {source}" for source, count in sorted(report.checked.items())) or "nothing"
    verdict = "clean" if report.clean else f"{len(report.findings)} finding(s), {len(report.unavailable)} source(s) not asked"
    say(f"audit {report.image}: {verdict} ({checked} packages checked)")
    return report.clean


def publish(engine: Engine, release: Release, say: Say, auditor: Auditor | None = None,
            not_passed: Sequence[str] = ()) -> None:
    """Push every upload, then make every index. Before the first push, NothingPushed when an image of
    the set did not build or pass verify (`not_passed`), is not here, or (with `auditor`) is not clean.
    A registry's refusal stops it there (PushFailed): no index is made after it."""
    if not_passed:
        raise NothingPushed(f"nothing pushed: not every image built and passed verify ({', '.join(not_passed)})")
    missing = [upload.image for upload in release.uploads if not engine.exists(upload.image)]
    if missing:
        raise NothingPushed(f"nothing pushed: {missing[0]} is not here"
                            f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}: build it first")
    if auditor is not None:
        failed = [upload.image for upload in release.uploads if not _audited(auditor(upload.image), say)]
        if failed:
            raise NothingPushed(f"nothing pushed: {len(failed)} of {len(release.uploads)} images did not pass the "
                                f"audit ({', '.join(failed)})")
    for done, upload in enumerate(release.uploads):
        other_names = tuple(name for name in upload.names if name != upload.image)
        if other_names:
            engine.tag(upload.image, other_names)
        say(f"pushing {' '.join(upload.names)}")
        try:
            engine.push(upload.names)
        except PushFailed as err:
            raise PushFailed(f"{err} ({done} of {len(release.uploads)} images pushed before it; no index made)") from None
    for index in release.indexes:
        make_index(engine, index, say)


def missing_platforms(listed: tuple[str, ...] | None, wanted: Sequence[str]) -> list[str]:
    """The platforms of `wanted` that `listed` (an index's platforms; None for one image) lacks. One
    image stands for a tag of one platform, never for more."""
    if listed is None:
        return [] if len(wanted) <= 1 else list(wanted)
    return [platform for platform in wanted if platform not in listed]


def _described(listed: tuple[str, ...] | None) -> str:
    return "one image" if listed is None else f"an index of {', '.join(listed) or 'nothing'}"


def make_index(engine: Engine, index: Index, say: Say) -> None:
    """Make `index.name` in its registry the index of its members (there already), and check it lists
    every platform it was made of."""
    say(f"index {index.name}: {' + '.join(index.sources)}")
    engine.create_index(index.name, index.sources)
    listed = engine.index_platforms(index.name)
    if missing_platforms(listed, index.platforms):
        raise IndexIncomplete(f"index {index.name} was made of {', '.join(index.sources)} but is {_described(listed)}: "
                              f"a member is not the one-platform image its name says")


def move_alias(engine: Engine, alias: str, target: str, platforms: Sequence[str], say: Say) -> None:
    """Point `alias` at `target` (a digest reference in the registry) only when `target` holds every one of
    `platforms`; else IndexIncomplete, and the alias stays where it was."""
    listed = engine.index_platforms(target)
    if missing_platforms(listed, platforms):
        raise IndexIncomplete(f"{target} is {_described(listed)}, not an index of {', '.join(platforms)} (did the "
                              f"arm64 build or the index fail?): {alias} stays where it is")
    say(f"moving {alias} to {target} ({_described(listed)})")
    engine.create_index(alias, [target])


def alias_locally(engine: Engine, image_id: str, spec: ImageSpec, passed: bool) -> tuple[str, ...]:
    """Move the short aliases of `spec` in the engine to `image_id` only when it built and passed verify
    (where verify ran); the aliases moved."""
    if not passed or not spec.aliases:
        return ()
    engine.tag(image_id, spec.aliases)
    return spec.aliases


def alias_owner(m: Matrix, alias: str) -> ImageSpec:
    """The image whose short alias `alias` is ('[REGISTRY/]pytorch-cuda:v2.14-cuda13.0-runtime'), among the
    tags of the matrix on each platform they have; UnknownAlias when none has it."""
    repository = refs.split(alias)[0]
    registry = repository.rpartition("/")[0] or None
    if refs.repository_name(alias) == plan.REPOSITORY:
        for build in m.newest_per_tag():
            if not m.is_newest_of_minor(build):
                continue
            for python in (p for p in build.pythons if p in m.bases):
                for platform in build.platforms:
                    for variant in plan.VARIANTS:
                        try:  # a variant some platform has no image of (CUDA 12's devel on arm64) has no alias
                            (spec,) = plan.image_specs(m, [build], variants=(variant,), python=python,
                                                       registry=registry, platform=platform)
                        except UsageError:
                            continue
                        if alias in spec.aliases:
                            return spec
    raise UnknownAlias(f"{alias} is no alias of a tag of the matrix: an alias is '[REGISTRY/]{plan.REPOSITORY}:"
                       f"v<torch minor>-cuda<CUDA>-<variant>', of the newest patch of a minor (`build.py --all "
                       f"--ci-matrix` gives each tag's)")


def alias_platforms(spec: ImageSpec) -> tuple[str, ...]:
    """What the alias of `spec` must hold: every platform of its tag when the tag is the plain one (an
    index where the release has several), else that one platform (`-arm64`)."""
    return spec.build.platforms if spec.platform == AMD64 else (spec.platform,)


def named_digest(owner: ImageSpec, to: str) -> str | None:
    """The digest reference `--to` names ('REPO@sha256:...', or 'sha256:...' in the alias's repository); None
    when it is the alias's own tag (its digest is then the one this engine pulled: pulled_digest). Any
    other tag or repository is a UsageError."""
    repository = refs.split(owner.tag)[0]
    if "@" in to or to.startswith("sha256:"):
        named, _, digest = to.rpartition("@")
        if named not in ("", repository) or not _DIGEST.fullmatch(digest):
            raise UsageError(f"--to {to}: give a digest (sha256:<64 hex>) of {repository}, where the alias is")
        return f"{repository}@{digest}"
    if to != owner.tag:
        raise UsageError(f"--to {to}: {owner.aliases[0]} is the alias of {owner.tag}; give that tag or a digest")
    return None


def pulled_digest(engine: Engine, tag: str) -> str:
    """The registry digest this engine pulled `tag` at (and verify ran in), whatever the tag names now."""
    pulled = engine.repo_digest(tag)
    if pulled is None:
        raise PytorchCudaError(f"{tag} has no registry digest here: pull it first (the alias moves to the image "
                               f"pulled and verified)")
    return pulled


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def publish_command(specs: Sequence[ImageSpec]) -> int:
    """`build.py ... --publish`: audit the images of the selection built here, then push them all."""
    from .engine import connect

    engine = connect()
    release = release_of(specs)
    publish(engine, release, _say, auditor=lambda reference: audit.audit_image(engine, reference))
    print(f"published {len(release.uploads)} images"
          + (f" and {len(release.indexes)} indexes" if release.indexes else ""))
    return 0


def index_command(specs: Sequence[ImageSpec]) -> int:
    """`build.py ... --platform linux/amd64,linux/arm64 --index`: each tag of the selection made the index of
    its one-platform images, pushed before (from other machines)."""
    from .engine import connect

    indexes = release_of(specs).indexes
    if not indexes:
        raise UsageError("--index joins the platforms of a tag: select both (--platform linux/amd64,linux/arm64)")
    engine = connect()
    for index in indexes:
        make_index(engine, index, _say)
    print(f"made {len(indexes)} indexes")
    return 0


def move_alias_command(m: Matrix, alias: str, to: str) -> int:
    """`build.py --move-alias ALIAS --to REF`: the alias to the verified digest, when it holds every platform."""
    from .engine import connect

    owner = alias_owner(m, alias)
    target = named_digest(owner, to)
    engine = connect()
    move_alias(engine, alias, target or pulled_digest(engine, to), alias_platforms(owner), _say)
    print(f"moved {alias}")
    return 0
