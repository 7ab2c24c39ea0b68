"""The SAAR core is portable: `cleaner_jax/saar` copied out whole works as a top-level package of
another name, in an interpreter that cannot import `cleaner_jax`, JAX or numpy, and a real SAAR
rollout there purifies a failed call exactly as it does in the repo."""

import ast
import json
import pathlib
import shutil
import subprocess
import sys

import cleaner_jax.saar

SAAR_DIR = pathlib.Path(cleaner_jax.saar.__file__).parent
REPO_ROOT = SAAR_DIR.parent.parent

# Runs in `python -I -S`: no site-packages (so no editable install of cleaner_jax, no numpy, no
# JAX), no PYTHON* variables, no current directory on sys.path; only the stdlib and the copy.
_SCRIPT = """
import asyncio, json, sys

sys.path.insert(0, sys.argv[1])
try:
    import cleaner_jax
except ModuleNotFoundError:
    cleaner_jax_importable = False
else:
    cleaner_jax_importable = True

import saar_copy as saar
import saar_copy.bench
from saar_copy.testing import CharCodec, ScriptedPolicy, ScriptedTools, call_text, failure

codec = CharCodec()
prompt = codec.encode("<|im_start|>user\\nWhat is 6*7?<|im_end|>\\n<|im_start|>assistant\\n")
bad, good = "print(6*7", "print(6*7)"
turns = [
    "Reason A. " + call_text(bad) + "<|im_end|>",
    "Oops, paren. " + call_text(good) + "<|im_end|>",
    "So \\\\boxed{42}.<|im_end|>",
]
policy = ScriptedPolicy(codec, turns)
tools = ScriptedTools({bad: failure("SyntaxError", "'(' was never closed")})
traj = asyncio.run(
    saar.rollout(
        prompt,
        policy,
        tools,
        codec,
        saar=saar.SaarConfig(),
        limits=saar.RolloutLimits(max_tool_attempts=5),
    )
)
heavy = sorted(
    m for m in sys.modules if m.split(".")[0] in ("cleaner_jax", "jax", "jaxlib", "flax", "numpy")
)
print(json.dumps({
    "cleaner_jax_importable": cleaner_jax_importable,
    "saar_file": saar.__file__,
    "heavy_modules": heavy,
    "layout": [[s.provenance.value, codec.decode(s.tokens)] for s in traj.segments],
    "response_text": codec.decode(traj.response_tokens),
    "termination": traj.termination,
    "stale": len(traj.stale_segments()),
    "stats": saar.aggregate_stats([traj.stats]),
    "executed": [c.code for c in tools.calls],
}))
"""


def _imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(level, module) of every import statement in a file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def test_saar_imports_itself_relatively_and_only_the_stdlib():
    stdlib = sys.stdlib_module_names
    for path in sorted(SAAR_DIR.glob("*.py")):
        for level, module in _imports_of(path):
            if level == 0:
                assert module.split(".")[0] in stdlib, f"{path.name} imports {module}"


def test_copied_out_saar_runs_a_rollout_without_cleaner_jax(tmp_path):
    shutil.copytree(SAAR_DIR, tmp_path / "saar_copy", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert not out["cleaner_jax_importable"]
    assert out["heavy_modules"] == []
    assert pathlib.Path(out["saar_file"]).parent == tmp_path / "saar_copy"
    assert not pathlib.Path(out["saar_file"]).is_relative_to(REPO_ROOT)
    # Both calls ran; the failed one and its error message are gone from the trajectory, the
    # old reasoning stays and the corrected call is spliced in (shallow) and re-scored.
    assert out["executed"] == ["print(6*7", "print(6*7)"]
    assert [p for p, _ in out["layout"]] == [
        "prompt",
        "sampled",
        "spliced_shallow",
        "tool",
        "sampled",
    ]
    assert out["layout"][1][1] == "Reason A. "
    assert "print(6*7)" in out["layout"][2][1]
    assert "print(6*7<" not in out["response_text"] and "SyntaxError" not in out["response_text"]
    assert out["termination"] == "answer" and out["stale"] == 0
    stats = out["stats"]
    assert stats["trajectories"] == 1 and stats["tool_calls_sum"] == 2
    assert stats["rollback_recovery_rate"] == 1.0 and stats["shallow_frac"] == 1.0
    assert stats["final_tool_failures_per_traj"] == 0
    assert stats["failure_type/SyntaxError"] == 1
