"""`python build.py`: arguments to one call each; errors become one line and an exit code here, nowhere else.

What needs Docker (pipeline, engine) is imported only by the commands that use it: --list, --dry-run,
--render, --ci-matrix, --k8s-job, --preflight and `--cuda auto` work without the SDK or a daemon."""
from __future__ import annotations

import argparse
import json
import logging
import platform as _platform
import sys
import time
from pathlib import Path

from . import ca, matrix, plan, render, tables, wheelcache
from .errors import MatrixError, NoCompatibleTag, PytorchCudaError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
AUTO = "auto"  # --cuda auto: the newest tag that fits this host's GPUs and driver


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like docker's CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"build.py: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="build.py", description="Render, build and tag PyTorch+CUDA images (runtime, jupyter, ssh).",
                epilog="Examples: build.py --cuda 12.1 | build.py --cuda 12.4 --torch 2.5 --variant jupyter")
    pick = p.add_argument_group("what to build")
    pick.add_argument("--cuda", help="CUDA version, e.g. 12.1: picks the newest torch built for it; 'auto': the "
                                     "newest tag with kernels for this host's GPUs that its driver runs (nvidia-smi)")
    pick.add_argument("--torch", help="torch release (2.4.1) or minor (2.4)")
    pick.add_argument("--python", help="Python version of the image (default: the base image's, 3.11)")
    pick.add_argument("--variant", action="append", choices=plan.VARIANTS,
                      help=f"repeatable; default: {', '.join(plan.DEFAULT_VARIANTS)} (--render, --ci-matrix: all)")
    pick.add_argument("--all", action="store_true", help="every tag of the matrix")
    pick.add_argument("--platform",
                      help="linux/amd64 (default; with --cuda auto: this host's), linux/arm64, or both comma-separated; "
                           "arm64 tags end in -arm64 (built through QEMU on an x86_64 machine)")
    where = p.add_argument_group("where from, where to")
    where.add_argument("--base", help="base image (default from images/bases.json, e.g. debian:bookworm-slim)")
    where.add_argument("--bootstrap-base", action="store_true", help="make the base image from Debian packages now")
    where.add_argument("--debian-mirror", default="http://deb.debian.org/debian", help="mirror for --bootstrap-base")
    where.add_argument("--registry", help="registry prefix for tags, e.g. ghcr.io/acme")
    where.add_argument("--push", action="store_true", help="push the tags after every build succeeded (and passed "
                                                           "--verify, when given); no audit: --publish audits")
    where.add_argument("--index-url", help="pip index (a PyPI mirror); default: the matrix's index for that build")
    where.add_argument("--ca-cert", help="CA bundle for pip inside the build (default: $PIP_CERT, $SSL_CERT_FILE, "
                                         "$REQUESTS_CA_BUNDLE); only the builder stage sees it")
    release = p.add_argument_group("release (each one registry step; builds nothing: the GitHub workflow's calls)")
    release.add_argument("--publish", action="store_true",
                         help="audit the images of the selection built here (as --audit does), then push them all; "
                              "nothing is pushed unless every one is clean. Tags only: an alias moves by --move-alias. "
                              "The amd64 image of a tag that has arm64 too goes as <tag> and <tag>-amd64; with both "
                              "platforms selected, as <tag>-amd64 and <tag>-arm64, and <tag> becomes their index")
    release.add_argument("--index", action="store_true",
                         help="with --platform linux/amd64,linux/arm64: make each tag of the selection, in the registry, "
                              "the multi-platform index of its <tag>-amd64 and <tag>-arm64 images (pushed before)")
    release.add_argument("--move-alias", metavar="ALIAS",
                         help="point ALIAS ([REGISTRY/]pytorch-cuda:vX.Y-cudaA.B-VARIANT) at --to's digest, only when "
                              "that holds every platform of ALIAS's tag; otherwise ALIAS stays where it is")
    release.add_argument("--to", metavar="REF",
                         help="--move-alias: a digest (REPO@sha256:..., or sha256:...), or ALIAS's tag as this engine "
                              "pulled it: the digest pulled (and verified), whatever the tag names now")
    how = p.add_argument_group("how")
    how.add_argument("--dry-run", action="store_true", help="render and print the plan; needs no Docker")
    how.add_argument("--render", action="store_true", help="write the rendered Dockerfiles under images/ and exit")
    how.add_argument("--list", action="store_true", help="print the supported matrix and exit")
    how.add_argument("--matrix", type=Path, default=matrix.MATRIX_FILE, help=argparse.SUPPRESS)
    how.add_argument("--templates", type=Path, default=render.TEMPLATES_DIR, help=argparse.SUPPRESS)
    how.add_argument("--no-cache", action="store_true", help="build without the layer cache (the wheel cache still serves)")
    how.add_argument("--no-wheel-cache", action="store_true",
                     help="pip in the build downloads its wheels itself. Otherwise they are downloaded once (hashes "
                          "checked) into $PYTORCH_CUDA_WHEEL_CACHE (default ~/.cache/pytorch-cuda/wheels; delete it to "
                          "clear) and served to builds from 127.0.0.1:$PYTORCH_CUDA_WHEEL_CACHE_PORT (38741)")
    how.add_argument("--cpu-shares", type=int, metavar="N",
                     help="CPU weight of the builds' RUN steps beside other containers, as docker build's flag "
                          "(default 1024; lower it to build in the background). It orders containers only: the "
                          "daemon's own work (layer commits, pushes) is outside it")
    how.add_argument("--keep-going", action="store_true", help="after a failed image, build the rest")
    how.add_argument("--no-alias", action="store_true", help="do not apply the short vX.Y aliases (CI moves them)")
    how.add_argument("--ci-matrix", action="store_true", help="print the GitHub Actions strategy.matrix JSON and exit: one entry per "
                                                            "tag, each with its release's variants on its platform")
    how.add_argument("--verify", action="store_true", help="run `verify` inside each image built (with its GPUs)")
    how.add_argument("--preflight", metavar="TAG", nargs="?", const="",
                     help="say whether image TAG can use this host's GPUs (no container); without TAG, judge the "
                          "newest tag that fits them")
    how.add_argument("--sbom", metavar="TAG", help="print the CycloneDX bill of materials of image TAG")
    how.add_argument("--audit", metavar="TAG", help="Debian packages with security updates waiting, and Python "
                                                    "packages with known vulnerabilities, in image TAG")
    how.add_argument("-v", "--verbose", action="store_true", help="print the builder's full output")
    k8s = p.add_argument_group("kubernetes")
    k8s.add_argument("--k8s-job", metavar="TAG", help="print an Indexed Job + headless Service that runs `torchrun "
                                                      "... -m verify --distributed` of TAG on --nodes pods")
    k8s.add_argument("--nodes", type=int, metavar="N", help="--k8s-job: pods (nodes), one torchrun each")
    k8s.add_argument("--gpus-per-node", type=int, default=1, metavar="G", help="--k8s-job: GPUs (and ranks) per pod")
    return p


