"""The base training config: the paper's GRPO/DAPO + SAAR defaults (DESIGN §1).

Files in `configs/` start from `base_config()` and override what differs (model, rollback
probability, learning rate, SAAR on/off, tiny local variants). Every field is here, so a mistyped
override on the command line fails against the locked config.
"""

from __future__ import annotations

import ast
import json
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 750

    # Model: a local HF checkpoint dir to import (hf_path: a real Qwen checkpoint or the HF export
    # of our SFT run), else random weights of a preset from cleaner_jax.models.config.PRESETS
    # ("tiny" uses model.tiny).
    c.model = ml_collections.ConfigDict(
        dict(
            preset="qwen3_4b_instruct_2507",
            hf_path="",
            # fp32 master weights (param_dtype); the training forward computes in `dtype`
            # (paper: fp16 actor and rollout to limit the train/infer mismatch).
            dtype="float16",
            param_dtype="float32",
            remat=True,
            # Training attention: "auto" (cuDNN flash on GPU, splash on TPU where our masks are
            # supported, else blockwise), "dense" (the [T, T] reference), "blockwise", "cudnn",
            # "splash"; `attention_block`: the blockwise path's query/key block length.
            attention="auto",
            attention_block=512,
            tiny=ml_collections.ConfigDict(
                dict(
                    # Qwen3ForCausalLM (q/k norm, no qkv bias) or Qwen2ForCausalLM (qkv bias,
                    # no q/k norm).
                    architecture="Qwen3ForCausalLM",
                    vocab_size=0,
                    hidden_size=64,
                    intermediate_size=128,
                    num_layers=2,
                    num_heads=4,
                    num_kv_heads=2,
                    head_dim=16,
                )
            ),
        )
    )
    c.tokenizer_path = ""  # default: model.hf_path

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.multiprocess = False  # jax.distributed.initialize() from the environment

    c.data = ml_collections.ConfigDict(
        dict(
            train_files=(),
            val_files=(),
            max_prompt_tokens=2560,
            shuffle_seed=0,
            # List the code_interpreter tool in the system prompt (Qwen's <tools> block).
            tools_in_prompt=True,
        )
    )

    c.rollout = ml_collections.ConfigDict(
        dict(
            prompts_per_step=128,
            n=16,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_turns=16,
            max_response_tokens=20480,
            max_tool_attempts=30,
            # The sampler's compute dtype and weight copy; "" = model.dtype (the paper: fp16 for
            # both). The sampler-vs-trainer log-prob gap is logged as logprob_mismatch/*.
            dtype="",
            engine=ml_collections.ConfigDict(
                dict(
                    page_size=16,
                    num_pages=0,  # 0: size the page pool from free device memory
                    max_slots=64,
                    prefill_chunk=512,
                    max_seq_len=23040,
                    # Paged attention kernel: "auto" (Pallas on GPU/TPU, else pure jnp), or
                    # "pallas_gpu", "pallas_tpu", "jnp" by name.
                    attention="auto",
                )
            ),
        )
    )
    c.saar = ml_collections.ConfigDict(
        dict(
            enabled=True,
            gamma=0.5,
            max_retries=3,
            rollback_probability=1.0,
            similarity_on="code",
            similarity="tokens",
            disable_after_exhaustion=True,
            recompute_spliced_logprobs=True,
        )
    )
    c.sandbox = ml_collections.ConfigDict(dict(num_workers=8, timeout_s=4.0))

    c.reward = ml_collections.ConfigDict(
        dict(
            math_mode="strict",
            overlong_buffer=4096,
            overlong_factor=1.0,
            overlong_policy_tokens_only=False,
        )
    )
    c.advantage = ml_collections.ConfigDict(dict(estimator="grpo", dynamic_sampling=False))
    c.loss = ml_collections.ConfigDict(
        dict(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip_c=10.0, entropy_coef=0.0)
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=2e-6,
            warmup_steps=20,
            weight_decay=0.01,
            grad_clip=1.0,
            # "auto": dynamic loss scaling when model.dtype is float16 (start 2**15, halve and
            # skip the step on non-finite gradients, double after 200 finite steps), none
            # otherwise; "dynamic" | "none" | a number (static scale, e.g. "1024").
            loss_scale="auto",
            # AdamW first-moment storage: "" = float32, "bfloat16" saves 2 bytes a parameter.
            mu_dtype="",
        )
    )
    c.train = ml_collections.ConfigDict(
        dict(
            mini_batch_prompts=32,
            row_len=23040,  # packed row length (tokens); >= prompt + response budget
            rows_per_micro=1,
            # "recompute" (B, prefix-shared; verl's) or "sampler" (A: the sampler's own log-probs;
            # only groups with stale spliced log-probs are scored).
            old_logprobs="recompute",
            # Log-probs, entropy and loss are computed this many tokens at a time, never as
            # whole-row [T, V] logits.
            logprob_chunk=1024,
        )
    )
    # Held-out validation measures the policy, so by default without SAAR in both arms (SAAR is a
    # training-time purifier; `saar=True` validates with test-time SAAR when the arm has it on).
    c.validation = ml_collections.ConfigDict(
        dict(every=25, n=16, temperature=1.0, top_p=0.6, max_prompts=0, saar=False)
    )
    c.checkpoint = ml_collections.ConfigDict(dict(every=25, keep=3, export_hf=True))
    c.log_every = 1
    # Generate the synthetic demo task and a tokenizer into the workdir and use them where no
    # tokenizer / training files are given (the `:runlocal` variants); real configs leave it off.
    c.prepare_synthetic = False

    # Cold-start SFT (launch/sft.py): chat trajectories with tool turns, loss on assistant turns.
    c.sft = ml_collections.ConfigDict(
        dict(
            train_files=(),
            epochs=2,
            rows_per_step=8,
            row_len=4096,
            learning_rate=1e-5,
            warmup_steps=10,
            # "cosine" (decays to 0 over the run) or "constant" after the warmup.
            lr_schedule="cosine",
            checkpoint_every=200,
        )
    )
    return c


