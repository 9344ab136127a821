"""verify's distributed mode: the pure logic, torchrun on this host (gloo, two ranks), and two containers as two nodes.

Faults are aimed at one rank with VERIFY_FAULT=distributed:KIND@RANK (see verify/faults.py): rank 0
must then name that rank, and every process must end within a bounded time.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest
import torch

from pytorch_cuda import k8s
from verify import catalog, cli, faults, ranks
from verify.errors import UsageError
from verify.result import Status

from .dockerutil import TrackedContainers, unique

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
               "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
FAULT_TIMEOUT_S = 20  # --timeout for runs with a broken rank: collectives time out at 1/4 of it
FAULT_RUN_LIMIT_S = 60  # such a run must end by then (measured ~20 s on the 2-core host)
NODE_TIMEOUT_S = 60  # --timeout in the two-container tests: a broken rendezvous fails in about that
NODE_WAIT_S = 150  # what a container gets to finish, torch imports on a busy 2-core host included


# --- pure logic: launch variables, bus bandwidth, stragglers, the verdict ---------------------

TORCHRUN_ENV = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node-a", "MASTER_PORT": "29500",
                "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RUN_ID": "job7",
                "TORCHELASTIC_RESTART_COUNT": "0"}


def test_detect_reads_torchrun_variables():
    launch = ranks.detect(TORCHRUN_ENV, requested=False)
    assert launch == ranks.Launch(3, 8, 1, "node-a", 29500, True, "job7/0")
    assert not launch.hosts_store
    bare = ranks.detect({**TORCHRUN_ENV, "RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": ""}, requested=False)
    assert bare.hosts_store  # no torchrun agent: rank 0 serves the store itself


def test_detect_is_off_without_a_multi_rank_launch():
    assert ranks.detect({}, requested=False) is None
    assert ranks.detect({**TORCHRUN_ENV, "WORLD_SIZE": "1"}, requested=False) is None
    assert ranks.detect({**TORCHRUN_ENV, "WORLD_SIZE": "1", "RANK": "0"}, requested=True).world_size == 1


@pytest.mark.parametrize("environ, message", [
    ({}, "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
    ({**TORCHRUN_ENV, "MASTER_ADDR": ""}, "MASTER_ADDR is not"),
    ({**TORCHRUN_ENV, "WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ({**TORCHRUN_ENV, "RANK": "8"}, "RANK=8 is not in 0..WORLD_SIZE-1"),
    ({**TORCHRUN_ENV, "MASTER_PORT": "70000"}, "must be >= 0 and a TCP port"),
])
def test_detect_rejects_an_incomplete_or_wrong_launch(environ, message):
    with pytest.raises(UsageError, match=message):
        ranks.detect(environ, requested=True)


def test_bus_bandwidth_uses_the_slowest_rank_and_nccl_tests_factor():
    size = 256 << 20
    records = {0: {"times_s": {str(size): 0.010}}, 1: {"times_s": {str(size): 0.020}}}
    (row,) = ranks.bandwidth(records, world=2)
    assert row["time_us"] == 20000.0
    assert row["algbw_gbps"] == pytest.approx(size / 0.020 / 1e9, rel=1e-3)
    assert row["busbw_gbps"] == pytest.approx(row["algbw_gbps"], rel=1e-3)  # 2(n-1)/n = 1 for n = 2
    eight = {rank: {"times_s": {str(size): 0.010}} for rank in range(8)}
    assert ranks.bandwidth(eight, world=8)[0]["busbw_gbps"] == pytest.approx(size / 0.010 / 1e9 * 1.75, rel=1e-3)


def test_bandwidth_leaves_out_sizes_a_rank_did_not_time():
    records = {0: {"times_s": {"1024": 0.001, "2048": 0.002}}, 1: {"times_s": {"1024": 0.001}}}
    assert [row["bytes"] for row in ranks.bandwidth(records, world=2)] == [1024]
    assert ranks.bandwidth({0: {"times_s": {"1024": 0.001}}}, world=1) == []  # one rank: no bus to measure


def test_slow_rank_is_compared_with_the_median_of_the_others():
    assert ranks.slow_ranks({0: 0.10, 1: 0.31}) == [(1, 0.31, 0.10)]  # two ranks: the other one is the median
    assert ranks.slow_ranks({0: 0.10, 1: 0.19}) == []
    eight = {rank: 0.10 + rank * 0.001 for rank in range(8)}
    eight[5] = 0.50
    assert [rank for rank, _, _ in ranks.slow_ranks(eight)] == [5]
    assert ranks.slow_ranks({0: 0.001, 1: 0.005}) == []  # 5x, but 4 ms is timer noise, not a straggler
    assert ranks.slow_ranks({0: 0.2}) == []


def _record(rank: int, **changes: Any) -> Dict[str, Any]:
    record = {"rank": rank, "host": f"node-{rank // 2}", "local_rank": rank % 2, "device": "cpu",
              "gpu_missing": None, "error": None, "contributed": float(rank + 1), "value": 10.0, "exact": True,
              "compute_s": 0.05, "times_s": {"1048576": 0.001}}
    record.update(changes)
    return record


def test_summarize_passes_a_healthy_group_with_its_figures():
    outcome = ranks.summarize({rank: _record(rank) for rank in range(4)}, 4, "nccl", waited_s=90)
    assert outcome.status is Status.PASS, outcome.reason
    figures = outcome.figures
    assert (figures["world_size"], figures["nodes"], figures["hosts"]) == (4, 2, ["node-0", "node-1"])
    assert figures["allreduce_expected"] == 10.0 and figures["rank_compute_s"] == [0.05] * 4
    assert figures["busbw_gbps"] == pytest.approx(1048576 / 0.001 / 1e9 * 1.5, rel=1e-3)
    assert outcome.key_figure.startswith("busbw ") and "4 ranks on 2 nodes" in outcome.reason


def test_summarize_names_missing_then_failed_ranks_causes_first():
    records = {
        0: _record(0, error="all-reduce: RuntimeError: Timed out waiting 45000ms for recv operation to complete"),
        1: _record(1, error="all-reduce: RuntimeError: injected failure (VERIFY_FAULT)"),
        3: _record(3),
    }
    outcome = ranks.summarize(records, 4, "gloo", waited_s=135)
    assert outcome.status is Status.FAIL
    parts = outcome.reason.split("; ")
    assert parts[0] == "rank 2 of 4 did not report within 135 s (hung, crashed or never started)"
    assert parts[1].startswith("rank 1 on node-0 failed at all-reduce: RuntimeError: injected failure")
    assert parts[2].startswith("rank 0 on node-0 failed at all-reduce: RuntimeError: Timed out")
    assert outcome.figures["missing_ranks"] == [2] and outcome.figures["failed_ranks"] == [0, 1]
    assert outcome.figures["allreduce_values"][2] is None and outcome.figures["ranks"][2]["missing"]


def test_summarize_blames_the_rank_that_contributed_a_wrong_value():
    records = {0: _record(0, value=4.0, exact=False), 1: _record(1, contributed=3.0, value=4.0, exact=False)}
    outcome = ranks.summarize(records, 2, "gloo", waited_s=10)
    assert outcome.reason == "all-reduce gave 4.0 on ranks 0, 1, expected exactly 3; rank 1 contributed 3, not 2"


def test_summarize_warns_about_a_straggler_and_fails_cpu_ranks_under_require_gpu():
    records = {rank: _record(rank) for rank in range(3)}
    records[2]["compute_s"] = 0.4
    outcome = ranks.summarize(records, 3, "nccl", waited_s=10)
    assert outcome.status is Status.WARN and outcome.reason.startswith("rank 2 on node-1 is slow")
    assert outcome.figures["slow_ranks"] == [2]
    cpu = {rank: _record(rank, gpu_missing="no GPU: no NVIDIA driver found") for rank in range(2)}
    assert "NCCL not exercised" in ranks.summarize(cpu, 2, "gloo", waited_s=10).reason
    required = ranks.summarize(cpu, 2, "gloo", waited_s=10, require_gpu=True)
    assert required.status is Status.FAIL and "ranks 0, 1 had no GPU" in required.reason


def test_a_rank_without_a_verdict_fails_and_one_with_a_verdict_takes_it():
    alone = ranks.follower_outcome(_record(1), None, waited_s=158)
    assert alone.status is Status.FAIL and alone.reason.startswith("no verdict from rank 0 within 158 s")
    told = ranks.follower_outcome(_record(1), {"status": "warn", "reason": "rank 2 is slow"}, waited_s=158)
    assert (told.status, told.reason) == (Status.WARN, "rank 0 reports: rank 2 is slow")


def test_faults_can_be_aimed_at_one_rank():
    environ = {faults.ENV_VAR: "distributed:hang@1", "RANK": "1"}
    assert faults.fault_for("distributed", environ) == "hang"
    assert faults.fault_for("distributed", {**environ, "RANK": "0"}) is None
    assert faults.raw_for("distributed", {**environ, "RANK": "0"}) == "hang@1"


def test_distributed_mode_runs_only_the_gang_check_unless_only_says_otherwise():
    assert [s.name for s in catalog.select(None, None, perf=False, distributed=True)] == ["distributed"]
    assert "distributed" not in [s.name for s in catalog.select(None, None, perf=True)]
    assert [s.name for s in catalog.select(["cuda,distributed"], None, perf=False, distributed=True)] == [
        "cuda", "distributed"]
    with pytest.raises(UsageError, match="runs only under torchrun"):
        catalog.select(["distributed"], None, perf=False)


@pytest.mark.parametrize("argv, message", [
    (["--distributed"], "distributed mode needs RANK"),
    (["--backend", "gloo"], "--backend applies only in distributed mode"),
    (["--only", "distributed"], "runs only under torchrun"),
])
def test_distributed_usage_errors_are_one_line(argv, message, capsys, monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


# --- torchrun on this host: two ranks, gloo ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(tmp_path: Path, *args: str, fault: Optional[str] = None, timeout: float = 240, nproc: int = 2,
             backend: str = "gloo") -> Tuple[subprocess.CompletedProcess, Dict[str, Any], float]:
    """`torchrun --nproc_per_node=N -m verify --distributed --backend B --json PATH ARGS` from the repo root.

    gloo by default: on a GPU host rank 0 would otherwise choose NCCL, and two ranks on one GPU fail.
    """
    env = {key: value for key, value in os.environ.items()
           if key not in (*LAUNCH_VARS, faults.ENV_VAR, "PYTORCH_CUDA_MANIFEST")}
    if fault:
        env[faults.ENV_VAR] = fault
    report = tmp_path / "report.json"
    started = time.monotonic()
    done = subprocess.run([str(TORCHRUN), f"--nproc_per_node={nproc}", f"--master_port={free_port()}", "-m", "verify",
                           "--distributed", "--backend", backend, "--json", str(report), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.monotonic() - started
    print(f"torchrun verify ({fault or 'no fault'}): exit {done.returncode} in {elapsed:.1f} s")
    return done, (json.loads(report.read_text()) if report.exists() else {}), elapsed


def distributed_check(data: Dict[str, Any]) -> Dict[str, Any]:
    assert [check["name"] for check in data["checks"]] == ["distributed"], data
    return data["checks"][0]


def test_torchrun_two_ranks_pass_with_gloo(tmp_path):
    done, data, _ = torchrun(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    check = distributed_check(data)
    figures = check["figures"]
    assert check["status"] == "pass", check
    assert (figures["world_size"], figures["nodes"], figures["backend"]) == (2, 1, "gloo")
    assert figures["allreduce_values"] == [3.0, 3.0]  # ranks contribute 1 and 2
    assert [row["bytes"] for row in figures["bandwidth"]] == [64 << 10, 1 << 20, 4 << 20]
    assert all(row["busbw_gbps"] > 0 for row in figures["bandwidth"])
    assert all(seconds > 0 for seconds in figures["rank_compute_s"] + figures["rank_allreduce_s"])
    assert data["fingerprint"]["launch"]["world_size"] == 2
    # Rank 0 prints the table once; rank 1 prints one line with rank 0's verdict.
    assert done.stdout.count("CHECK        STATUS") == 1
    assert "BUSBW (GB/s)" in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("verify: rank 1 of 2")]
    assert "distributed PASS: rank 0 reports: exact gloo all-reduce" in line and "(exit 0;" in line


@pytest.mark.gpu
def test_torchrun_one_rank_per_gpu_with_nccl(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no GPU visible to torch (torch.cuda.is_available() is False)")
    gpus = torch.cuda.device_count()
    done, data, _ = torchrun(tmp_path, "--require-gpu", nproc=gpus, backend="nccl", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    check = distributed_check(data)
    assert check["status"] in ("pass", "warn"), check
    assert (check["figures"]["world_size"], check["figures"]["backend"]) == (gpus, "nccl")
    assert check["figures"]["allreduce_values"] == [gpus * (gpus + 1) / 2] * gpus


def test_a_hung_rank_is_named_and_every_process_ends(tmp_path):
    done, data, elapsed = torchrun(tmp_path, "--timeout", str(FAULT_TIMEOUT_S), fault="distributed:hang@1")
    assert done.returncode == 1, done.stdout + done.stderr
    check = distributed_check(data)
    assert check["status"] == "fail"
    assert check["reason"].startswith("[fault injected in the job: hang@1] rank 1 of 2 did not report within"), \
        check["reason"]
    assert check["figures"]["missing_ranks"] == [1]
    assert check["figures"]["fault_injected_in_job"] == "hang@1"
    assert elapsed < FAULT_RUN_LIMIT_S


@pytest.mark.parametrize("fault, status, reason", [
    ("raise@1", "fail", "rank 1 on {host} failed at all-reduce: RuntimeError: injected failure (VERIFY_FAULT)"),
    ("wrong-sum@1", "fail", "all-reduce gave 4.0 on ranks 0, 1, expected exactly 3; rank 1 contributed 3, not 2"),
    ("slow@1", "warn", "rank 1 on {host} is slow: the same local matmuls took"),
])
def test_a_failing_wrong_or_slow_rank_is_named(tmp_path, fault, status, reason):
    done, data, elapsed = torchrun(tmp_path, "--timeout", str(FAULT_TIMEOUT_S), fault=f"distributed:{fault}")
    check = distributed_check(data)
    assert check["status"] == status, check
    expected = f"[fault injected in the job: {fault}] " + reason.format(host=socket.gethostname())
    assert check["reason"].startswith(expected), check["reason"]
    assert done.returncode == (1 if status == "fail" else 0), done.stdout + done.stderr
    assert elapsed < FAULT_RUN_LIMIT_S


# --- two containers as two nodes on a private Docker network -----------------------------------

def _report_after_summary(output: str) -> Dict[str, Any]:
    """`--json -` prints the JSON report after the summary line."""
    lines = output.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))


def _two_nodes(containers: TrackedContainers, tag: str, commands, environments) -> Tuple[list, list, float]:
    """Run node 0 and node 1 side by side on a fresh internal network; the `containers` fixture removes
    both after the test, then the network.

    Returns the container names (also their hostnames), [(exit code, log)] per node, and the seconds taken.
    """
    network = containers.network("pytorch-cuda-dist", driver="bridge", internal=True)
    names = [unique("verify-node0"), unique("verify-node1")]
    started = time.monotonic()
    nodes = [containers.start(tag, commands(names)[i], name=names[i], hostname=names[i], entrypoint="",
                              network=network.name, environment=environments(names)[i]) for i in range(2)]
    results = []
    for box in nodes:
        try:
            code = box.wait(timeout=NODE_WAIT_S)["StatusCode"]
        except Exception as err:  # a hang must fail the test, not stall it
            raise AssertionError(f"{box.name} did not finish in {NODE_WAIT_S} s") from err
        results.append((code, box.logs().decode(errors="replace")))
    return names, results, time.monotonic() - started


def _assert_two_hosts(report: Dict[str, Any], names) -> None:
    check = distributed_check(report)
    # What this checks is the rendezvous of two nodes, not their speed: two containers sharing this 2-core
    # host's CPU with the rest of the suite can time the same matmuls 30 ms apart, and verify then names the
    # slower one (a warning, exit 0; the slow-rank rule itself is tested by fault injection above). Any other
    # warning or a failure still fails here.
    if check["status"] == "warn" and check["figures"].get("slow_ranks"):
        assert all(" is slow: the same local matmuls took " in part for part in check["reason"].split("; ")), check
    else:
        assert check["status"] == "pass", check
    figures = check["figures"]
    assert (figures["world_size"], figures["nodes"], figures["hosts"]) == (2, 2, sorted(names))
    assert figures["allreduce_values"] == [3.0, 3.0]
    assert len(figures["bandwidth"]) == 3 and figures["busbw_gbps"] > 0


@pytest.mark.docker
def test_two_containers_with_launcher_variables_rendezvous_as_two_nodes(built, containers):
    """Any launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set per container, no torchrun."""
    def environments(names):
        return [{"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": names[0],
                 "MASTER_PORT": "29500"} for rank in range(2)]

    names, [(code0, out0), (code1, out1)], elapsed = _two_nodes(
        containers, built["runtime"].tag, lambda names: [["verify", "--timeout", str(NODE_TIMEOUT_S), "--json", "-"]] * 2, environments)
    print(f"two containers, launcher variables: {elapsed:.1f} s")
    assert (code0, code1) == (0, 0), out0 + out1
    _assert_two_hosts(_report_after_summary(out0), names)
    assert [line for line in out1.splitlines() if line.strip()][-1].startswith("verify: rank 1 of 2 on ")


@pytest.mark.docker
def test_two_containers_run_the_kubernetes_torchrun_command(built, containers):
    """The container arguments k8s.py renders, with the pod index and pod 0's name filled in as the
    kubelet and the headless Service would; --require-gpu left out on this GPU-less host."""
    def commands(names):
        args = k8s.torchrun_args(2, 1, names[0], k8s.RENDEZVOUS_PORT)
        args.remove("--require-gpu")
        args += ["--timeout", str(NODE_TIMEOUT_S)]
        return [["torchrun", *[arg.replace("$(JOB_COMPLETION_INDEX)", str(index)) for arg in args]]
                for index in range(2)]

    names, [(code0, out0), (code1, out1)], elapsed = _two_nodes(
        containers, built["runtime"].tag, commands, lambda names: [{}, {}])
    print(f"two containers, torchrun --nnodes 2: {elapsed:.1f} s")
    assert (code0, code1) == (0, 0), out0 + out1
    _assert_two_hosts(_report_after_summary(out0), names)
    assert any(line.startswith("verify: rank 1 of 2 on ") for line in out1.splitlines()), out1
