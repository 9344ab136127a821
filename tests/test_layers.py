"""The layer plan (pure) and the builder's staging script, on a venv laid out by hand.

The expected plans below were written from the locks and the matrix, not computed by the code.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pytorch_cuda import layers, lockfile, matrix, plan, render, stage_venv

EPOCH = layers.SOURCE_DATE_EPOCH


def runtime_spec(tag: str) -> plan.ImageSpec:
    m = matrix.load()
    torch, cuda = tag.split("-cuda")
    build = m.resolve(cuda=cuda, torch=torch)
    return plan.image_specs(m, [build], variants=("runtime",))[0]


def test_tags_with_the_same_nvidia_pins_get_the_same_nvidia_layers_in_the_same_order():
    old, new = runtime_spec("2.4.0-cuda12.1").layer_plan, runtime_spec("2.4.1-cuda12.1").layer_plan
    nvidia = [layer for layer in old if layer.comment.startswith("NVIDIA")]
    assert len(nvidia) == 11  # 12 NVIDIA wheels in the lock; runtime and nvtx always move together
    assert old[: len(nvidia)] == new[: len(nvidia)]
    assert ("nvidia-cuda-runtime-cu12", "nvidia-nvtx-cu12") in [layer.packages for layer in nvidia]
    # nvjitlink is not pinned by torch 2.4's metadata (the lock resolved it): the last NVIDIA layer
    assert nvidia[-1].packages == ("nvidia-nvjitlink-cu12",)
    # cuBLAS 12.1.3.1 is shared by all ten 12.1 tags, more than any other wheel of 2.4.1
    assert nvidia[0].packages == ("nvidia-cublas-cu12",)
    # then triton, the packages 2.4.1's lock pins besides NVIDIA's, torch's and pip (read off the lock),
    # the catch-all (pip, the venv's own files), and torch last: what 2.4.0 and 2.4.1 do not share
    others = ("filelock", "fsspec", "jinja2", "markupsafe", "mpmath", "networkx", "numpy", "pillow", "setuptools",
              "sympy", "typing-extensions")
    assert [layer.packages for layer in new[len(nvidia):]] == [
        ("triton",), others, ("*",), ("torch", "torchvision", "torchaudio")]
    assert [layer.name for layer in new[len(nvidia):]] == ["12-triton", "13-python", "14-venv", "15-torch"]


def test_the_builders_first_two_pip_steps_are_the_same_files_for_2_4_0_and_2_4_1():
    """The runtime lock cut for the builder's three pip steps (render.pip_steps): NVIDIA's wheels, then triton
    and the other packages, each one file for 2.4.0 and 2.4.1 (Docker's cache keys a COPY on the file's path and
    bytes), then the rest; each entry of the lock in exactly one part, unchanged."""
    old, new = render.pip_steps(runtime_spec("2.4.0-cuda12.1")), render.pip_steps(runtime_spec("2.4.1-cuda12.1"))
    assert [step.dest for step in new] == ["/tmp/nvidia.lock", "/tmp/python.lock", "/tmp/requirements.lock"]
    assert [step.partial for step in new] == [True, True, False]
    for shared in (0, 1):
        assert old[shared].lock_path == new[shared].lock_path and old[shared].lock == new[shared].lock
    assert old[2].lock_path != new[2].lock_path and old[2].lock != new[2].lock  # torch 2.4.0 against 2.4.1
    assert new[0].lock_path.parent.name == "nvidia-locks" and new[0].lock_path.name.startswith("cuda12.1-")
    assert new[1].lock_path.parent.name == "python-locks" and new[1].lock_path.name.startswith("py3.11-")
    other = render.pip_steps(runtime_spec("2.5.1-cuda12.4"))
    assert other[0].lock_path != new[0].lock_path and other[1].lock_path != new[1].lock_path
    nvidia, python, rest = (step.lock for step in new)
    # the twelve NVIDIA wheels of 2.4.1's lock, read off the committed lock
    assert list(lockfile.pins_of(nvidia)) == [
        "nvidia-cublas-cu12", "nvidia-cuda-cupti-cu12", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12",
        "nvidia-cudnn-cu12", "nvidia-cufft-cu12", "nvidia-curand-cu12", "nvidia-cusolver-cu12",
        "nvidia-cusparse-cu12", "nvidia-nccl-cu12", "nvidia-nvjitlink-cu12", "nvidia-nvtx-cu12"]
    assert {"triton", "filelock", "numpy", "sympy"} <= set(lockfile.pins_of(python))
    assert list(lockfile.pins_of(rest)) == ["pip", "torch", "torchaudio", "torchvision"]
    # each step stages the layers of what it installs: the catch-all last, with torch
    assert [[layer.name for layer in step.layers] for step in new[1:]] == [["12-triton", "13-python"],
                                                                          ["14-venv", "15-torch"]]
    lock = runtime_spec("2.4.1-cuda12.1").runtime_lock.read_text()
    body = [line for line in lock.splitlines() if line and not line.startswith("#")]
    parts = [line for text in (nvidia, python, rest) for line in text.splitlines() if not line.startswith("#")]
    assert sorted(parts) == sorted(body)  # nothing lost, nothing twice, every hash kept
    assert "--hash=sha256:2b964d60e8cf11b5e1073d179d85fa340c120e99b3067558f3cf98dd69d02906" in nvidia  # cuBLAS's


def test_lock_entries_keep_each_pin_with_its_hash_lines():
    text = ("# header\n"
            "a==1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:ab\n"
            "# via b\n"
            "B_c==2 \\\n    --hash=sha256:bb\n"
            "\n")
    assert lockfile.entries(text) == {"a": "a==1 \\\n    --hash=sha256:aa \\\n    --hash=sha256:ab\n",
                                      "b-c": "B_c==2 \\\n    --hash=sha256:bb\n"}


def test_every_locked_package_has_exactly_one_layer():
    for tag in ("2.4.1-cuda12.1", "2.6.0-cuda12.4", "2.14.1-cuda13.0", "2.15.0-cuda13.2"):
        spec = runtime_spec(tag)
        named = [p for layer in spec.layer_plan for p in layer.packages if p != "*"]
        assert len(named) == len(set(named)), tag
        assert set(named) <= set(dict(spec.runtime_pins)), tag
        # every NVIDIA and torch package is in a layer of its own kind, not in the catch-all
        assert {n for n in dict(spec.runtime_pins) if layers.is_nvidia(n) or n in layers.TORCH} <= set(named), tag
        assert [layer.packages for layer in spec.layer_plan].count(("*",)) == 1, tag
        assert spec.layer_plan[-1].packages[0] == "torch", tag  # what close tags differ in, on top


def test_grouping_follows_which_tags_share_versions():
    # Three hand-made builds: a and b move together everywhere, c changes alone, d is pinned by
    # one build only.
    m = matrix.load()
    base = m.resolve(cuda="12.1", torch="2.4.1")
    from dataclasses import replace
    one = replace(base, torch="9.0.0", nvidia_packages={"a": "1", "b": "1", "c": "1"})
    two = replace(base, torch="9.0.1", nvidia_packages={"a": "1", "b": "1", "c": "2"})
    three = replace(base, torch="9.1.0", nvidia_packages={"a": "2", "b": "2", "c": "2", "d": "1"})
    builds = [one, two, three]
    # For `two`: c at 2 is shared by two and three (2 builds); a+b at 1 by one and two (2 builds):
    # equal sharing, so by name; nothing unpinned.
    assert layers.nvidia_groups(builds, two, ["a", "b", "c"]) == [("a", "b"), ("c",)]
    # For `three`: c (shared with two) before a+b (its own); d only three has: a group of its own
    # pattern; e is installed but pinned by no build: last.
    assert layers.nvidia_groups(builds, three, ["a", "b", "c", "d", "e"]) == [("c",), ("a", "b"), ("d",), ("e",)]


# --- the staging script, on a venv laid out by hand ---------------------------------------------

SITE = "lib/python3.11/site-packages"


def make_dist(venv: Path, name: str, files: dict[str, str]) -> None:
    site = venv / SITE
    info = f"{name.replace('-', '_')}-1.0.dist-info"
    rows = []
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        rows.append(f"{relative},,")
    (site / info).mkdir(parents=True)
    (site / info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\nlong text\n")
    rows += [f"{info}/METADATA,,", f"{info}/RECORD,,"]
    (site / info / "RECORD").write_text("\n".join(rows) + "\n")


def make_venv(root: Path, nvidia: bool = True, rest: bool = True) -> Path:
    """A venv's own files, then (as the builder's two pip steps install them) NVIDIA's wheels and the rest."""
    venv = root / "opt" / "venv"
    if not venv.exists():
        (venv / "bin").mkdir(parents=True)
        (venv / "include").mkdir()
        os.symlink("lib", venv / "lib64")
        os.symlink(sys.executable, venv / "bin" / "python")
        (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    if nvidia:
        make_dist(venv, "nvidia-cudnn-cu12", {"nvidia/__init__.py": "", "nvidia/cudnn/lib/libcudnn.so.9": "elf",
                                              "nvidia/cudnn/__init__.py": "X = 1\n"})
        make_dist(venv, "nvidia_nccl_cu12", {"nvidia/__init__.py": "", "nvidia/nccl/lib/libnccl.so.2": "elf"})
    if rest:
        make_dist(venv, "torch", {"torch/__init__.py": "import math\n", "../../../bin/torchrun": "#!/bin/sh\n"})
        make_dist(venv, "sympy", {"sympy/__init__.py": f"Y = {set('abcdefghijklmnopqrstuvwxyz')!r} & {{'a'}}\n"})
        (venv / SITE / "loose.py").write_text("# owned by no RECORD\n")
    return venv


LAYERS = ["01-nvidia-cudnn-cu12=nvidia-cudnn-cu12", "02-nvidia-nccl-cu12=nvidia-nccl-cu12",
          "03-torch=torch", "04-python=*"]


def tree_digest(root: Path) -> str:
    """A tar of the tree as `docker` would layer it (names, modes, owners, times, content), hashed."""
    out = root.parent / (root.name + ".tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return hashlib.sha256(out.read_bytes()).hexdigest()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setting owners needs root (CI and the builder stage run as root)")


@needs_root
def test_staging_puts_each_file_in_its_layer_with_fixed_times_owners_and_modes(tmp_path):
    venv = make_venv(tmp_path / "a")
    into = tmp_path / "a" / "stage"
    summary = stage_venv.stage_venv(venv, into, LAYERS, (1000, 0), EPOCH)
    assert [line.split(":")[0] for line in summary] == [name.split("=")[0] for name in LAYERS]

    def under(layer: str) -> set[str]:
        root = into / layer / venv.relative_to("/")
        return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}

    site = SITE
    assert f"{site}/nvidia/cudnn/lib/libcudnn.so.9" in under("01-nvidia-cudnn-cu12")
    # a file two wheels install goes to the lower layer, its compiled form with it
    assert f"{site}/nvidia/__init__.py" in under("01-nvidia-cudnn-cu12")
    assert f"{site}/nvidia/__pycache__/__init__.cpython-{sys.version_info.major}{sys.version_info.minor}.pyc" in under("01-nvidia-cudnn-cu12")
    assert f"{site}/nvidia/__init__.py" not in under("02-nvidia-nccl-cu12")
    assert f"{site}/nvidia/nccl/lib/libnccl.so.2" in under("02-nvidia-nccl-cu12")
    assert {"bin/torchrun", f"{site}/torch/__init__.py"} <= under("03-torch")
    rest = under("04-python")
    assert {"bin/python", "lib64", "pyvenv.cfg", f"{site}/loose.py", f"{site}/sympy/__init__.py"} <= rest
    assert (into / "04-python" / venv.relative_to("/") / "include").is_dir()  # empty dirs of the venv too
    # nothing is left behind and nothing is in two layers
    left = [p for p in venv.rglob("*") if not p.is_dir()]
    assert left == []

    pyc = next((into / "03-torch").rglob("__init__.*.pyc")).read_bytes()
    assert int.from_bytes(pyc[4:8], "little") == 0  # timestamp mode
    assert int.from_bytes(pyc[8:12], "little") == EPOCH  # the source's fixed time
    for path in into.rglob("*"):
        info = os.lstat(path)
        assert info.st_mtime == EPOCH, path
        in_venv = "opt/venv" in str(path.relative_to(into)).split("/", 1)[-1]
        assert (info.st_uid, info.st_gid) == ((1000, 0) if in_venv else (0, 0)), path
        if in_venv and stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o2775, path
        elif in_venv and stat.S_ISREG(info.st_mode):
            assert stat.S_IMODE(info.st_mode) & 0o070 == (stat.S_IMODE(info.st_mode) & 0o700) >> 3, path
    opt = into / "01-nvidia-cudnn-cu12" / venv.parent.relative_to("/")
    assert stat.S_IMODE(os.stat(opt).st_mode) == stat.S_IMODE(os.stat(venv.parent).st_mode)


