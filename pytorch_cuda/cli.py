"""`python build.py`: arguments to calls. Errors become one line and an exit code here, nowhere else."""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from . import ca, matrix, plan, render
from .errors import BuildFailed, MatrixError, PytorchCudaError, UsageError
from .progress import Progress, Result, format_seconds, summary, table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like docker's CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"build.py: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="build.py",
        description="Render, build and tag PyTorch+CUDA images (runtime, jupyter, ssh).",
        epilog="Examples: build.py --cuda 12.1 | build.py --cuda 12.4 --torch 2.5 --variant jupyter | build.py --list",
    )
    pick = p.add_argument_group("what to build")
    pick.add_argument("--cuda", help="CUDA version, e.g. 12.1: picks the newest torch built for it")
    pick.add_argument("--torch", help="torch release (2.4.1) or minor (2.4)")
    pick.add_argument("--python", help="Python version of the image (default: the base image's, 3.11)")
    pick.add_argument("--variant", action="append", choices=plan.VARIANTS, help="repeatable; default: all three")
    pick.add_argument("--all", action="store_true", help="every tag of the matrix")
    where = p.add_argument_group("where from, where to")
    where.add_argument("--base", help="base image (default from images/bases.json, e.g. debian:bookworm-slim)")
    where.add_argument("--bootstrap-base", action="store_true",
                       help="make the base image from Debian packages now (done anyway when a pull fails)")
    where.add_argument("--debian-mirror", default="http://deb.debian.org/debian", help="mirror for --bootstrap-base")
    where.add_argument("--registry", help="registry prefix for tags, e.g. ghcr.io/acme")
    where.add_argument("--push", action="store_true", help="push the tags after every build succeeded")
    where.add_argument("--index-url", help="pip index (a PyPI mirror); default: the matrix's index for that build")
    where.add_argument("--ca-cert", help="CA bundle for pip inside the build (default: $PIP_CERT, $SSL_CERT_FILE, "
                                         "$REQUESTS_CA_BUNDLE); only the builder stage sees it")
    how = p.add_argument_group("how")
    how.add_argument("--dry-run", action="store_true", help="render and print the plan; needs no Docker")
    how.add_argument("--render", action="store_true", help="write the rendered Dockerfiles under images/ and exit")
    how.add_argument("--list", action="store_true", help="print the supported matrix and exit")
    how.add_argument("--matrix", type=Path, default=matrix.MATRIX_FILE, help=argparse.SUPPRESS)
    how.add_argument("--templates", type=Path, default=render.TEMPLATES_DIR, help=argparse.SUPPRESS)
    how.add_argument("--no-cache", action="store_true", help="build without the layer cache")
    how.add_argument("--keep-going", action="store_true", help="after a failed image, build the rest")
    how.add_argument("--no-alias", action="store_true", help="do not apply the short vX.Y alias tags (CI moves them "
                                                             "only after verify passed)")
    how.add_argument("--ci-matrix", action="store_true", help="print the GitHub Actions strategy.matrix JSON (one "
                                                              "entry per tag; --variant filters) and exit")
    how.add_argument("--verify", action="store_true", help="run `verify` inside each image built (with GPUs when the "
                                                           "engine has the nvidia runtime)")
    how.add_argument("--preflight", metavar="TAG", help="say whether image TAG can use this host's GPUs, before "
                                                        "starting any container")
    how.add_argument("-v", "--verbose", action="store_true", help="print the builder's full output")
    k8s = p.add_argument_group("kubernetes")
    k8s.add_argument("--k8s-job", metavar="TAG", help="print an Indexed Job + headless Service that runs `torchrun "
                                                      "... -m verify --distributed` of TAG on --nodes pods; needs no "
                                                      "Docker (the cluster pulls TAG)")
    k8s.add_argument("--nodes", type=int, metavar="N", help="--k8s-job: pods (nodes), one torchrun each")
    k8s.add_argument("--gpus-per-node", type=int, default=1, metavar="G", help="--k8s-job: GPUs (and ranks) per "
                                                                               "pod (default 1)")
    return p


