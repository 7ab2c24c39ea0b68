"""From the locked ConfigDict of a `configs/` file to checked, typed settings.

`check_config` fails fast, before anything is built, on what a user can get wrong; the
`*_settings` functions are the only readers of the loops' ConfigDict fields (parts.py reads the
fields of the parts it builds); `parse_arg` parses the config files' big_vision-style variants.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os

import ml_collections

from cleaner_jax.rl import off_policy
from cleaner_jax.rl.off_policy import OffPolicyConfig

# The reference implementation's recipe (Open-CLEANER @91e40ad; README "Fidelity to the
# reference implementation"), as config sections -> fields: what any task takes. The paper
# config's `reference` variant also sets the sandbox's pre-imports and memory, validation with
# SAAR and the validation/checkpoint cadence.
REFERENCE_SWITCHES = {
    "saar": dict(
        similarity="reference",
        similarity_on="turn_tail",
        infra_failures_roll_back=True,
        max_rounds_before_disable=30,
        exhaustion_note="reference",
    ),
    "rollout": dict(
        max_calls_per_turn=1,
        extra_calls="ignore",
        max_tool_attempts=0,
        max_tool_response_chars=256,
        retries_count_as_turns=False,
    ),
    "sandbox": dict(truncation_marker="", max_infra_retries=0),
    "reward": dict(math_mode="reference"),
}


def apply_reference_switches(c: ml_collections.ConfigDict) -> None:
    """Sets `REFERENCE_SWITCHES` on a config (in place)."""
    for section, fields in REFERENCE_SWITCHES.items():
        c[section].update(fields)


class ConfigError(ValueError):
    """A config that cannot run as given: its message names the field and what to set."""


_CHECK_MODES = ("train", "sft", "eval")


def adapt_dtypes_to_platform(config: ml_collections.ConfigDict, platform: str) -> list[str]:
    """On TPU, float16 compute dtypes (`model.dtype`, `rollout.dtype`) become bfloat16, in place.

    The paper trains and samples in float16 (on GPUs, to limit the train/infer mismatch). A TPU
    has no float16 matrix unit (v5p's MXU takes bf16/int8), XLA's TPU compiler emulates it, and
    Mosaic kernels (splash, the paged kernel) special-case bf16/f32 only; bfloat16 keeps the
    sampler and trainer in the same dtype, which is what float16 was for. Loss scaling "auto"
    then resolves to none. Returns one line per changed field, each also logged as a warning;
    other platforms are left as configured.
    """
    if platform != "tpu":
        return []
    changed = []
    for section, field in (("model", "dtype"), ("rollout", "dtype")):
        if config[section][field] == "float16":
            config[section][field] = "bfloat16"
            changed.append(
                f"{section}.{field}: float16 -> bfloat16 on TPU (no float16 matrix unit; set "
                f"--config.{section}.{field}=bfloat16 to make this explicit)"
            )
    for line in changed:
        logging.warning("%s", line)
    return changed


def _model_context(config: ml_collections.ConfigDict, model_dir: str) -> int:
    """The model's `max_position_embeddings`, from `model_dir`'s config.json or the preset."""
    if model_dir:
        with open(os.path.join(model_dir, "config.json")) as f:
            return int(json.load(f).get("max_position_embeddings", 32768))
    from cleaner_jax.models import config as model_config_lib  # JAX: only when needed

    if config.model.preset == "tiny":
        return model_config_lib.tiny_config().max_position_embeddings
    preset = model_config_lib.PRESETS.get(config.model.preset)
    if preset is None:
        raise ConfigError(
            f"model.preset={config.model.preset!r} is unknown; use 'tiny' or one of "
            f"{sorted(model_config_lib.PRESETS)}"
        )
    return preset.max_position_embeddings


def _check_files(field: str, paths, schema: str, required: bool) -> None:
    flag = f"--config.{field}"
    if required and not paths:
        raise ConfigError(f"{field} is empty: pass {flag}='(\"/path/file.parquet\",)' ({schema})")
    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"{field}: {p} does not exist; fix the path in {flag} ({schema})")


def check_config(config: ml_collections.ConfigDict, mode: str, model_dir: str = "") -> None:
    """Fails fast, before anything is built, on what a user can get wrong in `config`.

    `mode`: "train" (launch/train.py), "sft" (launch/sft.py) or "eval" (launch/evaluate.py);
    `model_dir`: an HF checkpoint dir that replaces `model.hf_path` (evaluate's --checkpoint).
    Checks that `saar.start_step` is a step index, that the checkpoint, tokenizer and data paths
    exist and that the token budgets fit the sampler's sequence length, the packed training row
    and the model's context.
    Raises `ConfigError` naming the field.
    """
    if mode not in _CHECK_MODES:
        raise ValueError(f"mode={mode!r}: use one of {_CHECK_MODES}")
    start = config.saar.start_step
    if not isinstance(start, int) or start < 0:
        raise ConfigError(
            f"saar.start_step={start!r}: use a step index >= 0 (0 = SAAR from the first step; "
            "k = switched on at train step k, counted from 0)"
        )
    hf = config.model.hf_path
    if hf and not os.path.isfile(os.path.join(hf, "config.json")):
        state = "has no config.json" if os.path.isdir(hf) else "does not exist"
        raise ConfigError(
            f"model.hf_path: {hf} {state}; point --config.model.hf_path at a local HF "
            "checkpoint dir (config.json + *.safetensors)"
        )
    tok = config.tokenizer_path
    if tok and not os.path.isdir(tok):
        raise ConfigError(
            f"tokenizer_path: {tok} does not exist; point --config.tokenizer_path at a dir "
            "with tokenizer files, or leave it empty to use model.hf_path's"
        )
    synthetic = mode == "train" and config.prepare_synthetic
    if not (tok or hf or model_dir or synthetic):
        raise ConfigError(
            "no tokenizer: set --config.model.hf_path=CKPT (its tokenizer is used) or "
            "--config.tokenizer_path=DIR"
        )
    if mode == "sft":
        _check_files("sft.train_files", config.sft.train_files, "chat jsonl/parquet", True)
    if mode == "train":
        schema = "Open-AgentRL / verl schema"
        _check_files("data.train_files", config.data.train_files, schema, not synthetic)
        _check_files("data.val_files", config.data.val_files, schema, False)

    context = _model_context(config, model_dir or hf)
    budget = config.data.max_prompt_tokens + config.rollout.max_response_tokens
    what = (
        f"data.max_prompt_tokens + rollout.max_response_tokens = {config.data.max_prompt_tokens}"
        f" + {config.rollout.max_response_tokens} = {budget}"
    )
    limits = {"rollout.engine.max_seq_len": config.rollout.engine.max_seq_len}
    if mode == "train":
        limits["train.row_len"] = config.train.row_len
    for field, value in limits.items() if mode != "sft" else ():
        if budget > value:
            raise ConfigError(
                f"{what} does not fit {field}={value}: raise --config.{field} or lower the budgets"
            )
    if mode == "sft" and config.sft.row_len > context:
        raise ConfigError(
            f"sft.row_len={config.sft.row_len} exceeds the model's context ({context} "
            "positions): lower --config.sft.row_len"
        )
    if mode != "sft" and budget > context:
        raise ConfigError(
            f"{what} exceeds the model's context ({context} positions): lower the budgets"
        )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:variant]` → its ConfigDict, as `--config=` gives it (locked)."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["load_config", f"--config={spec}"])
    return values.config


def parse_arg(arg: str | None, **defaults):
    """big_vision-style config args: `"runlocal,seed=3"` → {"runlocal": True, "seed": 3, ...}.

    Only keys given in `defaults` are accepted (a typo fails); values are Python literals where
    they parse as one, else strings.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
        if not eq:
            out[key] = True
            continue
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    every: int  # steps; 0 = never
    n: int
    temperature: float
    top_p: float
    max_prompts: int  # 0 = all
    saar: bool  # test-time SAAR, when the arm has SAAR on


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the GRPO loop reads from the config (the parts it uses are built in parts.py)."""

    total_steps: int
    prompts_per_step: int
    n: int
    saar_enabled: bool
    saar_start_step: int  # SAAR from this train step on (0-based); 0 = from the start
    temperature: float
    estimator: str
    dynamic_sampling: bool  # DAPO: refill groups whose rewards are all equal
    max_sampling_rounds: int
    mini_batch_prompts: int
    row_len: int
    rows_per_micro: int
    old_logprobs: str  # "recompute" | "sampler"
    max_staleness: int  # rollout.max_staleness: 0 = synchronous; S >= 1 = async rollouts
    push_kv: str  # rollout.push_kv: "keep" | "reprefill" (in-flight K/V at a weight push)
    off_policy: OffPolicyConfig  # `loss.off_policy*`: the sampler/trainer correction
    logprob_chunk: int
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    shuffle_seed: int
    validation: ValidationSettings
    export_hf: bool

    def saar_active(self, step: int) -> bool:
        """Whether SAAR purifies the rollouts of train step `step` (0-based, the number of
        updates done so far); validation's test-time SAAR (`validation.saar`) follows it too."""
        return self.saar_enabled and step >= self.saar_start_step


def train_settings(config: ml_collections.ConfigDict) -> TrainSettings:
    c = config
    if c.train.old_logprobs not in ("recompute", "sampler"):
        raise ConfigError(
            f"train.old_logprobs must be 'recompute' or 'sampler', got {c.train.old_logprobs!r}"
        )
    correction = off_policy_settings(c)
    if c.rollout.max_staleness < 0 or c.rollout.push_kv not in ("keep", "reprefill"):
        raise ConfigError(
            f"rollout.max_staleness={c.rollout.max_staleness} must be >= 0 and rollout.push_kv="
            f"{c.rollout.push_kv!r} 'keep' or 'reprefill'"
        )
    return TrainSettings(
        total_steps=c.total_steps,
        prompts_per_step=c.rollout.prompts_per_step,
        n=c.rollout.n,
        saar_enabled=c.saar.enabled,
        saar_start_step=c.saar.start_step,
        temperature=c.rollout.temperature,
        estimator=c.advantage.estimator,
        dynamic_sampling=c.advantage.dynamic_sampling,
        max_sampling_rounds=c.advantage.max_sampling_rounds,
        mini_batch_prompts=c.train.mini_batch_prompts,
        row_len=c.train.row_len,
        rows_per_micro=c.train.rows_per_micro,
        old_logprobs=c.train.old_logprobs,
        max_staleness=int(c.rollout.max_staleness),
        push_kv=c.rollout.push_kv,
        off_policy=correction,
        logprob_chunk=c.train.logprob_chunk,
        train_files=tuple(c.data.train_files),
        val_files=tuple(c.data.val_files),
        shuffle_seed=c.data.shuffle_seed,
        validation=ValidationSettings(**c.validation),
        export_hf=c.checkpoint.export_hf,
    )


def off_policy_settings(c: ml_collections.ConfigDict) -> OffPolicyConfig:
    """`loss.off_policy*` checked against what the correction needs from the rest of the run."""
    try:
        cfg = off_policy.config_from(c.loss)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not cfg.enabled:
        return cfg
    if c.train.old_logprobs != "recompute":
        raise ConfigError(
            f"loss.off_policy={cfg.mode!r} weighs tokens by π_prox/μ and needs the trainer's "
            "π_prox: set train.old_logprobs='recompute' (old_logprobs='sampler' is the bypass "
            "mode, the ratio taken against μ itself: use it with loss.off_policy='none')"
        )
    if c.saar.enabled and not c.saar.recompute_spliced_logprobs:
        raise ConfigError(
            f"loss.off_policy={cfg.mode!r} with SAAR needs μ for spliced spans: set "
            "saar.recompute_spliced_logprobs=True (the sampler rescores them under the purified "
            "context); without it their log-probs were sampled under another context"
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class SftSettings:
    train_files: tuple[str, ...]
    epochs: int
    rows_per_step: int
    row_len: int
    tools_in_prompt: bool
    seed: int


def sft_settings(config: ml_collections.ConfigDict) -> SftSettings:
    s = config.sft
    if s.lr_schedule not in ("cosine", "constant"):
        raise ConfigError(f"sft.lr_schedule must be 'cosine' or 'constant', got {s.lr_schedule!r}")
    return SftSettings(
        train_files=tuple(s.train_files),
        epochs=s.epochs,
        rows_per_step=s.rows_per_step,
        row_len=s.row_len,
        tools_in_prompt=config.data.tools_in_prompt,
        seed=config.seed,
    )
