"""Make every Python process in the image usable under any uid, run by any container runtime.

The image's own user (`pytorch`, uid 1000, gid 0) needs nothing of this. It is for the runs where
the runtime decides who we are and what is writable:
- OpenShift and Kubernetes with `runAsUser`: a random uid with no passwd entry (group 0);
- Apptainer, enroot, Charliecloud: the host user's uid (not in group 0), the host's HOME (bound, or
  absent), a read-only image, and the image's ENV dropped or partly kept;
- `--read-only` roots where only /tmp is writable.

A `.pth` line in the venv calls `apply()` as the interpreter starts, before any user code, so
`python`, `pip`, `jupyter`, `torchrun` and notebook kernels all get the same answers, with no
entrypoint (HPC runtimes skip it). Each fix is made only where the thing is missing, and only by
setting environment variables that the tools themselves read (children inherit them):
- no user name for this uid (`getpass.getuser()` raises, and torch.compile's Inductor asks it):
  USER is set to `uid<N>`;
- HOME missing, not a directory or not writable: HOME becomes a private directory under the temp
  directory (`pytorch-cuda-home-<uid>`, mode 0700, refused if someone else owns it). Root whose
  HOME is the image user's (the image's ENV HOME, inherited by `USER root` steps of derived
  images) gets root's own, so it does not leave root-owned caches in the user's home;
- the venv not writable (read-only image, uid outside the image's group): `pip install` goes to a
  prefix in HOME (PIP_PREFIX), one per image tag, and that prefix's site-packages is put on
  sys.path after the venv's, so the packages the image pins stay first;
- the image's PIP_CONSTRAINT (the CUDA torch packages' pins) set again where the runtime dropped
  the image's ENV. `PIP_CONSTRAINT=` (set, empty) still lifts it.

PYTORCH_CUDA_USERENV=off turns all of it off. Standard library only, and cheap: it runs at every
interpreter start.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Callable, Dict, List, MutableMapping, Optional

IMAGE_ETC = "/etc/pytorch-cuda"
CONSTRAINTS = IMAGE_ETC + "/constraints.txt"
MANIFEST = IMAGE_ETC + "/manifest.json"
SWITCH = "PYTORCH_CUDA_USERENV"
# What getpass.getuser() reads before it asks the passwd database, in its order.
NAME_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _passwd_home(uid: int) -> Optional[str]:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None


def _has_passwd_entry(uid: int) -> bool:
    import pwd
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def private_dir(path: str, uid: int) -> bool:
    """Make `path` a directory only `uid` can use, or say it cannot be trusted (another owner, a link)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and os.access(path, os.W_OK | os.X_OK)


def image_tag(manifest_path: str) -> Optional[str]:
    """The image's tag from its manifest, read only when a per-image place is needed."""
    try:
        import json
        with open(manifest_path, encoding="utf-8") as handle:
            tag = json.load(handle).get("tag")
    except (OSError, ValueError, AttributeError):
        return None
    return tag if isinstance(tag, str) and tag and "/" not in tag else None


def plan(environ: MutableMapping[str, str], uid: int, *, site_packages: str, image_home: Optional[str],
         temp_dir: str, python_version: str, tag: Callable[[], Optional[str]],
         has_name: Callable[[int], bool] = _has_passwd_entry,
         passwd_home: Callable[[int], Optional[str]] = _passwd_home,
         writable_dir: Callable[[str], bool] = _writable_dir,
         make_private: Callable[[str, int], bool] = private_dir,
         exists: Callable[[str], bool] = os.path.exists) -> Dict[str, str]:
    """The variables to set, from what this process can see (pure but for the injected probes)."""
    changes: Dict[str, str] = {}
    if environ.get(SWITCH, "").lower() in ("off", "0", "no", "false"):
        return changes
    if not any(environ.get(name) for name in NAME_VARIABLES) and not has_name(uid):
        changes["USER"] = f"uid{uid}"

    home = environ.get("HOME", "")
    if uid == 0 and image_home and home.rstrip("/") == image_home.rstrip("/"):
        root_home = passwd_home(0) or "/root"
        if root_home != home:
            changes["HOME"] = home = root_home
    if not home or not writable_dir(home):
        fallback = os.path.join(temp_dir, f"pytorch-cuda-home-{uid}")
        if make_private(fallback, uid):
            changes["HOME"] = home = fallback

    if "PIP_CONSTRAINT" not in environ and exists(CONSTRAINTS):
        changes["PIP_CONSTRAINT"] = CONSTRAINTS
    pip_placed = any(environ.get(name) for name in ("PIP_PREFIX", "PIP_TARGET"))
    if not writable_dir(site_packages) and not pip_placed and home and writable_dir(home):
        data = environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
        changes["PIP_PREFIX"] = os.path.join(data, "pytorch-cuda", tag() or f"python{python_version}")
    return changes


def prefix_site_packages(prefix: str, python_version: str) -> str:
    """Where `pip install --prefix` puts a venv interpreter's packages."""
    return os.path.join(prefix, "lib", f"python{python_version}", "site-packages")


def apply(image_home: Optional[str] = None) -> List[str]:
    """Called from the venv's .pth at interpreter start, with the image user's home (the template
    knows it); returns the names it set. Never raises: a failure here must not stop Python."""
    try:
        return _apply(image_home)
    except Exception:  # a broken hook must not break every Python in the image
        return []


def _apply(image_home: Optional[str]) -> List[str]:
    import sysconfig

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = sysconfig.get_paths()["purelib"]
    changes = plan(os.environ, os.getuid(), site_packages=site_packages, image_home=image_home,
                   temp_dir=os.environ.get("TMPDIR") or "/tmp", python_version=version,
                   tag=lambda: image_tag(os.environ.get("PYTORCH_CUDA_MANIFEST") or MANIFEST))
    os.environ.update(changes)
    prefix = os.environ.get("PIP_PREFIX")
    if prefix:
        extra = prefix_site_packages(prefix, version)
        if os.path.isdir(extra) and extra not in sys.path:
            import site
            site.addsitedir(extra)  # appended: the venv's packages stay first
    return sorted(changes)
