"""Every command shown to a user works: README code blocks, docstrings of configs/ and launch/.

The commands are parsed out of the docs; each must have an entry in `PLANS`, reviewed by hand:
  RUN    runs it for one step / one problem (fresh process, this machine's real devices; tiny
         budgets appended as extra overrides, `TINY`);
  CHECK  runs it with `--check_only` (flag and config parsing, every override, paths and budgets
         checked against the tiny assets) because the same code path runs elsewhere, named in
         the reason;
  SKIP   cannot run here (the reason says why); a launch/*.py script's flags are still checked
         against its DEFINE_* calls.
A command in the docs without an entry, or an entry no doc shows, fails `test_every_documented_
command_is_reviewed`: changing a documented command means updating this table.

Paths are mapped onto tiny local assets made once (`assets`): `/data/NAME` and `/ckpt/NAME` must be
listed in `DATA` / `CKPT` (with the schema the file has; a path used with two schemas fails),
`/runs`, `/tmp`, `/mnt` and `DIR` go under the test's directory. `CUDA_VISIBLE_DEVICES=...` and the
`gcloud ... ssh --command="..."` wrapper are stripped. `pytest -s` prints each command and its
outcome. Measured (Dec 2026, 2 CPU cores shared with another job): assets ~9 s, SFT ~22 s,
GRPO ~45-55 s, evaluate ~20-40 s, convert ~9-13 s, ~1.7 s per CHECK or mistake; ~2 min in all.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = pathlib.Path(__file__).parents[2]
DOC_FILES = ["README.md", *sorted(f"configs/{p.name}" for p in (ROOT / "configs").glob("*.py"))]
DOC_FILES += sorted(f"launch/{p.name}" for p in (ROOT / "launch").glob("*.py"))


@dataclasses.dataclass(frozen=True)
class Plan:
    action: str  # RUN | CHECK | SKIP
    reason: str = ""


RUN, CHECK, SKIP = "RUN", "CHECK", "SKIP"
_SHIPPED = (
    "its runtime trains a step and evaluates a batch in "
    "tests/runtime/shipped_configs_test.py::test_one_runtime_trains_a_step_and_evaluates_a_batch"
)
_PAPER_Q3 = "--config=configs/paper.py:model=qwen3_4b,arm=cleaner"
_BENCH = "a benchmark (minutes of timed repetitions); the code it times has its own tests"

# Each documented command (whitespace collapsed, exactly as the doc shows it) -> what we do.
PLANS: dict[str, Plan] = {
    # README
    "bash launch/quickstart.sh demo": Plan(
        SKIP, "the whole study (~12 min); its quick mode runs in tests/study/demo_test.py"
    ),
    "bash launch/quickstart.sh test": Plan(SKIP, "the test suite itself (.ci/run runs it)"),
    "python launch/sft.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner --workdir=/runs/sft "
    "--config.model.hf_path=/ckpt/Qwen3-4B-Instruct-2507 "
    "--config.sft.train_files='(\"/data/sft.jsonl\",)'": Plan(RUN),
    "python launch/train.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner "
    "--workdir=/runs/cleaner "
    "--config.model.hf_path=/ckpt/Qwen3-4B-RA-SFT "
    "--config.data.train_files='(\"/data/open_agentrl_30k.parquet\",)'": Plan(RUN),
    "python launch/train.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner,runlocal "
    "--workdir=/tmp/runlocal": Plan(CHECK, f"{_SHIPPED}[paper:model=qwen3_4b,arm=cleaner]"),
    "python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/runlocal_demo": Plan(
        CHECK, f"{_SHIPPED}[demo:full,arm=cleaner]"
    ),
    "python launch/memory_plan.py": Plan(
        SKIP,
        "compiles the training step at the paper's shapes (~1 min per model); "
        "tests/runtime/memory_plan_test.py checks the plan",
    ),
    "python launch/memory_plan.py --row_len=8192 --tokens_per_device=8192 --kv_seqs=16 "
    "--kv_seq_len=8192": Plan(SKIP, "as above, at other budgets"),
    "CUDA_VISIBLE_DEVICES=0 python launch/train.py "
    "--config=configs/paper.py:model=qwen3_4b,arm=cleaner "
    "--workdir=/runs/q3 --config.model.hf_path=/ckpt/Qwen3-1.7B-RA-SFT --config.mesh.fsdp=1 "
    "--config.data.train_files='(\"/data/open_agentrl_30k.parquet\",)'": Plan(
        CHECK,
        "the README GRPO command plus --config.mesh.fsdp=1, which is what it runs on "
        "this one-device machine (RUN above)",
    ),
    'gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=all --command="cd cleaner-jax '
    "&& .venv/bin/python launch/train.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner "
    "--config.multiprocess=True --workdir=/mnt/shared/runs/q3 "
    "--config.model.hf_path=/ckpt/Qwen3-4B-RA-SFT "
    '--config.data.train_files=\'(\\"/data/open_agentrl_30k.parquet\\",)\'"': Plan(
        CHECK,
        "needs a TPU pod or a jax.distributed cluster; the 2-process CPU path (update, "
        "exchange, sampler replica) is tests/rl/distributed_test.py",
    ),
    "python launch/evaluate.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner "
    "--checkpoint=/runs/q3/hf_export/step_750 --dataset_kind=aime "
    "--dataset=/data/aime24.parquet --out=/runs/q3/eval/aime24": Plan(RUN),
    "python -m lcb_runner.runner.custom_evaluator --custom_output_file "
    "/runs/q3/eval/lcb/livecodebench_on.json --scenario codegeneration "
    "--release_version release_v6": Plan(
        SKIP,
        "LiveCodeBench's own harness (not installed); the file it reads is written and "
        "checked in tests/runtime/evaluation_test.py",
    ),
    # configs/
    "python launch/demo.py --mode=full --workdir=DIR": Plan(
        SKIP, "the whole study (~12 min); its quick mode runs in tests/study/demo_test.py"
    ),
    "python launch/train.py --config=configs/demo.py:full,arm=cleaner,seed=0 --workdir=DIR/x "
    "--config.tokenizer_path=DIR/assets/tokenizer --config.model.hf_path=DIR/sft/hf_export/final "
    "--config.data.train_files='(\"DIR/assets/rl_train.jsonl\",)' "
    "--config.data.val_files='(\"DIR/assets/test.jsonl\",)'": Plan(
        CHECK,
        "this config on the demo's assets and SFT export runs through trainer.run in "
        "tests/study/demo_test.py (quick mode)",
    ),
    "python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/runlocal": Plan(
        CHECK, f"{_SHIPPED}[demo:full,arm=cleaner]"
    ),
    "python launch/train.py --config=configs/demo.py:quick,arm=baseline --print_config": Plan(
        CHECK, "prints the config and stops before any check"
    ),
    **{
        f"python launch/train.py --config=configs/paper.py:model={model},arm={arm} "
        f"--config.model.hf_path=/ckpt/{ckpt} "
        "--config.data.train_files='(\"/data/open_agentrl_30k.parquet\",)' "
        "--config.data.val_files='(\"/data/aime24_agentrl.parquet\",)' "
        f"--workdir=/runs/{model}_{arm}": Plan(
            CHECK,
            "the README GRPO command's path with another paper variant (their runlocal runs "
            "are in tests/runtime/shipped_configs_test.py)",
        )
        for model, arm, ckpt in [
            ("qwen3_4b", "cleaner", "Qwen3-4B-RA-SFT"),
            ("qwen2_7b", "baseline", "Qwen2.5-7B-RA-SFT"),
        ]
    },
    "python launch/train.py --config=configs/paper.py:model=qwen2_7b,arm=cleaner,runlocal "
    "--workdir=/tmp/runlocal": Plan(CHECK, f"{_SHIPPED}[paper:model=qwen2_7b,arm=cleaner]"),
    "python launch/train.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner,reference,"
    "runlocal --workdir=/tmp/ref_runlocal": Plan(RUN),
    "python launch/train.py --config=configs/paper.py:arm=baseline --print_config": Plan(
        CHECK, "prints the config and stops before any check"
    ),
    "python launch/train.py --config=configs/demo.py:full,arm=baseline --print_config": Plan(
        CHECK, "prints the config and stops before any check"
    ),
    # launch/
    "python launch/bench_decode_attention.py --out /tmp/decode_attention.json": Plan(SKIP, _BENCH),
    "python launch/bench_model.py --out=/tmp/bench_model.json --reps=3": Plan(SKIP, _BENCH),
    "python launch/bench_sampler.py --out=/tmp/bench_sampler.json": Plan(SKIP, _BENCH),
    "python launch/bench_sampler.py --batches=32 --reps=5 --noextras --profile_dir=/tmp/prof": Plan(
        SKIP, _BENCH
    ),
    "python launch/bench_scale.py --out=/tmp/bench_scale.json": Plan(SKIP, _BENCH),
    "python launch/bench_tools.py --out=/tmp/bench_tools.json": Plan(SKIP, _BENCH),
    "python launch/bench_tools.py --skip_tools --out=/tmp/bench_saar.json": Plan(SKIP, _BENCH),
    "python launch/bench_async.py --demo_dir=/tmp/cleaner_demo --out=/tmp/bench_async.json": Plan(
        SKIP, _BENCH
    ),
    "python launch/bench_train.py --out=/tmp/bench_train.json": Plan(SKIP, _BENCH),
    "python launch/convert.py --hf_dir=/ckpt/Qwen3-4B --out_dir=/tmp/qwen3_4b_export "
    "--dtype=bfloat16 [--torch_check]": Plan(RUN),
    "python launch/demo.py --mode=full --workdir=/tmp/cleaner_demo": Plan(
        SKIP, "the whole study (~15 min); its quick mode runs in tests/study/demo_test.py"
    ),
    "python launch/demo.py --mode=quick --workdir=/tmp/cleaner_quick": Plan(
        SKIP, "~3 min; this exact command (another workdir) is tests/study/demo_test.py"
    ),
    **{
        f"python launch/demo.py --mode={mode} --workdir=/tmp/cleaner_{short}": Plan(
            SKIP,
            f"long's sizes with other arms ({mode}; ~30 min); the same stages run in quick mode "
            "in tests/study/demo_test.py, its arms' configs in tests/runtime/configs_test.py",
        )
        for mode, short in (("correction", "corr"), ("async", "async"), ("reference", "ref"))
    },
    "python launch/demo.py --mode=long --workdir=/tmp/cleaner_long": Plan(
        SKIP,
        "the long study (est. ~45 min); the same stages run in quick mode in "
        "tests/study/demo_test.py, its sizes are checked in test_task_sizes_fit_the_demo_ranges",
    ),
    "python launch/evaluate.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner "
    "--checkpoint=/runs/qwen3_4b_cleaner/hf_export/step_750 --dataset_kind=aime "
    "--dataset=/data/aime24.parquet --out=/runs/eval/aime24": Plan(
        CHECK, "the README evaluate command with other paths (RUN above)"
    ),
    "python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/x": Plan(
        CHECK, f"{_SHIPPED}[demo:full,arm=cleaner]"
    ),
    "python launch/evaluate.py --config=configs/demo.py:runlocal --checkpoint=/tmp/x "
    "--config.tokenizer_path=/tmp/x/assets/tokenizer --dataset_kind=agentrl "
    "--dataset=/tmp/x/assets/test.jsonl --n=4 --out=/tmp/x/eval": Plan(
        CHECK,
        "evaluates the workdir the previous command trains (that run is shipped_configs_"
        "test); an orbax workdir's policy is checked in tests/runtime/evaluation_test.py",
    ),
    "python launch/gpu_check.py --out=/tmp/gpu_check.json": Plan(SKIP, "needs an H100/H200"),
    "python launch/gpu_check.py --tiny --out=/tmp/gpu_check.json": Plan(
        SKIP, "its CPU dry run takes minutes (launch/gpu_check.sh, GPU_CHECK_TINY=1)"
    ),
    "python launch/memory_plan.py --row_len=8192 --tokens_per_device=8192 --kv_seqs=16 "
    "--kv_seq_len=8192 --json=/tmp/plan.json": Plan(
        SKIP,
        "compiles the training step at these shapes (minutes on CPU); "
        "tests/runtime/memory_plan_test.py checks the plan",
    ),
    "python launch/bench_scan_layers.py --platform=tpu --out=/tmp/bench_scan_layers_tpu.json": Plan(
        SKIP, _BENCH
    ),
    "python launch/bench_scan_layers.py --platform=cpu --out=/tmp/bench_scan_layers_cpu.json": Plan(
        SKIP, _BENCH
    ),
    "python launch/gpu_compile.py --target=h100 --out=/tmp/gpu_compile.json": Plan(
        SKIP, "needs the CUDA plugin's separate venv (2.3 GB; see its docstring)"
    ),
    **{
        f"python launch/tpu_compile.py {_PAPER_Q3} {args}": Plan(
            SKIP,
            "compiles Qwen3-4B for a TPU slice (minutes); tests/runtime/aot_test.py compiles "
            "the runlocal paper config's every program for v5p-8 and v4-8 the same way",
        )
        for args in (
            "--topology=v5p-8 --json=/tmp/tpu_compile.json",
            "--topology=v5p-128 --programs=update,recompute",
            "--topology=v5p-8 --programs=recompute --recompute_lengths=2048,8192,20480",
        )
    },
}

# /data and /ckpt names the docs use -> (schema or model, how the tiny stand-in is made).
DATA = {
    "open_agentrl_30k.parquet": "agentrl",
    "aime24_agentrl.parquet": "agentrl",
    "aime24.parquet": "aime",
    "sft.jsonl": "sft",
}
CKPT = {
    "Qwen3-4B-Instruct-2507": "qwen3",
    "Qwen3-4B-RA-SFT": "qwen3",
    "Qwen3-1.7B-RA-SFT": "qwen3",
    "Qwen3-4B": "qwen3",
    "Qwen2.5-7B-RA-SFT": "qwen2",
}
# Earlier runs a command reads (an HF export), made from the tiny Qwen3 checkpoint.
EXPORTS = ("runs/q3/hf_export/step_750", "runs/qwen3_4b_cleaner/hf_export/step_750")

# Tiny budgets appended to RUN commands (the shrink `:runlocal` applies), per entry point.
_TINY_ROLLOUT = [
    "--config.rollout.max_response_tokens=128",
    "--config.rollout.max_turns=4",
    "--config.rollout.engine.max_seq_len=512",
    "--config.rollout.engine.max_slots=4",
    "--config.rollout.engine.prefill_chunk=64",
    "--config.reward.overlong_buffer=32",
    "--config.data.max_prompt_tokens=384",
    "--config.sandbox.num_workers=2",
]
TINY = {
    "launch/train.py": [
        "--config.total_steps=1",
        "--config.rollout.prompts_per_step=2",
        "--config.rollout.n=2",
        "--config.train.mini_batch_prompts=2",
        "--config.train.row_len=512",
        "--config.train.logprob_chunk=128",
        "--config.model.attention_block=128",
        "--config.validation.every=0",
        "--config.checkpoint.every=1",
        *_TINY_ROLLOUT,
    ],
    "launch/sft.py": [
        "--config.sft.epochs=1",
        "--config.sft.row_len=1024",
        "--config.sft.rows_per_step=8",
        "--config.train.logprob_chunk=128",
        "--config.model.attention_block=128",
    ],
    "launch/evaluate.py": ["--n=2", "--max_problems=1", *_TINY_ROLLOUT],
    "launch/convert.py": ["--check_seq=8"],
}

_PREFIX = re.compile(r"^(python|bash|gcloud|CUDA_VISIBLE_DEVICES=|\.venv/bin/python)\b")


# --------------------------------------------------------------------------- collecting


def _join_continuations(lines: list[str]) -> list[str]:
    out, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def _commands_in(text: str) -> list[str]:
    found = []
    for line in _join_continuations(text.splitlines()):
        line = line.strip()
        if _PREFIX.match(line):
            found.append(" ".join(line.split()))
        # "cmd  # or: other cmd" shows a second command.
        if m := re.search(r"# or: (.+)$", line):
            found.append(" ".join(m.group(1).split()))
    return [re.sub(r"\s+# .*$", "", c) for c in found]  # a trailing "# comment" is not in it


def documented_commands() -> dict[str, list[str]]:
    """command -> the doc files that show it."""
    out: dict[str, list[str]] = {}
    for rel in DOC_FILES:
        text = (ROOT / rel).read_text()
        if rel.endswith(".md"):
            blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
        else:
            doc = ast.get_docstring(ast.parse(text), clean=False)
            blocks = [doc or ""]
        for block in blocks:
            for cmd in _commands_in(block):
                out.setdefault(cmd, []).append(rel)
    return out


def test_every_documented_command_is_reviewed():
    docs = documented_commands()
    missing = [c for c in docs if c not in PLANS]
    stale = [c for c in PLANS if c not in docs]
    assert not missing, "documented but not in PLANS (add and review):\n" + "\n".join(missing)
    assert not stale, "in PLANS but no doc shows it (remove):\n" + "\n".join(stale)
    for cmd, plan in PLANS.items():
        assert plan.action in (RUN, CHECK, SKIP), cmd
        assert plan.action == RUN or plan.reason, f"{plan.action} needs a reason: {cmd}"


# --------------------------------------------------------------------------- assets and mapping


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny stand-ins for every /data and /ckpt path the docs name, and the dirs they expect."""
    from cleaner_jax.agent.tokenizer import load_tokenizer
    from cleaner_jax.data import demo_assets
    from cleaner_jax.models.testing import save_tiny_checkpoint, tiny_variant

    root = tmp_path_factory.mktemp("documented")
    synth = demo_assets.prepare_assets(str(root / "synthetic"), n_sft=8, n_rl_train=8, n_test=4)
    tokenizer = load_tokenizer(synth["tokenizer"])
    models = {}
    # The real models' context lengths, so that the paper budgets (23,040 tokens) check as they
    # would against the real checkpoints.
    for arch, context in (("qwen3", 40960), ("qwen2", 32768)):
        d = root / "models" / arch
        cfg = tiny_variant(arch, vocab_size=len(tokenizer), max_position_embeddings=context)
        save_tiny_checkpoint(str(d), cfg)
        tokenizer.save_pretrained(str(d))
        models[arch] = d
    for name, arch in CKPT.items():
        (root / "ckpt").mkdir(exist_ok=True)
        (root / "ckpt" / name).symlink_to(models[arch])
    rows = [json.loads(line) for line in open(synth["rl_train"])]
    (root / "data").mkdir()
    writers = {
        "agentrl": lambda p: pq.write_table(pa.Table.from_pylist(rows), p),
        "aime": lambda p: pq.write_table(
            pa.Table.from_pylist([{"id": 1, "problem": "What is 6*7?", "answer": "42"}]), p
        ),
        "sft": lambda p: shutil.copy(synth["sft"], p),
    }
    for name, schema in DATA.items():
        writers[schema](root / "data" / name)
    for rel in EXPORTS:
        shutil.copytree(models["qwen3"], root / rel)
    # The demo docstring's DIR: the demo's assets and an SFT export (a stand-in with its vocab).
    shutil.copytree(root / "synthetic", root / "DIR" / "assets")
    shutil.copytree(models["qwen3"], root / "DIR" / "sft" / "hf_export" / "final")
    # evaluate's smoke run reads the workdir `train.py --workdir=/tmp/x` prepares.
    shutil.copytree(root / "synthetic", root / "tmp" / "x" / "assets")
    return root


