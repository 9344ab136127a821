"""Kubernetes: the manifest that runs `verify --distributed` on N nodes of G GPUs each. Pure: no cluster, no Docker.

An Indexed Job gives every pod a stable index (its node rank) and, with a headless Service as its
subdomain, a DNS name: pod 0 is `<name>-0.<name>`, where torchrun's rendezvous listens. The tag is
taken as given: the cluster pulls it, so it need not exist here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import refs
from .errors import UsageError
from .plan import IMAGE_GID, IMAGE_UID, VERIFY_SHM_GIB
from .render import TEMPLATES_DIR, environment

TEMPLATE = "k8s/verify-job.yaml.j2"
RENDEZVOUS_PORT = 29500  # torchrun's default --master-port
DNS_LABEL = 63  # a pod hostname (<name>-<index>) is one DNS label
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


@dataclass(frozen=True)
class VerifyJob:
    image: str
    nodes: int
    gpus_per_node: int = 1
    name: str = ""  # default: from the image's tag (job_name)
    port: int = RENDEZVOUS_PORT
    shm_size: str = f"{VERIFY_SHM_GIB}Gi"  # what verify's shm check asks of Docker (--shm-size=8g)
    deadline_s: int = 3600  # pulls of a multi-GB image included
    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "pytorch-cuda-verify"})


def job_name(image: str, nodes: int = 1) -> str:
    """'ghcr.io/acme/pytorch-cuda:2.4.1-cuda12.1-runtime' -> 'verify-2-4-1-cuda12-1-runtime'.

    Short enough that '<name>-<index>' stays a DNS label, and starts with a letter, as a Service
    name must.
    """
    tag = refs.split(image, default_tag="")[1]
    stem = re.sub(r"[^a-z0-9]+", "-", (tag or refs.repository_name(image)).lower()).strip("-")
    room = DNS_LABEL - len(f"-{max(nodes - 1, 0)}")
    return f"verify-{stem}"[:room].rstrip("-") if stem else "verify"


def torchrun_args(nodes: int, gpus_per_node: int, master_addr: str, port: int) -> list[str]:
    """The container's arguments to torchrun (torch >= 2.0 spellings); $(JOB_COMPLETION_INDEX) is
    expanded by the kubelet from the env var the template declares."""
    return [
        "--nnodes", str(nodes), "--nproc-per-node", str(gpus_per_node),
        "--node-rank", "$(JOB_COMPLETION_INDEX)",
        "--master-addr", master_addr, "--master-port", str(port),
        "-m", "verify", "--distributed", "--require-gpu", "--json", "-",
    ]


def _check(job: VerifyJob) -> str:
    if not job.image.strip() or any(c.isspace() for c in job.image):
        raise UsageError(f"--k8s-job needs an image reference, got {job.image!r}")
    if job.nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {job.nodes}")
    if job.gpus_per_node < 1:
        raise UsageError(f"--gpus-per-node must be at least 1, got {job.gpus_per_node}")
    if not 0 < job.port < 65536:
        raise UsageError(f"port {job.port} is not a TCP port")
    if not _QUANTITY.match(job.shm_size):
        raise UsageError(f"shm size {job.shm_size!r} is not a Kubernetes quantity such as 8Gi")
    name = job.name or job_name(job.image, job.nodes)
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(f"{name}-{job.nodes - 1}") > DNS_LABEL:
        raise UsageError(f"job name {name!r} is not a DNS label (lower case, digits, '-'; at most "
                         f"{DNS_LABEL - len(str(job.nodes - 1)) - 1} characters)")
    return name


def render_verify_job(job: VerifyJob, templates_dir: Path = TEMPLATES_DIR) -> str:
    """The Service and the Job, as one YAML stream for `kubectl apply -f -`."""
    name = _check(job)
    master_addr = f"{name}-0.{name}"
    return environment(templates_dir).get_template(TEMPLATE).render(
        name=name,
        image=job.image,
        nodes=job.nodes,
        gpus_per_node=job.gpus_per_node,
        port=job.port,
        master_addr=master_addr,
        args=torchrun_args(job.nodes, job.gpus_per_node, master_addr, job.port),
        shm_size=job.shm_size,
        deadline_s=job.deadline_s,
        uid=IMAGE_UID,
        gid=IMAGE_GID,
        labels={**job.labels, "app.kubernetes.io/instance": name},
    )
