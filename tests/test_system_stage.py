"""The runtime's system stage, through the real engine: what a step on a whole root filesystem changed
travels to another stage as one tree (collect_root_changes), and what it removed is removed there
(remove_listed). Debian's packages reach every runtime image this way, so a file apt drops must not
stay behind in the image, and a new directory keeps its owner and setgid mode."""
from __future__ import annotations

import pytest

from pytorch_cuda import baseimage, render
from pytorch_cuda.engine import DockerEngine, dockerfile_context

from .dockerutil import unique

pytestmark = pytest.mark.docker

BASE = "debian:bookworm-slim"
REMOVED = render.SYSTEM_REMOVED
# A step as the system stage's: it removes a file of the base, changes one, adds a file and a
# group-writable setgid directory owned by another uid.
STEP = ("rm /etc/debian_version && echo changed > /etc/issue && echo new > /etc/added "
        "&& mkdir /shared && chown 1000:0 /shared && chmod 2775 /shared")


def dockerfile() -> str:
    macros = render.environment(render.TEMPLATES_DIR).from_string(
        '{% from "macros.j2" import collect_root_changes, remove_listed %}'
        'FROM {{ base }} AS system\n'
        'RUN {{ collect_root_changes("/system", removed, step) }}\n'
        'FROM {{ base }}\n'
        'COPY --from=system /system/ /\n'
        'RUN {{ remove_listed(removed) }}\n')
    return macros.render(base=BASE, removed=REMOVED, step=STEP)


def test_a_root_step_travels_as_one_tree_with_its_removals(docker_client, containers):
    baseimage.ensure_base_image(DockerEngine(docker_client), BASE, say=lambda line: None)
    tag = f"pytorch-cuda-test/system-stage:{unique('t')}"
    try:
        docker_client.images.build(fileobj=dockerfile_context(dockerfile()), custom_context=True, tag=tag, rm=True,
                                   forcerm=True)
        code, out = containers.run(tag, ["sh", "-c", "test -e /etc/debian_version && echo KEPT-REMOVED; "
                                                     f"test -e {REMOVED} && echo KEPT-LIST; cat /etc/issue /etc/added; "
                                                     "stat -c '%u:%g %a' /shared"], entrypoint="")
        assert code == 0, out
        assert "KEPT" not in out, out  # the removed file is gone from the image, and so is the list
        assert out.split() == ["changed", "new", "1000:0", "2775"], out
        removal, tree, base = docker_client.images.get(tag).history()
        # the tree holds what the step changed, not the whole root: a few kB above a base of some 75 MB
        assert tree["Size"] < 100_000 < base["Size"] and removal["Size"] < 100_000, (removal, tree, base)
    finally:
        docker_client.images.remove(tag, force=True)
