"""What the sandbox's fallback mode (no bubblewrap) contains, tier by tier (issue 32).

'namespaces': a read-only filesystem even for root, private /tmp, /var/tmp and /dev/shm.
'guarded': a scratch directory on the host that is wiped after each call and removed with its
worker, writes elsewhere refused with a message that says why, IP sockets refused by seccomp.
"""

import os

import pytest

import cleaner_jax
from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool, _contain
from cleaner_jax.agent.sandbox.bwrap import _hidden_by_private_mounts

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(cleaner_jax.__file__)))


def _pool(tier: str, **kwargs) -> SandboxPool:
    cfg = SandboxConfig(
        num_workers=1,
        timeout_s=2.0,
        use_bwrap=False,
        fallback_namespaces=tier == "namespaces",
        preimport=(),
        **kwargs,
    )
    pool = SandboxPool(cfg)
    if pool.containment != tier:
        pool.close()
        pytest.skip(f"fallback tier {tier!r} unavailable here: {pool.containment}")
    return pool


def test_namespaces_tier_filesystem_is_read_only_even_for_root():
    probe = os.path.join(REPO_DIR, "sandbox_ro_probe.txt")
    with _pool("namespaces", sandbox_uid=None) as p:
        res = p.run_sync(f"import os\nprint(os.getuid())\nopen({probe!r}, 'w')")
        private = p.run_sync(
            "import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
            "    open(os.path.join(d, 'x'), 'w').write('1')\n    print(d, sorted(os.listdir(d)))"
        )
    assert res.stdout == f"{os.getuid()}\n", res  # no uid drop: root stays root
    assert (res.error_type, res.error_line) == ("OSError", 3), res
    assert "Read-only file system" in res.stderr, res
    assert not os.path.exists(probe)
    # Each private directory starts empty: the host's entries are not visible either, except a
    # checkout or venv of this run bound back read-only (CI may clone the project under /tmp).
    expected = ""
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        bound = {
            b[len(d) + 1 :].split("/")[0] for b in _hidden_by_private_mounts(SandboxConfig(), (d,))
        }
        expected += f"{d} {sorted({'x'} | bound)}\n"
    assert private.ok and private.stdout == expected, private


def test_namespaces_tier_keeps_state_out_of_the_next_call():
    with _pool("namespaces") as p:
        first = p.run_sync("open('/dev/shm/left', 'w').write('1')\nopen('/var/tmp/left', 'w')")
        second = p.run_sync("import os\nos.listdir('/dev/shm') + os.listdir('/var/tmp')")
    assert first.ok and second.ok and second.stdout == "[]\n", (first, second)


@pytest.mark.parametrize(
    "code",
    [
        "open('/tmp/{name}', 'w')",
        "import os\nos.open('/var/tmp/{name}', os.O_CREAT | os.O_WRONLY)",
        "import os\nos.mkdir('/tmp/{name}')",
        "import os\nopen('a', 'w').close()\nos.rename('a', '/tmp/{name}')",
        "import sqlite3\nsqlite3.connect('/tmp/{name}')",
        "import numpy\nnumpy.save('/dev/shm/{name}', numpy.zeros(3))",
    ],
)
def test_guarded_tier_refuses_writes_outside_its_scratch_dir(code, tmp_path):
    name = f"cleaner_guard_probe_{tmp_path.name}"
    with _pool("guarded") as p:
        res = p.run_sync(code.format(name=name))
    assert res.error_type == "PermissionError", res
    assert "writing outside the sandbox's scratch directory is disabled" in res.stderr, res
    for directory in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not [n for n in os.listdir(directory) if n.startswith(name)]


def test_guarded_tier_scratch_dir_is_wiped_after_each_call_and_removed_with_the_pool():
    with _pool("guarded") as p:
        res = p.run_sync(
            "import os, tempfile\nopen('f', 'w').write('1')\nos.mkdir('d')\n"
            "print(os.getcwd())\nprint(tempfile.gettempdir())\nprint(os.environ['HOME'])"
        )
        scratch = res.stdout.splitlines()[0]
        assert res.ok and res.stdout == f"{scratch}\n" * 3, res
        assert scratch.startswith("/tmp/cleaner-sandbox-")
        assert p.run_sync("import os\nos.listdir('.')").stdout == "[]\n"
        assert os.listdir(scratch) == []
    assert not os.path.exists(scratch)


def test_guarded_tier_lets_local_sockets_through():
    # Only IP sockets are refused: a socketpair (multiprocessing uses them) still works.
    with _pool("guarded") as p:
        res = p.run_sync("import socket\na, b = socket.socketpair()\na.send(b'hi')\nb.recv(2)")
    assert res.ok and res.stdout == "b'hi'\n", res


@pytest.mark.parametrize(
    "info, words",
    [
        ({"tier": "namespaces"}, "read-only filesystem"),
        ({"tier": "guarded", "seccomp": "ok", "namespaces_note": "EPERM"}, "(seccomp)"),
        ({"tier": "guarded", "seccomp": "failed"}, "audit hook only"),
    ],
)
def test_describe_says_what_the_tier_contains(info, words):
    assert words in _contain.describe(info)
