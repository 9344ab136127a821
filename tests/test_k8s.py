"""`build.py --k8s-job`: the rendered Service + Indexed Job, parsed and checked against Kubernetes' own
OpenAPI schemas (kubernetes-validate ships them inside the package: no cluster, no network).

That the torchrun command works for real is test_verify_distributed.py's two-container test.
"""
from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from pytorch_cuda import cli, k8s
from pytorch_cuda.errors import UsageError
from pytorch_cuda.plan import IMAGE_GID, IMAGE_UID

TAG = "ghcr.io/acme/pytorch-cuda:2.4.1-cuda12.1-runtime"
# The oldest and the newest schemas shipped (Indexed Jobs are GA since 1.24).
SCHEMA_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


@pytest.fixture(scope="module")
def documents() -> dict:
    text = k8s.render_verify_job(k8s.VerifyJob(TAG, nodes=3, gpus_per_node=4))
    parsed = list(yaml.safe_load_all(text))
    assert [doc["kind"] for doc in parsed] == ["Service", "Job"]
    return {doc["kind"]: doc for doc in parsed}


def _container(documents) -> dict:
    (only,) = documents["Job"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("kind", ["Service", "Job"])
def test_manifest_is_valid_for_kubernetes(documents, kind, version):
    # strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` would
    kubernetes_validate.validate(documents[kind], version, strict=True)


def test_schema_check_catches_a_misspelt_field(documents):
    broken = yaml.safe_load(yaml.safe_dump(documents["Job"]))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = broken["spec"]["template"]["spec"][
        "containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        kubernetes_validate.validate(broken, SCHEMA_VERSIONS[-1], strict=True)


def test_indexed_job_runs_one_pod_per_node(documents):
    job = documents["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 3
    assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_headless_service_gives_pod_0_the_rendezvous_name(documents):
    name = documents["Job"]["metadata"]["name"]
    service = documents["Service"]
    assert name == "verify-2-4-1-cuda12-1-runtime" and service["metadata"]["name"] == name
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"job-name": name}  # the label the Job controller puts on its pods
    assert documents["Job"]["spec"]["template"]["spec"]["subdomain"] == name
    args = _container(documents)["args"]
    assert args[args.index("--master-addr") + 1] == f"{name}-0.{name}"
    assert args[args.index("--master-port") + 1] == "29500"
    assert service["spec"]["ports"][0]["port"] == 29500


def test_container_runs_torchrun_with_the_pod_index_as_node_rank(documents):
    container = _container(documents)
    assert container["image"] == TAG and container["command"] == ["torchrun"]
    args = container["args"]
    pairs = dict(zip(args[:8:2], args[1:8:2]))
    assert pairs == {"--nnodes": "3", "--nproc-per-node": "4", "--node-rank": "$(JOB_COMPLETION_INDEX)",
                     "--master-addr": pairs["--master-addr"]}
    assert args[args.index("-m"):] == ["-m", "verify", "--distributed", "--require-gpu", "--json", "-"]
    # $(VAR) in args expands only from variables the container declares
    (index,) = [env for env in container["env"] if env["name"] == "JOB_COMPLETION_INDEX"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_torchrun_accepts_the_arguments():
    """This host's torchrun parses them (the image's torch 2.4 runs them in the two-container test)."""
    from torch.distributed.run import get_args_parser

    args = [arg.replace("$(JOB_COMPLETION_INDEX)", "1") for arg in k8s.torchrun_args(2, 8, "job-0.job", 29500)]
    parsed = get_args_parser().parse_args(args)
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.node_rank) == ("2", "8", 1)
    assert (parsed.master_addr, parsed.master_port, parsed.module) == ("job-0.job", 29500, True)
    assert parsed.training_script == "verify" and parsed.training_script_args[0] == "--distributed"


def test_gpus_shm_and_non_root(documents):
    container = _container(documents)
    pod = documents["Job"]["spec"]["template"]["spec"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    (volume,) = pod["volumes"]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": "/dev/shm"}]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_GID}
    assert IMAGE_UID == 1000 and container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("image, nodes, name", [
    ("pytorch-cuda:2.4.1-cuda12.1-runtime", 2, "verify-2-4-1-cuda12-1-runtime"),
    ("localhost:5000/pytorch-cuda:v2.4-cuda12.1-ssh", 2, "verify-v2-4-cuda12-1-ssh"),
    ("pytorch-cuda@sha256:" + "a" * 64, 2, "verify-pytorch-cuda"),
    ("r/pytorch-cuda:" + "x" * 80, 100, "verify-" + "x" * 53),
])
def test_job_name_is_a_dns_label_with_room_for_the_index(image, nodes, name):
    assert k8s.job_name(image, nodes) == name
    assert len(f"{name}-{nodes - 1}") <= 63


@pytest.mark.parametrize("job, message", [
    (k8s.VerifyJob(TAG, nodes=0), "--nodes must be at least 1"),
    (k8s.VerifyJob(TAG, nodes=2, gpus_per_node=0), "--gpus-per-node must be at least 1"),
    (k8s.VerifyJob("", nodes=2), "needs an image reference"),
    (k8s.VerifyJob(TAG, nodes=2, name="Verify_Job"), "is not a DNS label"),
    (k8s.VerifyJob(TAG, nodes=2, shm_size="lots"), "is not a Kubernetes quantity"),
])
def test_bad_inputs_are_usage_errors(job, message):
    with pytest.raises(UsageError, match=message):
        k8s.render_verify_job(job)


def test_build_py_prints_the_manifest_without_docker(capsys):
    assert cli.main(["--k8s-job", TAG, "--nodes", "2", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    kinds = [doc["kind"] for doc in yaml.safe_load_all(out)]
    assert kinds == ["Service", "Job"] and "nvidia.com/gpu: 8" in out


@pytest.mark.parametrize("argv", [["--nodes", "2"], ["--k8s-job", TAG]])
def test_build_py_k8s_flags_go_together(argv, capsys):
    assert cli.main(argv) == 2
    assert "--k8s-job TAG and --nodes N go together" in capsys.readouterr().err