def parse_platforms(value: str) -> tuple[str, ...]:
    """'linux/amd64,linux/arm64' -> both, in the matrix's order; an unknown one is a usage error."""
    asked = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in asked if part not in matrix.PLATFORMS]
    if unknown or not asked:
        raise UsageError(f"unknown platform {unknown[0] if unknown else repr(value)}: images are built for "
                         f"{', '.join(matrix.PLATFORMS)}")
    return tuple(p for p in matrix.PLATFORMS if p in asked)


def for_this_host(m: matrix.Matrix, torch: str | None, python: str | None,
                  platforms: tuple[str, ...]) -> matrix.MatrixEntry:
    """`--cuda auto`: the newest build (of `torch`, with `python`, when given) that fits this host, said why
    on stderr (stdout stays the command's own: --ci-matrix prints JSON there)."""
    from . import recommend

    candidates = [b for b in m.newest_per_tag() if (not torch or torch in (b.torch, b.torch_minor))
                  and (not python or python in b.pythons)]
    if not candidates:
        m.resolve(torch=torch, python=python)  # raises the precise error
    try:
        choice = recommend.for_this_host(candidates, platforms)
    except NoCompatibleTag as err:
        raise NoCompatibleTag(f"--cuda auto: {err}; name a version instead (--cuda VERSION, see --list)") from None
    print(f"--cuda auto: {choice.reason}", file=sys.stderr)
    return choice.build


# The kernel's bounds for a cgroup's CPU weight (cpu.shares); the engine would clamp a value outside them.
CPU_SHARES_MIN, CPU_SHARES_MAX = 2, 262144


def check_release_flags(args: argparse.Namespace) -> None:
    """--publish, --index and --move-alias are one registry step each, never with a build or a plan."""
    asked = [flag for flag, on in (("--publish", args.publish), ("--index", args.index), ("--move-alias", args.move_alias),
                                   ("--push", args.push), ("--dry-run", args.dry_run), ("--render", args.render),
                                   ("--ci-matrix", args.ci_matrix)) if on]
    if len(asked) > 1 and asked[0] in ("--publish", "--index", "--move-alias"):
        raise UsageError(f"{asked[0]} is a step of its own: drop {asked[1]}")
    if (args.publish or args.index) and not args.registry:
        raise UsageError(f"{asked[0]} needs --registry (e.g. --registry ghcr.io/acme), as the build had")
    if bool(args.move_alias) != bool(args.to):
        raise UsageError("--move-alias ALIAS and --to REF go together")