# -- commands ---------------------------------------------------------------------------------

def list_matrix(m: matrix.Matrix) -> str:
    """The matrix as the runtime images hold it: library versions are the locks' exact ones."""
    rows = []
    for spec in plan.plan(m, m.newest_per_tag(), variants=("runtime",)):
        b, shown = spec.build, render.image_manifest(spec)
        rows.append([
            b.torch, b.cuda, shown.cudnn or "-", shown.nccl or "-", shown.cublas or "-", " ".join(b.pythons),
            b.torchvision or "-", b.torchaudio or "-", b.driver_floor, b.toolkit_driver,
            ",".join(a.replace("sm_", "") for a in (b.archs or [])) or "?", b.index,
        ])
    return table(["TORCH", "CUDA", "CUDNN", "NCCL", "CUBLAS", "PYTHON", "VISION", "AUDIO", "DRIVER FLOOR",
                  "CUDA DRIVER", "ARCHS", "INDEX"], rows)


def describe_plan(specs: list[plan.ImageSpec]) -> str:
    rows = [[s.tag, " ".join(s.aliases) or "-", s.build.torch, s.build.cuda, s.build.cudnn, s.build.nccl, s.python,
             s.base_image if s.variant == "runtime" else s.runtime_tag, render.repo_path(s.dockerfile)]
            for s in specs]
    return table(["TAG", "ALIASES", "TORCH", "CUDA", "CUDNN", "NCCL", "PYTHON", "FROM", "DOCKERFILE"], rows)


def select_builds(m: matrix.Matrix, args: argparse.Namespace) -> list[matrix.Build]:
    if args.all:
        builds = m.newest_per_tag()
        if args.cuda or args.torch:
            builds = [b for b in builds if (not args.cuda or b.cuda == args.cuda)
                      and (not args.torch or args.torch in (b.torch, b.torch_minor))]
            if not builds:
                m.resolve(cuda=args.cuda, torch=args.torch)  # raises the precise error
        return builds
    if not (args.cuda or args.torch):
        raise UsageError("say what to build: --cuda VERSION, --torch VERSION or --all (see --list)")
    return [m.resolve(cuda=args.cuda, torch=args.torch, python=args.python)]


def ci_matrix(specs: list[plan.ImageSpec]) -> dict:
    """strategy.matrix for the workflow: one entry per tag, from the same plan every build uses."""
    return {"include": [
        {
            "tag": spec.tag.split(":", 1)[1], "stem": spec.stem, "variant": spec.variant,
            "torch": spec.build.torch, "cuda": spec.build.cuda, "python": spec.python,
            "alias": spec.aliases[0].split(":", 1)[1] if spec.aliases else "",
            "build_args": f"--torch {spec.build.torch} --cuda {spec.build.cuda} --python {spec.python}",
        }
        for spec in specs
    ]}


def write_rendered(m: matrix.Matrix, specs: list[plan.ImageSpec]) -> list[Path]:
    written = []
    for spec in specs:
        for path, text in render.rendered_files(spec, m.variant_packages.get(spec.variant, ())).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                written.append(path)
    return written


def context_files(spec: plan.ImageSpec, dockerfile: str) -> dict[str, bytes]:
    """The generated files of one build context, at the repository paths its Dockerfile COPYs."""
    return {
        render.repo_path(spec.dockerfile): dockerfile.encode(),
        render.repo_path(spec.manifest): render.render_manifest(spec).encode(),
        render.repo_path(spec.constraints): render.render_constraints(spec).encode(),
        render.repo_path(spec.lock): spec.lock.read_bytes(),
    }