def _schema_uses(argv: list[str]) -> list[tuple[str, str]]:
    """(/data path, schema the command reads it as)."""
    kind = next((a.split("=", 1)[1] for a in argv if a.startswith("--dataset_kind=")), "aime")
    fields = {
        "--config.data.train_files=": "agentrl",
        "--config.data.val_files=": "agentrl",
        "--config.sft.train_files=": "sft",
        "--dataset=": kind,
    }
    return [
        (p, schema)
        for a in argv
        for prefix, schema in fields.items()
        if a.startswith(prefix)
        for p in re.findall(r"/data/[\w.\-]+", a)
    ]


def to_local(cmd: str, root: pathlib.Path, strict: bool = True) -> list[str]:
    """The argv this machine runs for `cmd`: wrappers stripped, paths mapped into `root`;
    `strict`: every /data and /ckpt path has a stand-in of the schema the command reads."""
    if cmd.startswith("gcloud "):
        inner = re.search(r'--command="(.*)"$', cmd).group(1).replace('\\"', '"')
        cmd = inner.split("&&", 1)[1].strip()
    cmd = re.sub(r"^CUDA_VISIBLE_DEVICES=\S+\s+", "", cmd)
    cmd = re.sub(r"\[(--\w+)\]", r"\1", cmd)  # an optional flag shown as [--flag]
    argv = shlex.split(cmd)
    for path, schema in _schema_uses(argv) if strict else ():
        name = path.removeprefix("/data/")
        assert DATA.get(name) == schema, f"{path} is read as {schema}; DATA says {DATA.get(name)}"
    for name in re.findall(r"/ckpt/([\w.\-]+)", cmd) if strict else ():
        assert name in CKPT, f"/ckpt/{name} has no tiny stand-in in CKPT"
    mapped = []
    for a in argv:
        a = re.sub(r"(?<![\w/])/(data|ckpt|runs|tmp|mnt)/", lambda m: f"{root}/{m.group(1)}/", a)
        mapped.append(re.sub(r"\bDIR\b", str(root / "DIR"), a))
    if mapped[0] in ("python", ".venv/bin/python"):
        mapped[0] = sys.executable
    return mapped