def build(m: matrix.Matrix, specs: list[plan.ImageSpec], args: argparse.Namespace) -> int:
    from . import engine, pipeline
    from .progress import Progress, format_seconds

    ca_file = ca.find_ca_file(args.ca_cert)
    ca_value = ca.build_arg_for(ca_file)  # bad input fails before Docker is touched
    try:
        cache_port = wheelcache.port()
    except wheelcache.WheelCacheError as err:
        raise UsageError(str(err)) from None
    unlocked = next((spec for spec in specs if not spec.lock_digest), None)
    if unlocked is not None:
        raise MatrixError(f"{unlocked.tag} has no lock file ({render.repo_path(unlocked.lock)}): run `python -m "
                          f"pytorch_cuda.lock --torch {unlocked.build.torch} --cuda {unlocked.build.cuda}`")
    revision = pipeline.git_revision()
    options = pipeline.BuildOptions(
        no_cache=args.no_cache, cpu_shares=args.cpu_shares, keep_going=args.keep_going, verify=args.verify,
        move_aliases=not args.no_alias, push=args.push, bootstrap_base=args.bootstrap_base, debian_mirror=args.debian_mirror,
        index_url=args.index_url, ca_value=ca_value, ca_file=ca_file, templates=args.templates,
        wheel_cache=None if args.no_wheel_cache else wheelcache.cache_dir(), wheel_cache_port=cache_port,
        labels={"org.opencontainers.image.revision": revision} if revision else {})
    started = time.monotonic()
    results = pipeline.run(engine.connect(), m, specs, options, Progress(verbose=args.verbose))
    print(tables.summary(results))
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} images built in "
          f"{format_seconds(time.monotonic() - started)}")
    return EXIT_FAILED if failed else EXIT_OK


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.push and not args.registry:
        raise UsageError("--push needs --registry (e.g. --registry ghcr.io/acme)")
    if args.cpu_shares is not None and not CPU_SHARES_MIN <= args.cpu_shares <= CPU_SHARES_MAX:
        raise UsageError(f"--cpu-shares {args.cpu_shares}: a weight from {CPU_SHARES_MIN} to {CPU_SHARES_MAX} "
                         "(1024 is every container's default)")
    check_release_flags(args)
    if args.verbose:  # what the package logs at INFO (e.g. which docker tool makes indexes) shows too
        logging.getLogger("pytorch_cuda").setLevel(logging.INFO)
    if args.preflight is not None:
        from . import preflight
        return preflight.command(args.preflight or None)
    if args.sbom or args.audit:
        from . import audit
        return audit.sbom_command(args.sbom) if args.sbom else audit.audit_command(args.audit)
    if args.k8s_job or args.nodes is not None:
        if not (args.k8s_job and args.nodes is not None):
            raise UsageError("--k8s-job TAG and --nodes N go together")
        from . import k8s

        print(k8s.render_verify_job(k8s.VerifyJob(args.k8s_job, args.nodes, args.gpus_per_node)), end="")
        return EXIT_OK
    m = matrix.load(args.matrix)
    if args.list:
        print(tables.matrix_table(m))
        return EXIT_OK
    if args.move_alias:
        from . import release
        return release.move_alias_command(m, args.move_alias, args.to)
    if args.platform is None and args.cuda == AUTO:
        # The tag is for this host's GPUs: on a GH200 or GB10 (aarch64) that means its arm64 images.
        from .preflight import host_platform

        args.platform = host_platform(_platform.machine())
    platforms = parse_platforms(args.platform or matrix.AMD64)
    if args.cuda == AUTO:
        if args.all:
            raise UsageError("--cuda auto picks one tag for this host: drop --all")
        chosen = for_this_host(m, args.torch, args.python, platforms)
        args.cuda, args.torch = chosen.cuda, chosen.torch
    beyond_amd64 = platforms != (matrix.AMD64,)
    if args.render and beyond_amd64:
        raise UsageError("--render writes the committed files, which are linux/amd64's: drop --platform")
    builds = m.select(cuda=args.cuda, torch=args.torch, python=args.python, every_tag=args.all)
    if beyond_amd64 and args.all:  # every tag that has wheels for all the platforms asked
        builds = [b for b in builds if all(p in b.platforms for p in platforms)]
    every: tuple[str, ...] = plan.VARIANTS if args.render or args.ci_matrix else plan.DEFAULT_VARIANTS
    specs = [spec for platform in platforms
             for spec in plan.image_specs(m, builds, variants=tuple(args.variant or every), python=args.python,
                                          base_image=args.base, registry=args.registry, platform=platform)]
    if args.publish or args.index:
        from . import release
        return release.publish_command(specs) if args.publish else release.index_command(specs)
    if args.ci_matrix:
        print(json.dumps(plan.ci_matrix(specs), separators=(",", ":")))
    elif args.render:
        print(f"rendered {len(specs)} Dockerfiles; {len(render.write_rendered(m, specs))} files changed")
    elif args.dry_run:
        for spec in specs:  # rendering is part of the plan: a template error shows here too
            render.render_dockerfile(spec, m.variant_packages.get(spec.variant, ()), args.templates)
        print(tables.plan_table(specs))
    else:
        return build(m, specs, args)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(argv)
    except PytorchCudaError as err:
        print(f"build.py: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `build.py --list | head`
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("build.py: interrupted; no tag was applied to an unfinished image", file=sys.stderr)
        return 130
