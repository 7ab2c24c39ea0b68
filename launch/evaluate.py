r"""Evaluate a checkpoint: n samples per problem, pass@k, with and without test-time SAAR.

  python launch/evaluate.py --config=configs/paper.py:model=qwen3_4b,arm=cleaner \
    --checkpoint=/runs/qwen3_4b_cleaner/hf_export/step_750 \
    --dataset_kind=aime --dataset=/data/aime24.parquet --out=/runs/eval/aime24

`--checkpoint`: a local HF dir (config.json + safetensors; its tokenizer is used unless
--config.tokenizer_path is set), or an orbax checkpoint dir of our trainer (`WORKDIR` or
`WORKDIR/checkpoints`; the model shape then comes from the config). Defaults are the paper's
validation sampling (temperature 1.0, top-p 0.6, n=16); `--saar=both` runs every problem without
and with test-time SAAR and reports SAAR's latency overhead. Budgets (turns, response tokens,
engine slots) come from the config: `--config.rollout.max_response_tokens=...`.
Outputs in --out: <mode>.jsonl per problem, summary.json, and for LiveCodeBench
livecodebench_<mode>.json in its custom-evaluator format (a list of {question_id, code_list}).

Smoke run on the demo's assets (random tiny model, CPU):
  python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/x
  python launch/evaluate.py --config=configs/demo.py:runlocal --checkpoint=/tmp/x \
    --config.tokenizer_path=/tmp/x/assets/tokenizer --dataset_kind=agentrl \
    --dataset=/tmp/x/assets/test.jsonl --n=4 --out=/tmp/x/eval
"""

import json
import os

from absl import flags, logging
from ml_collections import config_flags

from cleaner_jax.data.readers import READERS, read_dataset
from cleaner_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "", "HF checkpoint dir or orbax checkpoint dir; empty = the config's model."
)
_STEP = flags.DEFINE_integer("step", None, "Orbax step to restore (default: newest usable).")
_KIND = flags.DEFINE_enum(
    "dataset_kind", "aime", ["aime", "gpqa", "livecodebench", "agentrl"], "Dataset schema."
)
_DATASET = flags.DEFINE_list("dataset", None, "Dataset file(s) or dir(s).", required=True)
_N = flags.DEFINE_integer("n", 16, "Samples per problem.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_TOP_P = flags.DEFINE_float("top_p", 0.6, "Nucleus sampling top-p.")
_SAAR = flags.DEFINE_enum("saar", "both", ["both", "on", "off"], "Test-time SAAR.")
_KS = flags.DEFINE_list("ks", ["1", "2", "4", "8", "16"], "pass@k values (k <= n are kept).")
_BATCH = flags.DEFINE_integer(
    "problems_per_batch", 1, "Problems rolled out concurrently (1 = exact per-problem latency)."
)
_MAX_PROBLEMS = flags.DEFINE_integer("max_problems", 0, "Evaluate only the first N (0 = all).")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def _print_summary(summary: dict) -> None:
    modes = summary["modes"]
    ks = sorted({k for m in modes.values() for k in m["pass@k"]}, key=int)
    head = [
        "mode",
        *[f"pass@{k}" for k in ks],
        "wall_s",
        "tok/s",
        "calls/traj",
        "1st-fail",
        "rollbacks",
        "final_fail/traj",
    ]
    print(" | ".join(head))
    for mode, m in modes.items():
        t = m["tool_stats"]
        row = [
            mode,
            *[f"{m['pass@k'][k]:.4f}" for k in ks],
            f"{m['rollout_wall_s']:.1f}",
            f"{m['response_tokens_per_s']:.1f}",
            f"{t.get('tool_calls_per_traj', 0):.2f}",
            f"{t.get('first_attempt_failure_rate', 0):.3f}",
            f"{t.get('rollbacks_triggered_sum', 0):.0f}",
            f"{t.get('final_tool_failures_per_traj', 0):.3f}",
        ]
        print(" | ".join(row))
    if "saar_overhead" in summary:
        o = summary["saar_overhead"]
        print(
            f"SAAR latency overhead: total {100 * o['total_overhead']:+.1f}% "
            f"({o['total_off_s']:.1f}s -> {o['total_on_s']:.1f}s), per-problem median "
            f"{100 * o['per_problem_overhead_median']:+.1f}%"
        )


def _read_examples(kind: str, paths: list[str]):
    """The dataset, read before the model is built; a path or schema mistake is a `UserError`."""
    try:
        return read_dataset(kind, paths)
    except FileNotFoundError as e:
        raise cli.UserError(f"--dataset: {e}") from e
    except (KeyError, ValueError) as e:
        raise cli.UserError(
            f"--dataset_kind={kind} cannot read {', '.join(paths)} "
            f"({e.args[0] if e.args else e}); pass the --dataset_kind of the file's schema "
            f"({' | '.join(sorted(READERS))})"
        ) from e


def main(argv):
    del argv
    checkpoint = _CHECKPOINT.value
    config = _CONFIG.value
    if checkpoint and not os.path.isdir(checkpoint):
        raise cli.UserError(
            f"--checkpoint={checkpoint} does not exist; pass an HF dir (config.json + "
            "safetensors) or a trainer workdir (or its checkpoints/ dir)"
        )
    hf_checkpoint = bool(checkpoint) and os.path.isfile(os.path.join(checkpoint, "config.json"))
    if config.prepare_synthetic and not (config.tokenizer_path or hf_checkpoint):
        raise cli.UserError(
            "this config prepares synthetic assets for training; pass "
            "--config.tokenizer_path=WORKDIR/assets/tokenizer of the run you evaluate "
            "(an HF export, WORKDIR/hf_export/step_N, brings its own)"
        )
    if not cli.start(config, "eval", None, model_dir=checkpoint if hf_checkpoint else ""):
        return
    examples = _read_examples(_KIND.value, list(_DATASET.value))
    if cli.CHECK_ONLY.value:
        return
    from cleaner_jax.runtime import (
        evaluation,  # after the checks, so that a mistake fails in seconds
    )

    try:
        options = evaluation.EvalOptions(
            dataset_kind=_KIND.value,
            dataset=tuple(_DATASET.value),
            n=_N.value,
            temperature=_TEMPERATURE.value,
            top_p=_TOP_P.value,
            saar=_SAAR.value,
            ks=tuple(int(k) for k in _KS.value),
            problems_per_batch=_BATCH.value,
            max_problems=_MAX_PROBLEMS.value,
            checkpoint=checkpoint,
            checkpoint_step=_STEP.value,
        )
    except ValueError as e:  # n or problems_per_batch < 1, a --ks that is not a number
        raise cli.UserError(str(e)) from e

    logging.info("evaluating %s on %s", checkpoint or "the config's model", options.dataset)
    summary = evaluation.evaluate(config, options, _OUT.value, examples=examples)
    _print_summary(summary)
    print(json.dumps({m: s["pass@k"] for m, s in summary["modes"].items()}))
    print(f"outputs in {_OUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