def _env(root: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = xla.strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(root / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _run(argv: list[str], root: pathlib.Path, timeout: int = 600):
    return subprocess.run(
        argv, cwd=ROOT, env=_env(root), capture_output=True, text=True, timeout=timeout
    )


def _defined_flags(script: pathlib.Path) -> set[str]:
    """The flags `script` defines: absl `flags.DEFINE_*("name", ...)` or argparse
    `add_argument("--name", ...)` (and cli.py's, for the launchers that use it)."""
    names = {"verbose", "check_only", "print_config", "helpshort", "helpfull"}
    for node in ast.walk(ast.parse(script.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if node.func.attr.startswith("DEFINE_") and args:
            names.add(args[0])
        if node.func.attr == "add_argument":
            names.update(a[2:].replace("-", "_") for a in args if a.startswith("--"))
    return names


# --------------------------------------------------------------------------- the commands


def _check_outputs(cmd: str, argv: list[str], root: pathlib.Path) -> None:
    """What a RUN command must have written (beyond exit status 0)."""
    script = argv[1]
    value = lambda flag: next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}="))  # noqa: E731
    if script == "launch/train.py":
        rows = [json.loads(x) for x in open(pathlib.Path(value("workdir")) / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [1] and "train/loss" in rows[0], rows
    elif script == "launch/sft.py":
        assert (pathlib.Path(value("workdir")) / "hf_export/final/config.json").exists()
    elif script == "launch/evaluate.py":
        summary = json.loads((pathlib.Path(value("out")) / "summary.json").read_text())
        assert set(summary["modes"]) == {"off", "on"}, summary["modes"].keys()
    elif script == "launch/convert.py":
        assert (pathlib.Path(value("out_dir")) / "config.json").exists()


@pytest.mark.parametrize("cmd", list(PLANS), ids=range(len(PLANS)))
def test_documented_command(cmd, assets):
    plan = PLANS[cmd]
    argv = to_local(cmd, assets)
    script = argv[1] if argv[0] == sys.executable else None
    if script and script.startswith("launch/") and script.endswith(".py"):
        defined = _defined_flags(ROOT / script)
        names = [a[2:].split("=")[0] for a in argv[2:] if a.startswith("--")]
        unknown = {
            n
            for n in names
            if not n.startswith("config.")
            and n not in defined
            and n.removeprefix("no") not in defined
        }
        assert not unknown, f"{cmd}\n  flags {unknown} are not defined by {script}"
    if plan.action == SKIP:
        print(f"\nSKIP  {cmd}\n      {plan.reason}")
        return
    if plan.action == CHECK:
        argv = [*argv, "--check_only"]
    else:
        argv = [*argv, *TINY.get(script, [])]
    out = _run(argv, assets)
    print(f"\n{plan.action:5s} {cmd}\n      -> exit {out.returncode} {plan.reason}")
    assert out.returncode == 0, f"{plan.action} {cmd}\n{' '.join(argv)}\n{out.stderr[-3000:]}"
    if plan.action == RUN:
        _check_outputs(cmd, argv, assets)


# --------------------------------------------------------------------------- user mistakes

_GRPO = next(c for c, p in PLANS.items() if p.action == RUN and "launch/train.py" in c)
_EVAL = next(c for c, p in PLANS.items() if p.action == RUN and "launch/evaluate.py" in c)
_SFT = next(c for c, p in PLANS.items() if p.action == RUN and "launch/sft.py" in c)

# name -> (documented command, (text, what the user types instead) or None, flags the user adds,
# what the one line must say). Tiny budgets come first, so that only the mistake fails.
MISTAKES = {
    "missing_train_file": (
        _GRPO,
        ("open_agentrl_30k.parquet", "open_agentrl_31k.parquet"),
        [],
        ["data.train_files", "open_agentrl_31k.parquet does not exist"],
    ),
    "no_train_files": (
        _GRPO,
        ("--config.data.train_files=", "--config.data.val_files="),
        [],
        ["data.train_files is empty", "--config.data.train_files="],
    ),
    "missing_checkpoint": (
        _GRPO,
        ("Qwen3-4B-RA-SFT", "Qwen3-4B-RA-SFTX"),
        [],
        ["model.hf_path", "Qwen3-4B-RA-SFTX does not exist"],
    ),
    "mistyped_field": (
        _GRPO,
        ("--config.model.hf_path=", "--config.model.hf_pth="),
        [],
        ["--config.model.hf_pth", 'did you mean "hf_path"'],
    ),
    "ill_typed_field": (
        _GRPO,
        None,
        ["--config.rollout.n=two"],
        ["--config.rollout.n=two"],
    ),
    "budget_over_context": (
        _GRPO,
        None,
        [
            "--config.rollout.max_response_tokens=50000",
            "--config.rollout.engine.max_seq_len=60000",
            "--config.train.row_len=60000",
        ],
        ["rollout.max_response_tokens", "model's context (40960"],
    ),
    "budget_over_row": (
        _GRPO,
        None,
        ["--config.train.row_len=256"],
        ["does not fit train.row_len=256", "--config.train.row_len"],
    ),
    "url_workdir": (_GRPO, ("--workdir=/runs/cleaner", "--workdir=gs://b/r"), [], ["gs://b/r"]),
    "missing_sft_file": (_SFT, ("sft.jsonl", "sft2.jsonl"), [], ["sft.train_files", "sft2.jsonl"]),
    "missing_dataset": (_EVAL, ("aime24.parquet", "aime25.parquet"), [], ["--dataset", "aime25"]),
    "wrong_dataset_kind": (
        _EVAL,
        ("--dataset_kind=aime", "--dataset_kind=gpqa"),
        [],
        ["--dataset_kind=gpqa cannot read", "GPQA question"],
    ),
    "unknown_dataset_kind": (
        _EVAL,
        ("--dataset_kind=aime", "--dataset_kind=aime25"),
        [],
        ["--dataset_kind=aime25", "aime|gpqa|livecodebench|agentrl"],
    ),
    "missing_eval_checkpoint": (
        _EVAL,
        ("step_750", "step_751"),
        [],
        ["--checkpoint=", "step_751 does not exist"],
    ),
}


def _mistake_argv(name: str, root: pathlib.Path) -> list[str]:
    cmd, change, extra, _ = MISTAKES[name]
    if change:
        assert change[0] in cmd, (name, change)
        cmd = cmd.replace(*change, 1)
    argv = to_local(cmd, root, strict=False)
    tiny = [a for a in TINY[argv[1]] if "rollout" in a or "prompt" in a or "row_len" in a]
    return [*argv, *tiny, *extra, "--check_only"]


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_user_mistake_ends_in_one_line(name, assets):
    out = _run(_mistake_argv(name, assets), assets, timeout=120)
    lines = out.stderr.strip().splitlines()
    print(f"\n{name}: exit {out.returncode}: {lines[-1] if lines else ''}")
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    for text in MISTAKES[name][3]:
        assert text in errors[0], (text, errors[0])


def test_verbose_shows_the_traceback(assets):
    out = _run([*_mistake_argv("missing_train_file", assets), "--verbose"], assets, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr, out.stderr[-2000:]
    assert "ConfigError: data.train_files" in out.stderr
