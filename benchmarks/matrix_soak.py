#!/usr/bin/env python3
"""Build the runtime image of the newest tag of every CUDA line, verify it, record, remove: one line at a time.

    .venv/bin/python benchmarks/matrix_soak.py                     # every CUDA line of the matrix
    .venv/bin/python benchmarks/matrix_soak.py --lines 12.4,13.0   # some of them

For each line: `build.py --torch T --cuda C --variant runtime --no-alias` (the real CLI), the image's
size, `verify` inside it (its environment check must pass; checks that need a GPU skip here), and
torch's own report of CUDA, cuDNN and NCCL compared with the matrix. The image and the builder stage
it left are removed before the next line (a CUDA image is 6-10 GB), except an image that was already
here. Results go to results/matrix-soak-<date>.json, rewritten after every line, and a table is
printed. Not part of the test run: it downloads and builds about 40 GB.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytorch_cuda import engine, matrix, plan, render  # noqa: E402
from pytorch_cuda.progress import format_seconds  # noqa: E402
from pytorch_cuda.tables import format_size, table  # noqa: E402

PROBE = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
         "'cudnn': torch.backends.cudnn.version(), 'nccl': list(torch.cuda.nccl.version())[:3]}))")


def in_container(client, tag: str, script: str, timeout: int = 600) -> tuple[int, str]:
    box = client.containers.run(tag, ["sh", "-c", script], entrypoint="", detach=True, shm_size="1g")
    try:
        code = box.wait(timeout=timeout)["StatusCode"]
        return code, box.logs().decode(errors="replace")
    finally:
        box.remove(force=True)


def soak_line(client, m: matrix.Matrix, cuda: str) -> Dict[str, Any]:
    build = m.resolve(cuda=cuda)
    spec = plan.image_specs(m, [build], variants=("runtime",))[0]
    promise = render.image_manifest(spec)
    record: Dict[str, Any] = {"cuda": cuda, "tag": spec.tag, "torch": build.torch, "python": spec.python}
    images_before = {image.id for image in client.images.list(all=True)}
    present_before = any(spec.tag in image.tags for image in client.images.list())
    record["present_before"] = present_before
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "build.py"), "--torch", build.torch, "--cuda", cuda,
                           "--variant", "runtime", "--no-alias"], cwd=REPO, capture_output=True, text=True)
    record["build_seconds"] = round(time.monotonic() - started, 1)
    record["build_exit"] = done.returncode
    if done.returncode != 0:
        record["build_error"] = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return record
    record["size_bytes"] = int(client.api.inspect_image(spec.tag)["Size"])

    code, out = in_container(client, spec.tag, "verify --json /tmp/r.json >/dev/null 2>&1; echo \"exit=$?\"; "
                                               "cat /tmp/r.json")
    head, _, report = out.partition("\n{")
    checks = json.loads("{" + report)["checks"] if report else []
    record["verify_exit"] = head.strip().rsplit("exit=", 1)[-1]
    record["verify"] = {c["name"]: c["status"] for c in checks}
    record["environment_reason"] = next((c["reason"] for c in checks if c["name"] == "environment"), None)

    code, out = in_container(client, spec.tag, f"python -c \"{PROBE}\"")
    found = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    record["loaded"] = found
    cudnn_code = found.get("cudnn")
    cudnn = f"{cudnn_code // 10000}.{cudnn_code % 10000 // 100}.{cudnn_code % 100}" if cudnn_code else None
    record["matches_matrix"] = {
        "cuda": found.get("cuda") == build.cuda,
        "cudnn": bool(cudnn) and (promise.cudnn or "").startswith(cudnn + "."),
        "nccl": ".".join(map(str, found.get("nccl") or [])) == promise.nccl,
    }
    if not present_before:
        client.images.remove(spec.tag, force=True)
        for image in client.images.list(all=True, filters={"dangling": True}):
            if image.id not in images_before:
                client.images.remove(image.id, force=True)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", help="comma-separated CUDA lines (default: every line of the matrix)")
    today = datetime.date.today().isoformat()
    parser.add_argument("--output", type=Path, default=REPO / "results" / f"matrix-soak-{today}.json")
    args = parser.parse_args()
    m = matrix.load()
    lines = args.lines.split(",") if args.lines else m.cuda_versions()
    client = engine.connect().client
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results: List[Dict[str, Any]] = []
    document = {"date": today, "revision": revision, "machine": f"{platform.node()} {platform.machine()}, "
                f"{__import__('os').cpu_count()} CPUs, no GPU", "docker": client.version().get("Version"),
                "lines": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for cuda in lines:
        print(f"matrix_soak: CUDA {cuda} ...", flush=True)
        results.append(soak_line(client, m, cuda))
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"matrix_soak: CUDA {cuda}: {json.dumps(results[-1])}", flush=True)
    rows = [[r["cuda"], r["tag"], format_seconds(r["build_seconds"]), format_size(r.get("size_bytes")),
             r.get("verify", {}).get("environment", "-"),
             " ".join(f"{k}={v}" for k, v in r.get("verify", {}).items() if k != "environment"),
             "yes" if r.get("matches_matrix") and all(r["matches_matrix"].values()) else "NO"] for r in results]
    print(table(["CUDA", "TAG", "BUILD", "SIZE", "ENVIRONMENT", "OTHER CHECKS", "CUDA/CUDNN/NCCL = MATRIX"], rows))
    ok = all(r.get("build_exit") == 0 and r.get("verify", {}).get("environment") == "pass"
             and all(r.get("matches_matrix", {"x": False}).values()) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