class ConfigError(ValueError):
    """A config that cannot run as given: its message names the field and what to set."""


_CHECK_MODES = ("train", "sft", "eval")


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
    Checks that the checkpoint, tokenizer and data paths exist and that the token budgets fit
    the sampler's sequence length, the packed training row and the model's context.
    Raises `ConfigError` naming the field.
    """
    if mode not in _CHECK_MODES:
        raise ValueError(f"mode={mode!r}: use one of {_CHECK_MODES}")
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


# Per-model paper settings (DESIGN §1): preset, learning rate, rollback probability.
PAPER_MODELS = {
    "qwen3_4b": dict(preset="qwen3_4b_instruct_2507", learning_rate=2e-6, rollback_probability=1.0),
    "qwen2_7b": dict(preset="qwen2_5_7b_instruct", learning_rate=1e-6, rollback_probability=0.7),
}


def paper_config(model: str, saar: bool, arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's run for `model` with SAAR on (CLEANER) or off (baseline).

    `arg`: `runlocal` — a self-contained CPU smoke run of the same code path (`shrink_for_cpu`).
    """
    args = parse_arg(arg, runlocal=False)
    m = PAPER_MODELS[model]
    c = base_config()
    c.model.preset = m["preset"]
    c.optim.learning_rate = m["learning_rate"]
    c.saar.rollback_probability = m["rollback_probability"]
    c.saar.enabled = saar
    if args["runlocal"]:
        shrink_for_cpu(c)
    return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> None:
    """A random tiny model and tiny budgets: the real code path in a minute on a laptop CPU.

    The tiny model has the preset's architecture (so a Qwen2 config runs the Qwen2 code path:
    qkv bias, no q/k norm) and keeps the config's dtypes (fp32 master weights, fp16/bf16
    compute). With no tokenizer or training files given, the trainer prepares the synthetic
    demo task and its tokenizer in the workdir (`prepare_synthetic`).
    """
    from cleaner_jax.models import config as model_config_lib  # JAX: not for every config load

    if c.model.preset in model_config_lib.PRESETS:
        c.model.tiny.architecture = model_config_lib.PRESETS[c.model.preset].architecture
    c.model.preset = "tiny"
    c.model.remat = False
    c.prepare_synthetic = True
    c.total_steps = 2
    c.rollout.prompts_per_step = 2
    c.rollout.n = 2
    c.rollout.max_response_tokens = 256
    c.rollout.engine.max_seq_len = 1024
    c.rollout.engine.max_slots = 8
    c.rollout.engine.prefill_chunk = 64
    c.reward.overlong_buffer = 64  # the paper's 4096 would exceed the whole 256-token budget
    c.data.max_prompt_tokens = 512
    c.train.mini_batch_prompts = 2
    c.train.row_len = 1024
    c.train.logprob_chunk = 256
    c.model.attention_block = 128
    c.sandbox.num_workers = 2
    c.validation.every = 0
    c.checkpoint.every = 1


