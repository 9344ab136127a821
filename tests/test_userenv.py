"""verify/userenv.py (the venv's start-up hook for any uid) and the compile check's reasons, as pure functions.

The expected answers come from the documents the rules follow: getpass.getuser() reads LOGNAME, USER,
LNAME, USERNAME before the passwd database (Python's getpass docs); proc(5) defines mountinfo (field 5
the mount point with octal escapes, field 6 the per-mount options); pip's PIP_<OPTION> variables.
The real runs (Docker -u, --read-only, Charliecloud) are in tests/test_platforms.py.
"""
from __future__ import annotations

import pytest

from verify import userenv

SITE = "/opt/venv/lib/python3.11/site-packages"


def plan(environ, uid=12345, writable=(), names=(1000, 0), homes=None, private_ok=True, constraints=True):
    made = []

    def make_private(path, owner):
        made.append((path, owner))
        return private_ok

    changes = userenv.plan(dict(environ), uid, site_packages=SITE, image_home="/home/pytorch", temp_dir="/tmp",
                           python_version="3.11", tag=lambda: "2.4.1-cuda12.1-runtime",
                           has_name=lambda u: u in names,
                           passwd_home=lambda u: (homes or {0: "/root", 1000: "/home/pytorch"}).get(u),
                           writable_dir=lambda path: path in writable, make_private=make_private,
                           exists=lambda path: constraints)
    return changes, made


def test_the_image_user_in_its_image_needs_nothing():
    env = {"HOME": "/home/pytorch", "PIP_CONSTRAINT": userenv.CONSTRAINTS}
    assert plan(env, uid=1000, writable={"/home/pytorch", SITE}) == ({}, [])


def test_openshift_uid_in_group_0_gets_a_name_and_keeps_the_group_writable_home():
    env = {"HOME": "/home/pytorch", "PIP_CONSTRAINT": userenv.CONSTRAINTS}
    changes, made = plan(env, writable={"/home/pytorch", SITE})
    assert changes == {"USER": "uid12345"} and made == []


@pytest.mark.parametrize("name", ["LOGNAME", "USER", "LNAME", "USERNAME"])
def test_a_name_from_the_environment_is_enough_for_getpass(name):
    env = {"HOME": "/home/pytorch", "PIP_CONSTRAINT": "", name: "alice"}
    assert plan(env, writable={"/home/pytorch", SITE})[0] == {}


def test_hpc_runtime_with_a_missing_host_home_a_read_only_venv_and_no_image_env():
    """Charliecloud/Apptainer: the host's uid (with a passwd entry the runtime made), HOME=/home/chtest that
    the image lacks, the image's ENV dropped (no PIP_CONSTRAINT), nothing writable but /tmp."""
    env = {"HOME": "/home/chtest", "USER": "chtest"}
    changes, made = plan(env, uid=54321, names=(54321,), writable={"/tmp/pytorch-cuda-home-54321"})
    assert made == [("/tmp/pytorch-cuda-home-54321", 54321)]
    assert changes == {"HOME": "/tmp/pytorch-cuda-home-54321", "PIP_CONSTRAINT": userenv.CONSTRAINTS,
                       "PIP_PREFIX": "/tmp/pytorch-cuda-home-54321/.local/share/pytorch-cuda/2.4.1-cuda12.1-runtime"}


def test_a_bound_writable_host_home_is_kept_and_pip_goes_under_it():
    env = {"HOME": "/home/alice", "USER": "alice", "XDG_DATA_HOME": "/home/alice/.data", "PIP_CONSTRAINT": "x"}
    changes, _ = plan(env, uid=54321, names=(54321,), writable={"/home/alice"})
    assert changes == {"PIP_PREFIX": "/home/alice/.data/pytorch-cuda/2.4.1-cuda12.1-runtime"}


def test_a_users_own_pip_target_or_prefix_is_left_alone():
    for name in ("PIP_PREFIX", "PIP_TARGET"):
        env = {"HOME": "/home/alice", "USER": "alice", "PIP_CONSTRAINT": "x", name: "/data/pkgs"}
        assert plan(env, uid=54321, names=(54321,), writable={"/home/alice"})[0] == {}


def test_an_empty_pip_constraint_stays_empty_so_it_still_lifts_the_pins():
    env = {"HOME": "/home/pytorch", "PIP_CONSTRAINT": ""}
    assert "PIP_CONSTRAINT" not in plan(env, uid=1000, writable={"/home/pytorch", SITE})[0]


def test_a_home_in_temp_that_someone_else_owns_is_not_taken():
    env = {"HOME": "/", "USER": "x", "PIP_CONSTRAINT": "x"}
    changes, made = plan(env, writable={SITE}, private_ok=False)
    assert made and "HOME" not in changes


def test_root_with_the_image_users_home_gets_its_own():
    """`USER root` steps of a derived image inherit ENV HOME=/home/pytorch: pip's cache must not become root's there."""
    env = {"HOME": "/home/pytorch", "PIP_CONSTRAINT": "x"}
    assert plan(env, uid=0, writable={"/root", "/home/pytorch", SITE})[0] == {"HOME": "/root"}
    env = {"HOME": "/data", "PIP_CONSTRAINT": "x"}  # a HOME root was given on purpose stays
    assert plan(env, uid=0, writable={"/data", SITE})[0] == {}


