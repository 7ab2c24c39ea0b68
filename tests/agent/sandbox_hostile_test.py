"""Hostile code through the sandbox pool (issue 4 evidence), in bubblewrap and fallback mode.

Each snippet must give a clear result (a failure naming what happened, or for output abuse a
truncated/replaced success), leave the pool healthy (the next call succeeds), leave no stray
process behind, and leave the calling process untouched.
"""

import os
import socket
import threading
import time

import pytest

import cleaner_jax
from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.agent.sandbox.bwrap import bwrap_unusable_reason

SANDBOX_UID = 65534
REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(cleaner_jax.__file__)))
PROBE_FILE = os.path.join(REPO_DIR, "sandbox_escape_probe.txt")

# Walks up from the code's process to its own worker and SIGKILLs it. (Killing every worker.py
# on the machine would, in fallback mode, also hit other pools' code children that share the
# sandbox uid, e.g. those of a concurrent pytest-xdist worker.)
KILL_OWN_WORKER = """\
import os
pid = os.getppid()
while pid > 1:
    cmd = open(f'/proc/{pid}/cmdline', 'rb').read()
    if b'worker.py' in cmd:
        os.kill(pid, 9)
        break
    pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])
print('survived')
"""

# name -> (code, check(result)); checks name the expected failure precisely.
HOSTILE = {
    "infinite_loop": ("while True:\n    pass", lambda r: r.reason == "worker_timeout"),
    "sleep_forever": ("import time\ntime.sleep(1000)", lambda r: r.reason == "worker_timeout"),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        # Under memory pressure (a loaded CI box) the kernel has been seen to SIGKILL it first.
        lambda r: r.reason == "worker_timeout" or r.error_type == "SIGKILL",
    ),
    "fork_bomb_crashing": (
        "import os\nwhile True:\n    os.fork()",
        # The code's first process may keep winning fork slots until the deadline.
        lambda r: (r.error_type, r.error_line) in (("BlockingIOError", 3), ("TimeoutError", None)),
    ),
    "alloc_10gb": (
        "x = bytearray(10 * 1024**3)",
        lambda r: r.error_type == "MemoryError" and r.error_line == 1,
    ),
    "output_100mb": (
        "import sys\nsys.stdout.write('x' * (100 * 1024 * 1024))",
        lambda r: (
            r.ok and r.stdout.startswith("x" * 1000) and r.stdout.endswith("[output truncated]")
        ),
    ),
    "write_outside_tmp": (
        f"open({PROBE_FILE!r}, 'w').write('pwned')",
        lambda r: r.error_type in ("OSError", "PermissionError") and r.error_line == 1,
    ),
    "kill_parent": (
        "import os\nos.kill(os.getppid(), 9)",
        lambda r: r.error_type == "PermissionError" and r.error_line == 2,
    ),
    "kill_own_worker": (
        KILL_OWN_WORKER,
        lambda r: r.error_type == "PermissionError" and not r.infra_failure,
    ),
    "kill_everything": (
        "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('alone')",
        lambda r: not r.infra_failure,
    ),
    "sys_exit": (
        "import sys\nsys.exit(3)",
        lambda r: r.error_type == "SystemExit" and r.error_line == 2,
    ),
    "os_exit": ("import os\nos._exit(9)", lambda r: r.error_type == "SystemExit"),
    "recursion_bomb": (
        "def f(n):\n    return f(n + 1)\nf(0)",
        lambda r: r.error_type == "RecursionError" and r.error_line == 2,
    ),
    "c_stack_overflow": (
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
        # Deep Python recursion may hit the wall timeout before the C stack overflows; under
        # memory pressure the kernel has also been seen to end it with SIGKILL (CI, loaded box).
        lambda r: (
            r.error_type in ("SIGSEGV", "SIGKILL", "RecursionError", "MemoryError", "TimeoutError")
        ),
    ),
    "non_utf8_stdout": (
        "import sys\n_ = sys.stdout.buffer.write(b'ok \\xff\\xfe\\n')",
        lambda r: r.ok and r.stdout == "ok \ufffd\ufffd\n",
    ),
    "ignore_sigterm": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        lambda r: r.reason == "worker_timeout",
    ),
    "orphan_escapes_session": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(1000)\n    os._exit(0)\nprint('parent done')",
        lambda r: r.ok and r.stdout == "parent done\n",
    ),
    "scribble_on_fds": (
        "import os\nfor fd in range(3, 256):\n    try:\n"
        "        os.write(fd, b'\\x00\\x00\\x00\\x02{}')\n"
        "    except OSError:\n        pass\nprint('scribbled')",
        lambda r: not r.infra_failure and "scribbled" in r.stdout,
    ),
}


