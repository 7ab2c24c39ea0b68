"""Containment of the fallback mode (no bubblewrap), in two tiers.

'namespaces' (tried first, by the worker at start-up): the worker unshares a mount and a network
namespace (plus a user namespace when not root), makes every inherited mount read-only, puts
private tmpfs over /tmp, /var/tmp and /dev/shm (binding back read-only any checkout or venv that
lives there), and brings up a loopback that reaches nothing on the host. That is what bubblewrap
gives, without the PID/IPC/UTS namespaces.

'guarded' (when the kernel or a container refuses those namespaces): the code gets the pool's
private scratch directory as cwd/HOME/TMPDIR, a seccomp filter makes socket(AF_INET/AF_INET6) and
io_uring fail with EACCES/ENOSYS in it and in every program it starts, and a Python audit hook
turns network use and writes outside the scratch directory into a PermissionError that says why.
The audit hook is a guard, not a boundary: ctypes or a program the code starts can get past it.

Standard library only; imported by `worker.py` / `_child.py` as a sibling module.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

NETWORK_DISABLED_MESSAGE = (
    "networking is disabled in this sandbox (fallback mode without network isolation)"
)
WRITE_DISABLED_MESSAGE = (
    "writing outside the sandbox's scratch directory is disabled in this sandbox (fallback "
    "mode without a private /tmp); write to the current directory or to tempfile's directory"
)

# Directories any user may write to: each gets a private tmpfs in the 'namespaces' tier.
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 0x4000, 0x40000, 0x200000
# statvfs f_flag bits that a read-only remount must carry over (locked in a user namespace).
_ST_TO_MS = ((2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC), (1024, _MS_NOATIME),
             (2048, _MS_NODIRATIME), (4096, _MS_RELATIME))  # fmt: skip


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point, octal-escaped (\040 for a space).
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape").encode("latin-1").decode())
    return points


def _remount_read_only(libc, path: str) -> None:
    flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
    st_flags = os.statvfs(path).f_flag
    for st_bit, ms_bit in _ST_TO_MS:
        if st_flags & st_bit:
            flags |= ms_bit
    _mount(libc, None, path, None, flags)


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _loopback_up() -> None:
    import fcntl
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifreq)[:18])[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1 | 0x40))  # SIOCSIFFLAGS


def enter_namespaces(keep: list[str]) -> list[str]:
    """Moves this (single-threaded) process into private mount and network namespaces.

    `keep` are paths under PRIVATE_DIRS the process still needs (its script, venv, import
    path); they are bound back read-only. Returns the private directories now mounted. Raises
    OSError when the namespaces cannot be created (the caller then uses the 'guarded' tier).
    """
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNS | _CLONE_NEWNET | (_CLONE_NEWUSER if uid != 0 else 0)
    _check(libc.unshare(flags), "unshare(mount, network)")
    if uid != 0:
        # Map ourselves to ourselves: the code keeps its uid, and the mounts below are allowed.
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):  # fmt: skip
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    # Without this, the mounts below would propagate back to the host's namespace.
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)
    private = [d for d in PRIVATE_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    kept = {}
    for path in keep:
        # O_PATH handles to the originals, to bind back once a tmpfs hides them.
        kept[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    for point in reversed(_mount_points()):
        if not _inside(point, tuple(private)):
            try:
                _remount_read_only(libc, point)
            except OSError:
                pass  # e.g. a mount that is gone or locked; the root fs is what matters
    for directory in private:
        _mount(libc, "tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777")
    for path, fd in kept.items():
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        try:
            _remount_read_only(libc, path)
        except OSError:
            pass  # root-owned files the unprivileged code cannot change anyway
        os.close(fd)
    _loopback_up()
    return private


def describe(info: dict) -> str:
    """One sentence on what a worker's tier contains (from its ready message), for the log."""
    tier = info.get("tier")
    if tier == "namespaces":
        return (
            "private mount and network namespaces: read-only filesystem, private /tmp, /var/tmp "
            "and /dev/shm, no network, but host processes stay visible."
        )
    if tier == "guarded":
        network = (
            "IP sockets refused (seccomp)"
            if info.get("seccomp") == "ok"
            else f"IP sockets refused by a Python audit hook only (seccomp: {info.get('seccomp')})"
        )
        return (
            f"no namespaces ({info.get('namespaces_note')}): a private scratch directory, "
            f"{network}, writes outside the scratch directory refused by a Python audit hook "
            "that ctypes or a started program can get past; the host's files stay readable."
        )
    return f"unknown containment {tier!r}."