def build_args(spec: plan.ImageSpec, dockerfile: str, index_url: str | None, ca_value: str) -> dict[str, str]:
    """Only the build args this Dockerfile declares, so the builder never warns of unused ones."""
    from .docker_build import declared_args

    offered = {
        "BASE_IMAGE": spec.base_image,
        "RUNTIME_IMAGE": spec.runtime_tag,
        # A variant's own packages come from PyPI (or the mirror given), not from a per-CUDA index.
        "PIP_INDEX_URL": index_url or (spec.build.index_url if spec.variant == "runtime" else ""),
        "PIP_CA_CERT": ca_value,
    }
    return {name: value for name, value in offered.items() if name in declared_args(dockerfile) and value}


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=matrix.REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def build_all(m: matrix.Matrix, specs: list[plan.ImageSpec], args: argparse.Namespace, ca_value: str) -> list[Result]:
    # Docker is imported here so --list, --dry-run and --render work without the SDK or a daemon.
    from . import baseimage, containers, docker_build

    client = docker_build.connect()
    progress = Progress(verbose=args.verbose)
    for base in sorted({s.base_image for s in specs if s.variant == "runtime"}):
        how = baseimage.ensure_base_image(client, base, make=args.bootstrap_base, mirror=args.debian_mirror,
                                          say=progress.say)
        if how != "local":
            progress.say(f"base image {base}: {how}")
    revision = git_revision()
    labels = {"org.opencontainers.image.revision": revision} if revision else {}

    results: list[Result] = []
    failed_runtimes: set[str] = set()
    for index, spec in enumerate(specs, 1):
        if spec.variant != "runtime" and spec.runtime_tag in failed_runtimes:
            results.append(Result(spec.tag, "skipped", note=f"{spec.runtime_tag} failed"))
            continue
        dockerfile = render.render_dockerfile(spec, m.variant_packages.get(spec.variant, ()), args.templates)
        files = context_files(spec, dockerfile)
        buildargs = build_args(spec, dockerfile, args.index_url, ca_value)
        progress.start(index, len(specs), spec.tag)
        try:
            image_id = docker_build.build_image(
                client, spec.tag, docker_build.make_context(files), render.repo_path(spec.dockerfile), buildargs,
                nocache=args.no_cache, labels=labels,
                events=docker_build.BuildEvents(on_step=progress.step, on_line=progress.line),
            )
        except BuildFailed as err:
            progress.finish("FAILED")
            for line in err.log_tail[-12:]:
                progress.say(f"    | {line}")
            results.append(Result(spec.tag, "failed", progress.elapsed(), note=err.message[:80]))
            if spec.variant == "runtime":
                failed_runtimes.add(spec.tag)
            if not args.keep_going:
                progress.say(f"error: {err}")
                results += [Result(s.tag, "skipped", note="not started (no --keep-going)") for s in specs[index:]]
                return results
            continue
        # Tags only now: a failed build never leaves a tag pointing at a half-made image.
        docker_build.tag_image(client, image_id, (spec.tag,))
        progress.finish("built")
        result = Result(spec.tag, "built", progress.elapsed(), docker_build.image_size(client, spec.tag))
        if args.verify:
            code, output = containers.run_verify(client, spec.tag)
            result.verify = "passed" if code == 0 else f"FAILED (exit {code})"
            progress.say(f"verify {spec.tag}: {result.verify}")
            if code != 0:
                for line in output.strip().splitlines()[-12:]:
                    progress.say(f"    | {line}")
        # The short alias is what users pull by habit: it moves only to an image that passed verify.
        if not args.no_alias and not result.verify.startswith("FAILED"):
            docker_build.tag_image(client, image_id, spec.aliases)
            result.aliases = spec.aliases
        results.append(result)
    if args.push and all(r.status == "built" and not r.verify.startswith("FAILED") for r in results):
        for result in results:
            progress.say(f"pushing {result.tag} {' '.join(result.aliases)}")
            docker_build.push(client, (result.tag, *result.aliases))
    elif args.push:
        progress.say("nothing pushed: not every image built and passed verify")
    return results