@needs_root
def test_staging_twice_gives_identical_trees(tmp_path):
    digests = []
    for seed in ("1", "2"):
        work = tmp_path / "work"  # the same path both times, as in the builder stage
        venv = make_venv(work)
        # another hash seed each time: nothing in the trees may follow it
        done = subprocess.run([sys.executable, stage_venv.__file__, "venv", "--venv", str(venv), "--into",
                               str(work / "stage"), "--epoch", str(EPOCH), "--owner", "1000:0",
                               *(f"--layer={layer}" for layer in LAYERS)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        digests.append([tree_digest(work / "stage" / layer.split("=")[0]) for layer in LAYERS])
        shutil.rmtree(work)
        time.sleep(0.01)  # the second venv's files are written at another time
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == len(LAYERS)


NVIDIA_LAYERS = LAYERS[:2]


@needs_root
def test_staging_nvidia_first_then_the_rest_gives_the_trees_of_one_pass(tmp_path):
    """The builder's two pip steps: NVIDIA's wheels installed and staged with --partial, then the rest
    installed into the same venv and staged; every layer comes out byte for byte as staged in one pass."""
    work = tmp_path / "work"  # the same path for both, as in the builder stage
    venv = make_venv(work)
    make_dist(venv, "pip", {"pip/__init__.py": "V = 1\n"})
    stage_venv.stage_venv(venv, work / "stage", LAYERS, (1000, 0), EPOCH)
    expected = [tree_digest(work / "stage" / layer.split("=")[0]) for layer in LAYERS]
    shutil.rmtree(work)

    # The first pip step's venv: the venv's own files and NVIDIA's wheels.
    venv = make_venv(work, rest=False)
    make_dist(venv, "pip", {"pip/__init__.py": "V = 1\n"})  # the venv's own, which the first pass leaves
    stage_venv.stage_venv(venv, work / "stage", NVIDIA_LAYERS, (1000, 0), EPOCH, partial=True)
    # What the first pass leaves: the venv without a trace of NVIDIA's wheels, ready for the second step.
    left = sorted(str(p.relative_to(venv)) for p in venv.rglob("*"))
    assert not [p for p in left if "nvidia" in p], left
    assert {"include", "pyvenv.cfg", f"{SITE}/pip/__init__.py"} <= set(left)
    make_venv(work, nvidia=False)  # the second step's packages, into the same venv
    stage_venv.stage_venv(venv, work / "stage", LAYERS[2:], (1000, 0), EPOCH)
    assert [tree_digest(work / "stage" / layer.split("=")[0]) for layer in LAYERS] == expected


# The runtime's order (layers.component_layers): the other packages and the catch-all below torch.
THREE_STEPS = [LAYERS[:2], ["03-python=sympy"], ["04-venv=*", "05-torch=torch"]]


@needs_root
def test_staging_in_the_builders_three_steps_gives_the_trees_of_one_pass(tmp_path):
    """The builder's three pip steps: NVIDIA's wheels, then the other packages (sympy), each staged with
    --partial, then torch and pip with the catch-all: every tree as one pass over the whole venv makes it, and
    pip stays in the venv until the last step, since that step's pip runs from there."""
    work = tmp_path / "work"
    everything = [layer for step in THREE_STEPS for layer in step]
    venv = make_venv(work)
    make_dist(venv, "pip", {"pip/__init__.py": "V = 1\n"})
    stage_venv.stage_venv(venv, work / "stage", everything, (1000, 0), EPOCH)
    expected = [tree_digest(work / "stage" / layer.split("=")[0]) for layer in everything]
    shutil.rmtree(work)

    venv = make_venv(work, rest=False)
    make_dist(venv, "pip", {"pip/__init__.py": "V = 1\n"})
    stage_venv.stage_venv(venv, work / "stage", THREE_STEPS[0], (1000, 0), EPOCH, partial=True)
    make_dist(venv, "sympy", {"sympy/__init__.py": f"Y = {set('abcdefghijklmnopqrstuvwxyz')!r} & {{'a'}}\n"})
    stage_venv.stage_venv(venv, work / "stage", THREE_STEPS[1], (1000, 0), EPOCH, partial=True)
    left = {str(p.relative_to(venv)) for p in venv.rglob("*")}
    assert f"{SITE}/pip/__init__.py" in left and not [p for p in left if "sympy" in p or "nvidia" in p], left
    make_dist(venv, "torch", {"torch/__init__.py": "import math\n", "../../../bin/torchrun": "#!/bin/sh\n"})
    (venv / SITE / "loose.py").write_text("# owned by no RECORD\n")
    stage_venv.stage_venv(venv, work / "stage", THREE_STEPS[2], (1000, 0), EPOCH)
    assert [tree_digest(work / "stage" / layer.split("=")[0]) for layer in everything] == expected
    catch_all = work / "stage" / "04-venv" / venv.relative_to("/")
    assert {"pyvenv.cfg", f"{SITE}/pip/__init__.py", f"{SITE}/loose.py"} <= {
        str(p.relative_to(catch_all)) for p in catch_all.rglob("*")}


@needs_root
def test_a_partial_pass_takes_no_catch_all_layer(tmp_path):
    venv = make_venv(tmp_path / "a")
    with pytest.raises(stage_venv.StageError, match="--partial stages named packages only, and 04-python takes"):
        stage_venv.stage_venv(venv, tmp_path / "stage", LAYERS, (1000, 0), EPOCH, partial=True)


@needs_root
def test_a_plan_that_names_a_package_the_lock_did_not_install_stops_the_build(tmp_path):
    venv = make_venv(tmp_path / "a")
    done = subprocess.run([sys.executable, stage_venv.__file__, "venv", "--venv", str(venv), "--into",
                           str(tmp_path / "stage"), "--epoch", str(EPOCH), "--owner", "1000:0",
                           "--layer=01-triton=triton", "--layer=02-python=*"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip() == "stage_venv: error: the layer plan names triton, which the lock did not install"


@needs_root
def test_a_package_no_layer_takes_stops_the_build(tmp_path):
    venv = make_venv(tmp_path / "a")
    with pytest.raises(stage_venv.StageError, match="sympy is installed but no layer takes it"):
        stage_venv.stage_venv(venv, tmp_path / "stage", LAYERS[:3], (1000, 0), EPOCH)


@pytest.mark.parametrize("name", ["torch", "Jinja2", "nvidia_cuda_runtime_cu12", "zope.interface", "A__B--c..D",
                                  "pytorch-triton", "backports_tarfile"])
def test_the_staging_scripts_copy_of_the_name_rule_agrees_with_verifys(name):
    """stage_venv.py runs without the repository on its path, so it keeps a copy of verify.packages.canonical.
    (It is copied into every builder stage: any edit of it, a comment too, rebuilds every builder stage.)"""
    from verify.packages import canonical

    assert stage_venv.normalize_name(name) == canonical(name)
    assert stage_venv.REST == layers.REST  # the layer plan's catch-all, spelled the same on both sides
