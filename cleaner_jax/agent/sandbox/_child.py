"""Child side of a sandbox call: the pre-forked process that runs the policy's code.

Forked by the warm worker (`worker.py`) ahead of its request. It redirects stdout/stderr to the
worker's pipes, closes every other fd, waits for the request, applies rlimits (CPU seconds,
address space, file size, process count), drops to an unprivileged uid, and runs the code
Jupyter-style (a trailing expression's repr is printed). Errors are printed in the reference
code-judge format `{Type} at line {N}: {msg}\\n  {source line}` (or `{Type}: {msg}` when no user
line is known) and reported to the worker on a result pipe. Standard library only; imported by
`worker.py` as a sibling module when that runs as a script.
"""

from __future__ import annotations

import json
import os
import sys

if __package__:
    from cleaner_jax.agent.sandbox import _contain
else:  # imported by worker.py run as a script
    import _contain

TIMEOUT_EXIT_CODE = 124


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def set_parent_death_signal() -> None:
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _count_processes_of(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _format_error(exc: BaseException, code_lines: list[str]) -> tuple[str, int | None, str]:
    """Returns (type name, user line or None, reference-format message)."""
    error_type = type(exc).__name__
    lineno = None
    if isinstance(exc, SyntaxError):
        lineno = exc.lineno
    else:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "<string>":
                lineno = tb.tb_lineno
            tb = tb.tb_next
    if isinstance(exc, SystemExit):
        message = str(exc.code)
    else:
        message = str(exc)
    if lineno is not None and 1 <= lineno <= len(code_lines):
        text = f"{error_type} at line {lineno}: {message}\n  {code_lines[lineno - 1]}"
        return error_type, lineno, text
    return error_type, None, f"{error_type}: {message}"


def _run_user_code(code: str, prelude: dict) -> None:
    import __future__

    import ast
    import builtins

    tree = ast.parse(code)  # filename '<unknown>' keeps SyntaxError text as in the reference
    namespace = dict(prelude)
    namespace.update({"__name__": "__main__", "__builtins__": builtins, "__file__": "<string>"})
    flags = __future__.annotations.compiler_flag
    last_expr = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last_expr = tree.body.pop()
    exec(compile(tree, "<string>", "exec", flags=flags, dont_inherit=True), namespace)
    if last_expr is not None:
        expr = ast.Expression(last_expr.value)
        value = eval(compile(expr, "<string>", "eval", flags=flags, dont_inherit=True), namespace)
        if value is not None:
            print(repr(value))


def _drop_privileges(uid: int) -> None:
    """Switches to `uid`, keeping only CAP_DAC_READ_SEARCH.

    The unprivileged uid is what stops the code from signalling its worker and what makes
    RLIMIT_NPROC bite. Read access stays as root's (the interpreter and its stdlib may live in a
    directory only root can enter, e.g. /root/.pyenv); in bubblewrap mode the filesystem is
    read-only anyway, and the capability gives no write, kill or resource-limit power.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS: keep the permitted set across setuid
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)(1 << 2, 1 << 2, 0, 0, 0, 0)  # effective, permitted: bit 2
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset(CAP_DAC_READ_SEARCH) failed")


def probe_privilege_drop(uid: int) -> str:
    """Checks in a throwaway child that the code can still import the stdlib after the drop."""
    pid = os.fork()
    if pid == 0:
        try:
            _drop_privileges(uid)
            os.listdir(os.path.dirname(os.__file__))
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "failed"


def child_wait_and_run(arm: dict, prelude: dict) -> None:
    """Body of a pre-forked child: prepare, block until the request arrives, run it, exit."""
    import io
    import resource
    import signal

    main_pid = os.getpid()
    set_parent_death_signal()  # an armed child must not outlive its worker
    os.setsid()
    for signum in (signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    request_fd, result_fd = arm["request"], arm["result"]
    os.dup2(arm["stdout"], 1)
    os.dup2(arm["stderr"], 2)
    # Keep only the request and result pipes: the worker's protocol fds above all must be
    # closed, so the code cannot write to the channel the parent trusts.
    keep = sorted((request_fd, result_fd))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 1 << 20)
    out = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace"
    )
    err = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )

    chunks = []
    while chunk := os.read(request_fd, 1 << 16):
        chunks.append(chunk)
    os.close(request_fd)
    if not chunks:
        os._exit(0)  # the worker is shutting down or disarming
    request = json.loads(b"".join(chunks).decode("utf-8", errors="surrogatepass"))

    stdin_fd = os.memfd_create("sandbox-stdin")
    if request.get("stdin"):
        write_all(stdin_fd, request["stdin"].encode("utf-8", errors="surrogatepass"))
        os.lseek(stdin_fd, 0, os.SEEK_SET)
    os.dup2(stdin_fd, 0)
    os.close(stdin_fd)
    sys.stdout, sys.stderr = out, err
    sys.stdin = io.TextIOWrapper(
        io.FileIO(0, "r", closefd=False), encoding="utf-8", errors="replace"
    )

    def report(obj: dict) -> None:
        try:
            write_all(result_fd, json.dumps(obj).encode("utf-8", errors="replace"))
        except OSError:
            pass

    def flush_all() -> None:
        for stream in (out, err, sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - user code may have replaced/closed the stream
                pass

    def finish(status: dict, exit_code: int) -> None:
        flush_all()
        if os.getpid() == main_pid:
            report(status)
            # Closing before exiting lets the worker answer without waiting for the teardown
            # of this process's address space.
            for fd in (1, 2, result_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        os._exit(exit_code)

    def on_alarm(signum, frame):  # noqa: ARG001
        finish({"status": "timeout"}, TIMEOUT_EXIT_CODE)

    timeout_s = float(request["timeout_s"])
    limits = request["limits"]
    cpu_s = int(timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    if limits.get("address_space_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (limits["address_space_bytes"],) * 2)
    if limits.get("file_size_bytes"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_bytes"],) * 2)
    uid = limits.get("drop_to_uid")
    if limits.get("max_processes"):
        nproc = limits["max_processes"]
        if uid is None or os.getuid() != 0:
            # Without a dedicated uid the limit counts all of this user's processes.
            nproc += _count_processes_of(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if uid is not None and os.getuid() == 0:
        _drop_privileges(uid)
    os.chdir(arm["scratch_dir"])
    guards = arm.get("guards")
    if guards:
        # Last, so that nothing of the child's own set-up trips the audit hook.
        if guards["seccomp"]:
            _contain.install_seccomp()
        _contain.install_audit_guard(guards["dir"])
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)

    code = request["code"]
    status = {"status": "ok"}
    try:
        _run_user_code(code, prelude)
    except BaseException as exc:  # noqa: BLE001 - every user error is data for the policy
        if not (isinstance(exc, SystemExit) and exc.code in (None, 0)):
            error_type, line, text = _format_error(exc, code.splitlines())
            try:
                print(text, file=err)
            except Exception:  # noqa: BLE001
                pass
            status = {
                "status": "error",
                "error_type": error_type,
                "error_line": line,
                "error_message": text[:4000],
            }
    signal.setitimer(signal.ITIMER_REAL, 0)
    finish(status, 0 if status["status"] == "ok" else 1)