def demo_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The embedded miniature study (DESIGN §4): a tiny Qwen3-shaped model on the synthetic task.

    `arg`: `arm=cleaner|baseline`, `seed=N`, `runlocal` (2 steps, self-prepared assets, random
    init: a smoke run of the real train path). Data/tokenizer paths are filled by the demo
    (`cleaner_jax.rl.demo`) or, with `prepare_synthetic`, by the trainer itself.
    """
    args = parse_arg(arg, arm="cleaner", seed=0, runlocal=False)
    if args["arm"] not in ("cleaner", "baseline"):
        raise ValueError(f"arm must be 'cleaner' or 'baseline', got {args['arm']!r}")
    c = base_config()
    c.seed = args["seed"]
    c.total_steps = 16
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.tiny.update(
        dict(
            hidden_size=96,
            intermediate_size=288,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            # 4 x 48 > hidden_size on purpose: with head_dim 24 the copy circuit (question number
            # into the code, tool output into \boxed{}) formed ~100 steps later in the same drills.
            head_dim=48,
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.saar.enabled = args["arm"] == "cleaner"
    c.rollout.update(
        dict(
            prompts_per_step=8,
            n=8,
            temperature=1.0,
            top_p=1.0,
            max_turns=6,
            max_response_tokens=384,
            max_tool_attempts=8,
        )
    )
    c.rollout.engine.update(
        dict(page_size=16, num_pages=2048, max_slots=64, prefill_chunk=128, max_seq_len=640)
    )
    c.sandbox.update(dict(num_workers=2, timeout_s=4.0))
    c.reward.overlong_buffer = 64
    c.data.max_prompt_tokens = 256
    c.data.shuffle_seed = args["seed"]
    # Without Qwen's ~150-token <tools> block the question sits ~40 tokens before the code that
    # copies its numbers; with it, the 2-layer model did not learn to copy within the CPU budget.
    c.data.tools_in_prompt = False
    # With the 8-epoch SFT model (held-out acc ~0.66 at step 0), 1e-3 made both arms worse in
    # 6 steps (mean held-out acc 0.55 baseline / 0.48 cleaner, 3 seeds); 3e-4 kept it at
    # 0.63-0.69 (2 seeds each). (With the weaker 5-epoch model 5e-5 and 2e-4 changed nothing.)
    c.optim.update(dict(learning_rate=3e-4, warmup_steps=2, weight_decay=0.0))
    # fp32 sampler and trainer: their log-probs differ by ~5e-8 nats on average (7e-6 at most,
    # measured in the demo's GRPO runs), so recomputing them (1-8 s a step on 2 cores) buys
    # nothing here; groups with stale spliced log-probs are still scored by the trainer.
    c.train.update(
        dict(mini_batch_prompts=8, row_len=640, rows_per_micro=8, old_logprobs="sampler")
    )
    c.validation.update(dict(every=4, n=2, temperature=1.0, top_p=1.0, max_prompts=32))
    c.checkpoint.update(dict(every=8, keep=1, export_hf=False))
    c.sft.update(
        dict(
            epochs=5,
            # 2 rows (~7 conversations) per step: twice the updates of 4 rows for the same compute;
            # the copy circuit is a matter of update count (4 rows: 0.17/0.47 held-out copy
            # accuracy for question number/tool output after 5 epochs, 2 rows: 0.33/0.89).
            rows_per_step=2,
            row_len=640,
            learning_rate=3e-3,
            warmup_steps=20,
            # Copying numbers forms late (a phase change after ~200 steps at the full rate); a
            # cosine decay had taken the rate away by then and the model copied nothing.
            lr_schedule="constant",
            checkpoint_every=100000,
        )
    )
    if args["runlocal"]:
        c.prepare_synthetic = True
        c.total_steps = 2
        c.rollout.update(dict(prompts_per_step=2, n=2))
        c.validation.every = 0
        c.checkpoint.every = 1
    return c