@pytest.fixture(scope="module", params=["bwrap", "fallback"])
def hostile_pool(request):
    cfg = SandboxConfig(num_workers=2, timeout_s=1.0, use_bwrap=request.param == "bwrap")
    missing = bwrap_unusable_reason(cfg)
    if request.param == "bwrap" and missing:
        pytest.skip(f"bwrap mode not testable on this machine: {missing}")
    with SandboxPool(cfg) as p:
        assert p.sandbox_mode == request.param
        yield p


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces and parentheses: the ppid follows the last ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _ours_or_escaped(pid: int) -> bool:
    """A process descends from this test process (the pool's workers are child subreapers, so
    orphans stay below them) or escaped to init. Sandbox processes of other pytest-xdist workers
    running at the same time descend from those workers and are not ours to judge."""
    me, seen = os.getpid(), set()
    while pid not in seen:
        seen.add(pid)
        parent = _parent_pid(pid)
        if parent is None:
            return False  # gone meanwhile
        if parent in (me, 1):
            return True
        if parent == 0:
            return False
        pid = parent
    return False


def _sandbox_uid_processes() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == SANDBOX_UID and _ours_or_escaped(int(name)):
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _wait_no_stray(deadline_s: float = 10.0) -> list[int]:
    # Code runs as the sandbox uid and only there; armed children still run as root. The worker
    # reaps right after replying, so allow it a moment.
    end = time.monotonic() + deadline_s
    while (stray := _sandbox_uid_processes()) and time.monotonic() < end:
        time.sleep(0.02)
    return stray


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code(hostile_pool, name):
    code, check = HOSTILE[name]
    me, parent, cwd = os.getpid(), os.getppid(), os.getcwd()
    workers_before = hostile_pool.worker_pids()

    # Writing 100 MB through the truncating pipe took 1.27 s of the pool's 1 s limit once, in a
    # clean-clone suite run with the other xdist worker compiling (Dec 2026); it tests truncation,
    # not speed, so it gets 3 s.
    res = hostile_pool.run_sync(code, timeout_s=3.0 if name == "output_100mb" else None)

    assert check(res), (name, res)
    assert not res.infra_failure, res
    if not res.ok:
        text = res.to_tool_response_text()
        assert text.startswith("Tool call failure\nreason: ")
    assert res.duration_s < 1.0 + 3.0
    assert _wait_no_stray() == []
    # The pool is healthy: nothing was replaced and the next call succeeds.
    assert hostile_pool.worker_pids() == workers_before
    assert hostile_pool.infra_failures == 0
    nxt = hostile_pool.run_sync("print(sum(range(10)))")
    assert nxt.ok and nxt.stdout == "45\n"
    # The calling process is untouched.
    assert (os.getpid(), os.getppid(), os.getcwd()) == (me, parent, cwd)
    assert not os.path.exists(PROBE_FILE)


def test_network_is_unreachable_including_host_loopback():
    """A server listening on the host's loopback cannot be reached from the sandbox."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    code = (
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
        "print('connected')"
    )
    try:
        with SandboxPool(SandboxConfig(num_workers=1, timeout_s=2.0, preimport=())) as p:
            res = p.run_sync(code)
            external = p.run_sync(
                "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=0.5)"
            )
            assert p.run_sync("1").ok
    finally:
        server.close()
    assert res.error_type == "ConnectionRefusedError" and res.error_line == 2, res
    assert "connected" not in res.stdout and not accepted
    assert not external.ok and external.error_type in ("OSError", "TimeoutError"), external