def preflight_command(ref: str) -> int:
    """Judge image `ref` on this host: from its labels when it is here, else from the matrix's
    committed manifest of that tag (so a user can ask before pulling 6-10 GB)."""
    from verify import manifest as contract

    from . import containers, docker_build, preflight
    from .errors import DockerUnavailable, PytorchCudaError

    runtimes: tuple[str, ...] = ()
    cdi_dirs = preflight.CDI_DIRS
    docker_problem, image = "", None
    try:
        client = docker_build.connect(timeout=30)
        runtimes = containers.runtimes(client)
        cdi_dirs = tuple(dict.fromkeys((*preflight.CDI_DIRS, *containers.cdi_spec_dirs(client))))
        image = contract.from_labels(containers.labels_of(client, ref), ref)
    except DockerUnavailable:
        docker_problem = "the Docker daemon cannot be reached (start it, or set DOCKER_HOST)"
    except PytorchCudaError:  # not here: a tag of the matrix can still be judged from its manifest
        pass
    if image is None and (committed := plan.committed_manifest(ref)) is not None:
        image = contract.Manifest.from_dict(json.loads(committed.read_text()), render.repo_path(committed))
        print(f"{ref} is not present here: judging the tag from {render.repo_path(committed)}")
    elif image is None and docker_problem:
        raise DockerUnavailable(f"{docker_problem}, and {ref} is not a tag of the matrix")
    elif image is None:
        raise PytorchCudaError(f"image {ref} is not here and is not a tag of the matrix: build it (build.py) or "
                               "pull it first")
    facts = preflight.host_facts(runtimes, cdi_dirs, docker_problem=docker_problem)
    findings = preflight.evaluate(image, facts)
    print(table(["CHECK", "FINDING"], [[f.status, f.message] for f in findings]))
    failed = [f for f in findings if f.status == "fail"]
    print(f"{ref}: " + ("can use this host's GPUs" if not failed else f"cannot use this host's GPUs ({len(failed)} problem(s))"))
    return EXIT_FAILED if failed else EXIT_OK


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.push and not args.registry:
        raise UsageError("--push needs --registry (e.g. --registry ghcr.io/acme)")
    if args.preflight:
        return preflight_command(args.preflight)
    if args.k8s_job or args.nodes is not None:
        if not (args.k8s_job and args.nodes is not None):
            raise UsageError("--k8s-job TAG and --nodes N go together")
        from . import k8s

        print(k8s.render_verify_job(k8s.VerifyJob(args.k8s_job, args.nodes, args.gpus_per_node)), end="")
        return EXIT_OK
    m = matrix.load(args.matrix)
    if args.list:
        print(list_matrix(m))
        return EXIT_OK
    builds = select_builds(m, args)
    variants = tuple(args.variant) if args.variant else plan.VARIANTS
    specs = plan.plan(m, builds, variants=variants, python=args.python, base_image=args.base, registry=args.registry)
    if args.ci_matrix:
        print(json.dumps(ci_matrix(specs), separators=(",", ":")))
        return EXIT_OK
    if args.render:
        written = write_rendered(m, specs)
        print(f"rendered {len(specs)} Dockerfiles; {len(written)} files changed")
        return EXIT_OK
    if args.dry_run:
        for spec in specs:  # rendering is part of the plan: a template error shows here too
            render.render_dockerfile(spec, m.variant_packages.get(spec.variant, ()), args.templates)
        print(describe_plan(specs))
        return EXIT_OK
    ca_value = ca.build_arg_for(ca.find_ca_file(args.ca_cert))  # bad input fails before Docker is touched
    unlocked = [spec for spec in specs if not spec.lock_digest]
    if unlocked:
        first = unlocked[0]
        raise MatrixError(f"{first.tag} has no lock file ({render.repo_path(first.lock)}): "
                          f"run `python -m pytorch_cuda.lock --torch {first.build.torch} --cuda {first.build.cuda}`")
    started = time.monotonic()
    results = build_all(m, specs, args, ca_value)
    print(summary(results))
    failed = [r for r in results if r.status != "built" or r.verify.startswith("FAILED")]
    print(f"{len(results) - len(failed)} of {len(results)} images built in {format_seconds(time.monotonic() - started)}")
    return EXIT_FAILED if failed else EXIT_OK


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