def test_it_can_be_turned_off():
    env = {"HOME": "/", userenv.SWITCH: "off"}
    assert plan(env, writable=set())[0] == {}


def test_the_hook_never_raises(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(userenv, "plan", broken)
    assert userenv.apply("/home/pytorch") == []


def test_private_dir_refuses_a_directory_of_another_owner(tmp_path):
    mine = tmp_path / "home"
    assert userenv.private_dir(str(mine), uid=__import__("os").getuid())
    assert (mine.stat().st_mode & 0o777) == 0o700
    assert not userenv.private_dir(str(mine), uid=4242)  # exists, but owned by us, not by 4242
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert not userenv.private_dir(str(link), uid=__import__("os").getuid())


# --- the compile check's reasons ------------------------------------------------------------------

# /proc/self/mountinfo of `docker run --read-only --tmpfs /tmp ...` (Docker 20.10: /tmp is rw,nosuid,nodev,noexec),
# with a volume whose path has a space (written \040, proc(5)).
MOUNTINFO = """\
612 530 0:58 / / ro,relatime master:262 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
613 612 0:61 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
620 612 0:66 / /tmp rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw
621 612 8:1 /data /my\\040data rw,relatime - ext4 /dev/vda rw
622 620 0:70 / /tmp/exec rw,relatime - tmpfs tmpfs rw
"""


def test_noexec_mount_finds_the_mount_that_holds_the_path():
    from verify.checks.compile import noexec_mount
    assert noexec_mount("/tmp", MOUNTINFO) == "/tmp"
    assert noexec_mount("/tmp/torchinductor_pytorch", MOUNTINFO) == "/tmp"
    assert noexec_mount("/tmp/exec/cache", MOUNTINFO) is None  # a deeper exec mount wins
    assert noexec_mount("/tmpfoo", MOUNTINFO) is None  # / holds it, and / has exec
    assert noexec_mount("/my data/x", MOUNTINFO) is None
    assert noexec_mount("/proc/self", MOUNTINFO) == "/proc"


def test_a_noexec_cache_is_named_with_the_variable_that_moves_it():
    from verify.checks.compile import cache_dirs, noexec_problems
    dirs = cache_dirs("cuda", {"HOME": "/tmp/home"}, "/tmp")
    assert dirs == {"TORCHINDUCTOR_CACHE_DIR": "/tmp", "TRITON_CACHE_DIR": "/tmp/home/.triton/cache"}
    problems = noexec_problems({"TORCHINDUCTOR_CACHE_DIR": "/tmp"}, MOUNTINFO)
    assert len(problems) == 1 and "mounted noexec" in problems[0] and "set TORCHINDUCTOR_CACHE_DIR" in problems[0]
    assert noexec_problems({"TORCHINDUCTOR_CACHE_DIR": "/"}, MOUNTINFO) == []


def test_the_reason_ends_with_the_root_cause_not_the_wrapper():
    from verify.errors import root_cause

    class BackendCompilerFailed(Exception):
        pass

    try:
        try:
            try:
                raise KeyError("getpwuid(): uid not found: 12345")
            except KeyError as inner:
                raise RuntimeError("while compiling") from inner
        except RuntimeError as middle:
            raise BackendCompilerFailed("backend='inductor' raised:\nRuntimeError: while compiling") from middle
    except BackendCompilerFailed as outer:
        assert root_cause(outer) == "KeyError: getpwuid(): uid not found: 12345"
    try:
        raise ImportError("/tmp/torchinductor_x/ab/cab.so: failed to map segment from shared object")
    except ImportError as err:
        assert root_cause(err).endswith("failed to map segment from shared object")


def test_a_missing_user_name_is_named_with_its_fix():
    from verify.checks.compile import named_cause
    said = named_cause("KeyError: getpwuid(): uid not found: 12345", 12345)
    assert said.startswith("uid 12345 has no user name") and "set USER" in said
    assert named_cause("OSError: boom", 1) == "OSError: boom"


def test_a_check_that_raises_is_reported_with_the_root_cause(monkeypatch):
    """check_process's generic path: what wrapped the failure, then where it failed."""
    import types

    from verify import check_process

    def run(context):
        try:
            {}["getpwuid(): uid not found: 12345"]
        except KeyError as inner:
            raise RuntimeError("backend='inductor' raised:") from inner

    real_import = check_process.importlib.import_module
    monkeypatch.setattr(check_process.importlib, "import_module",
                        lambda name: types.SimpleNamespace(run=run) if name == "verify.checks.fake" else real_import(name))
    result = check_process.run_check({"name": "fake"})
    assert result.reason == ("check raised RuntimeError: backend='inductor' raised: "
                             "(root cause: KeyError: getpwuid(): uid not found: 12345)"), result.reason