# ---------------------------------------------------------------------------------------------
# 'guarded' tier: seccomp filter + audit hook, installed in the child right before the code.
# ---------------------------------------------------------------------------------------------
_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}


def _seccomp_program() -> bytes:
    arch, nr_socket, nr_io_uring_setup = _ARCH[platform.machine()]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    kill = 0x80000000  # SECCOMP_RET_KILL_PROCESS: a foreign ABI could dodge the numbers below
    ins = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, kill),
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jge, 0, 1, 0x40000000),  # x32 ABI numbers
        (ret, 0, 0, kill),
        (jeq, 0, 1, nr_io_uring_setup),  # io_uring can open sockets without socket(2)
        (ret, 0, 0, deny | errno.ENOSYS),
        (jeq, 1, 0, nr_socket),
        (ret, 0, 0, allow),
        (ld_abs, 0, 0, 16),  # seccomp_data.args[0] (low half on little-endian): the family
        (jeq, 2, 0, 2),  # AF_INET
        (jeq, 1, 0, 10),  # AF_INET6
        (ret, 0, 0, allow),
        (ret, 0, 0, deny | errno.EACCES),
    ]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def install_seccomp() -> None:
    """Makes IP sockets and io_uring fail in this process and all it starts (irreversible)."""
    libc = _libc()
    program = _seccomp_program()
    buf = ctypes.create_string_buffer(program, len(program))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ul = ctypes.c_ulong
    _check(libc.prctl(38, ul(1), ul(0), ul(0), ul(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(22, ul(2), ctypes.byref(fprog), ul(0), ul(0)), "prctl(PR_SET_SECCOMP)")


def probe_namespaces(keep: list[str]) -> str:
    """Runs `enter_namespaces` in a throwaway child: 'ok' or why it failed. The worker only
    enters them itself after this succeeds, so a refusal never leaves it half-contained."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            enter_namespaces(keep)
            message, code = b"ok", 0
        except BaseException as exc:  # noqa: BLE001
            message, code = repr(exc).encode("utf-8", "replace")[:500], 1
        os.write(write_fd, message)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and message == "ok"
    return "ok" if ok else (message or f"probe died (wait status {status})")


def probe_seccomp() -> str:
    """Checks in a throwaway child that the filter installs and blocks an IP socket."""
    import socket

    pid = os.fork()
    if pid == 0:
        try:
            install_seccomp()
            try:
                socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
            except PermissionError:
                os._exit(0)
            os._exit(2)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "failed"


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/stdout", "/dev/stderr")
_PATH_EVENTS = {  # event -> indices of the path arguments that name something created
    "os.mkdir": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "os.rename": (1,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.chmod": (0,),
    "sqlite3.connect": (0,),
}


def install_audit_guard(scratch_dir: str) -> None:
    """Turns network use and writes outside `scratch_dir` into a PermissionError."""
    import socket

    realpath, fspath, join, getcwd = os.path.realpath, os.fspath, os.path.join, os.getcwd
    roots = (os.path.realpath(scratch_dir), "/dev/fd", "/proc/self/fd")
    ip_families = (int(socket.AF_INET), int(socket.AF_INET6))

    def allowed(path) -> bool:
        if isinstance(path, int) or path is None:
            return True  # an fd the code already holds
        try:
            text = fspath(path)
            if isinstance(text, bytes):
                text = text.decode("utf-8", "surrogateescape")
            if text == ":memory:" or text in _WRITABLE_DEVICES:
                return True
            full = realpath(join(getcwd(), text))
        except (TypeError, ValueError, OSError):
            return False
        return full in _WRITABLE_DEVICES or _inside(full, roots)

    def hook(event: str, args: tuple) -> None:
        if event == "socket.__new__":
            if len(args) > 1 and args[1] in ip_families:
                raise PermissionError(errno.EACCES, NETWORK_DISABLED_MESSAGE)
        elif event == "open":
            if len(args) > 2 and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
                if not allowed(args[0]):
                    raise PermissionError(errno.EACCES, WRITE_DISABLED_MESSAGE, args[0])
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if len(args) > i and not allowed(args[i]):
                    raise PermissionError(errno.EACCES, WRITE_DISABLED_MESSAGE, args[i])

    sys.addaudithook(hook)
