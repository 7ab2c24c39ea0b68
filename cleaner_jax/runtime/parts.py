"""Builds every part a run uses from the locked config, once: the composition layer.

`build(config, role, workdir)` turns a `configs/` ConfigDict into a `Runtime`: tokenizer and chat
format, model (mesh + parameters: a local HF checkpoint, an orbax checkpoint of our trainer, or
random initialisation of a preset), sampling engine on a `rollout.dtype` copy of the weights,
tool sandbox pool, reward scorer with its judge sandbox, the rollout collector (SAAR settings and
limits), optimizer + updater, checkpointer and metrics writer. The trainer (`trainer.py`), SFT
(`sft.py`) and evaluation (`evaluation.py`) take their parts from it; they do not read the
ConfigDict themselves (their own loop settings come from `config.*_settings`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cleaner_jax.agent.chat import ChatFormat
from cleaner_jax.agent.sandbox import SandboxConfig, SandboxPool
from cleaner_jax.agent.tokenizer import load_tokenizer
from cleaner_jax.data import demo_assets
from cleaner_jax.models import config as model_config_lib
from cleaner_jax.models import hf_io, sharding
from cleaner_jax.models.platform import platform_of
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import distributed
from cleaner_jax.rl.rewards import OverlongConfig, RewardConfig, RewardScorer
from cleaner_jax.rl.update import (
    LossConfig,
    OptimConfig,
    Updater,
    make_optimizer,
    make_schedule,
)
from cleaner_jax.runtime import config as config_lib
from cleaner_jax.runtime.checkpoint import Checkpointer
from cleaner_jax.runtime.collect import Collector
from cleaner_jax.runtime.metrics import MetricsWriter
from cleaner_jax.runtime.sampler_budget import (
    KV_MEMORY_FRACTION,
    kv_pages_for,
    mesh_axes,
    placement_for,
    sampler_dtype,
    split_devices,
)
from cleaner_jax.saar import RolloutLimits, SaarConfig
from cleaner_jax.sampling import Engine, EngineConfig
from cleaner_jax.sampling.placement import SamplerPlacement


@dataclasses.dataclass
class ModelBundle:
    cfg: model_config_lib.ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State  # float32 master parameters, sharded on `mesh`
    mesh: jax.sharding.Mesh


def tokenizer_for(config: ml_collections.ConfigDict):
    path = config.tokenizer_path or config.model.hf_path
    if not path:
        raise ValueError(
            "no tokenizer: set config.tokenizer_path (or model.hf_path) to a local dir holding "
            "tokenizer files (the demo builds one with cleaner_jax.agent.tokenizer.build_tokenizer)"
        )
    return load_tokenizer(path)


# The attention layout each architecture fixes (models/config.py checks these combinations).
_TINY_ARCHITECTURES = {
    "Qwen3ForCausalLM": dict(qkv_bias=False, qk_norm=True),
    "Qwen2ForCausalLM": dict(qkv_bias=True, qk_norm=False),
}


def model_config_for(config: ml_collections.ConfigDict, vocab_size: int):
    """The `ModelConfig` of `config.model`: from `hf_path`, else the preset ("tiny": model.tiny),
    with the config's dtypes, remat and training-attention settings."""
    m = config.model
    common = dict(
        param_dtype=m.param_dtype,
        dtype=m.dtype,
        remat=m.remat,
        attention=m.attention,
        attention_block=m.attention_block,
        scan_layers=m.scan_layers,
    )
    if m.hf_path:
        return model_config_lib.ModelConfig.from_pretrained(m.hf_path, **common)
    if m.preset == "tiny":
        tiny = dict(m.tiny)
        arch = tiny["architecture"]
        if arch not in _TINY_ARCHITECTURES:
            raise ValueError(
                f"model.tiny.architecture={arch!r}: use one of {sorted(_TINY_ARCHITECTURES)}"
            )
        tiny.update(_TINY_ARCHITECTURES[arch])
        tiny["vocab_size"] = tiny["vocab_size"] or vocab_size
        return model_config_lib.tiny_config(**tiny, **common)
    if m.preset not in model_config_lib.PRESETS:
        raise ValueError(
            f"model.preset={m.preset!r} is unknown; use 'tiny' or one of "
            f"{sorted(model_config_lib.PRESETS)}"
        )
    return model_config_lib.PRESETS[m.preset].replace(**common)


def sampler_graphdef(bundle: ModelBundle, dtype: str) -> nnx.GraphDef:
    """The model structure computing in `dtype`, for the sampler's copy of the parameters.

    The compute dtype is static module state, so a sampler that runs in another dtype than the
    training forward needs its own graphdef; the parameter tree is the same.
    """
    if dtype == bundle.cfg.dtype:
        return bundle.graphdef
    cfg = bundle.cfg.replace(dtype=dtype)
    return nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))[0]


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> ModelBundle:
    """Creates the mesh and the parameters (sharded on it)."""
    mesh = sharding.make_mesh(mesh_axes(config), devices=split_devices(config)[1])
    cfg = model_config_for(config, vocab_size)
    if cfg.vocab_size < vocab_size:
        raise ValueError(
            f"the model's vocab ({cfg.vocab_size}) is smaller than the tokenizer's ({vocab_size})"
        )
    if config.model.hf_path:
        logging.info("importing HF checkpoint %s", config.model.hf_path)
        cfg, model = hf_io.load_hf_checkpoint(
            config.model.hf_path, cfg, dtype=cfg.param_dtype, mesh=mesh
        )
        graphdef, state = nnx.split(model)
        return ModelBundle(cfg, graphdef, state, mesh)

    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(config.seed)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding.state_shardings(abstract_state, mesh, cfg=cfg)
    logging.info("random initialisation of %s (%d params)", config.model.preset, cfg.num_params())

    def init():
        return nnx.split(Qwen(cfg, rngs=nnx.Rngs(config.seed)))[1]

    state = jax.jit(init, out_shardings=shardings)()
    return ModelBundle(cfg, graphdef, state, mesh)


def cast_state(state, dtype: str):
    """A copy of the parameters in `dtype` (for the sampler when it computes in fp16/bf16)."""
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if x.dtype != target else x, state)


def export_dir(workdir: str, name: str) -> str:
    """Where a run exports HF checkpoints: `workdir/hf_export/<name>` (e.g. step_750, final)."""
    return os.path.join(workdir, "hf_export", name)


def _orbax_dir(path: str) -> str:
    """The orbax step-directory root for `path` (a trainer workdir or its `checkpoints/`)."""
    sub = os.path.join(path, "checkpoints")
    return sub if os.path.isdir(sub) else path


def load_policy(config: ml_collections.ConfigDict, checkpoint: str = "", step: int | None = None):
    """(tokenizer, model bundle) for `checkpoint`.

    A dir with a `config.json` is an HF checkpoint (model shapes from it; its tokenizer unless
    `config.tokenizer_path` is set). Any other dir is an orbax checkpoint of our trainer: the
    model is the config's (`model.preset`/`model.hf_path`) and only the params are restored. An
    empty `checkpoint` builds the config's model as training would (random init or hf_path).
    """
    config = config.copy_and_resolve_references()
    if checkpoint and os.path.isfile(os.path.join(checkpoint, "config.json")):
        config.model.hf_path = checkpoint
    tokenizer = tokenizer_for(config)
    if not checkpoint or config.model.hf_path == checkpoint:
        return tokenizer, build_model(config, len(tokenizer))
    root = _orbax_dir(checkpoint)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"checkpoint {checkpoint!r} is neither an HF dir (no config.json) nor an orbax "
            "checkpoint directory; pass a trainer workdir, its checkpoints/ dir or an HF export"
        )
    mesh = sharding.make_mesh(mesh_axes(config), devices=split_devices(config)[1])
    cfg = model_config_for(config, len(tokenizer))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding.state_shardings(abstract, mesh, cfg=cfg)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    with Checkpointer(root, keep=None) as ckpt:
        restored = ckpt.restore(step, abstract_params=target, abstract_opt_state=None)
    logging.info("restored params of step %d from %s", restored.step, root)
    return tokenizer, ModelBundle(cfg, graphdef, restored.params, mesh)


def engine_config_from(config: ml_collections.ConfigDict) -> EngineConfig:
    """The sampler's `EngineConfig` from `rollout.engine`.

    `num_pages` 0 (or None) means "size the page pool from free device memory": `build` then
    passes the count `kv_pages_for` computes net of the training state (on backends that report
    no memory, the engine's default: enough pages for `max_slots` full sequences).
    """
    e = config.rollout.engine
    if e.num_pages and e.num_pages < 2:
        raise ValueError(
            f"rollout.engine.num_pages={e.num_pages}: need at least 2 (page 0 is the null page), "
            "or 0 to size the pool from device memory"
        )
    return EngineConfig(
        page_size=e.page_size,
        num_pages=e.num_pages or None,
        max_slots=e.max_slots,
        prefill_chunk=e.prefill_chunk,
        max_seq_len=e.max_seq_len,
        attention=e.attention,
        memory_fraction=e.get("memory_fraction", KV_MEMORY_FRACTION),
    )


def saar_config_from(config: ml_collections.ConfigDict) -> SaarConfig:
    """`saar` without `enabled` and `start_step` (whether a rollout uses SAAR is the collector's
    caller's choice: the trainer's `TrainSettings.saar_active`, the evaluator's mode)."""
    fields = dict(config.saar)
    del fields["enabled"], fields["start_step"]
    return SaarConfig(**fields)


def collector_for(config: ml_collections.ConfigDict, chat: ChatFormat, engine, pool) -> Collector:
    r = config.rollout
    return Collector(
        chat,
        engine,
        pool,
        saar=saar_config_from(config),
        limits=RolloutLimits(
            max_turns=r.max_turns,
            max_response_tokens=r.max_response_tokens,
            max_calls_per_turn=r.max_calls_per_turn,
            extra_calls=r.extra_calls,
            max_tool_attempts=r.max_tool_attempts,
            max_tool_response_chars=r.max_tool_response_chars,
            retries_count_as_turns=r.retries_count_as_turns,
        ),
        sampling=dict(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k),
        saar_enabled=config.saar.enabled,
        seed=config.seed,
        tools_in_prompt=config.data.tools_in_prompt,
        max_prompt_tokens=config.data.max_prompt_tokens,
    )


def reward_config_from(config: ml_collections.ConfigDict) -> RewardConfig:
    r, budget = config.reward, config.rollout.max_response_tokens
    return RewardConfig(
        math_mode=r.math_mode,
        overlong=OverlongConfig(
            max_response_length=budget,
            buffer_length=min(r.overlong_buffer, budget),
            penalty_factor=r.overlong_factor,
            count_policy_tokens_only=r.overlong_policy_tokens_only,
        ),
    )


def tool_sandbox_config(config: ml_collections.ConfigDict) -> SandboxConfig:
    """`sandbox`: the pool that runs the policy's tool calls."""
    sb = config.sandbox
    return SandboxConfig(
        num_workers=sb.num_workers,
        timeout_s=sb.timeout_s,
        preimport=tuple(sb.preimport),
        truncation_marker=sb.truncation_marker,
        memory_limit_mb=sb.memory_limit_mb,
        max_infra_retries=sb.max_infra_retries,
    )


class LazySandbox:
    """The sandbox that runs code-reward tests, started on first use (math-only runs never pay).
    Judging compares whole program outputs, so unlike the tool pool it does not truncate them."""

    def __init__(self, num_workers: int, timeout_s: float):
        self._config = SandboxConfig(
            num_workers=num_workers, timeout_s=timeout_s, max_output_chars=1_000_000
        )
        self._pool: SandboxPool | None = None

    async def run(self, code, stdin=None, timeout_s=None):
        if self._pool is None:
            self._pool = SandboxPool(self._config)
        return await self._pool.run(code, stdin=stdin, timeout_s=timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def optim_config_from(config: ml_collections.ConfigDict, role: str, total_steps=None):
    """`optim`; SFT brings its own rate, warmup and schedule (`total_steps`: cosine decay)."""
    fields = dict(config.optim)
    if role == "sft":
        s = config.sft
        fields.update(learning_rate=s.learning_rate, warmup_steps=s.warmup_steps)
        fields["total_steps"] = total_steps if s.lr_schedule == "cosine" else None
    return OptimConfig(**fields)


def loss_config_from(config: ml_collections.ConfigDict, role: str) -> LossConfig:
    if role == "sft":
        return LossConfig(kind="sft", logprob_chunk=config.train.logprob_chunk)
    lo = config.loss
    return LossConfig(
        kind="ppo",
        clip_eps_low=lo.clip_eps_low,
        clip_eps_high=lo.clip_eps_high,
        dual_clip_c=lo.dual_clip_c or None,
        temperature=config.rollout.temperature,
        entropy_coef=lo.entropy_coef,
        logprob_chunk=config.train.logprob_chunk,
        off_policy=lo.off_policy,
    )


ROLES = ("train", "sft", "eval")


@dataclasses.dataclass
class Runtime:
    """The built parts of one run; `None` where the role does not use a part."""

    config: ml_collections.ConfigDict
    role: str
    tokenizer: Any
    chat: ChatFormat
    model: ModelBundle
    engine: Engine | None = None
    sampler_state: Any = None  # the engine's current weights (`rollout.dtype`)
    placement: SamplerPlacement | None = None  # where the engine runs
    tools: SandboxPool | None = None
    judge: LazySandbox | None = None
    scorer: RewardScorer | None = None
    collector: Collector | None = None
    updater: Updater | None = None
    checkpointer: Checkpointer | None = None
    writer: MetricsWriter | None = None

    @property
    def sampler_dtype(self) -> str:
        return sampler_dtype(self.config)

    def sampler_params(self, state):
        """The sampler's weights: `state` cast to `rollout.dtype` and resharded onto this
        process's sampler placement in one jitted program (`distributed.sampler_replica`; the
        sampler runs process-local jits). A collective with several processes."""
        if self.placement is None:
            self.placement = placement_for(self.config, self.model)
        return distributed.sampler_replica(
            state, self.placement, self.model.cfg, self.sampler_dtype
        )

    def sync_sampler(self, state, version: int | None = None) -> None:
        """Hands `state` (the trainer's fp32 masters) to the engine as its new weights (the
        weight-sync program); the prefix cache is invalidated. `version`: the weights' policy
        version (the trainer's update count), recorded on every token sampled with them. A
        collective with several processes: every process calls it at the same point."""
        self.sampler_state = self.sampler_params(state)
        self.engine.update_params(self.sampler_state, version)

    def sft_updater(self, total_steps: int) -> tuple[Updater, Any]:
        """SFT's updater and learning-rate schedule; its cosine decay needs the run's length."""
        optim = optim_config_from(self.config, "sft", total_steps)
        opt = make_optimizer(optim, compute_dtype=self.model.cfg.dtype)
        loss = loss_config_from(self.config, "sft")
        return Updater(self.model.graphdef, opt, loss, mesh=self.model.mesh), make_schedule(optim)

    def close(self) -> None:
        for part in (self.checkpointer, self.writer, self.scorer, self.judge, self.tools):
            if part is not None:
                part.close()


def build(
    config: ml_collections.ConfigDict,
    role: str,
    workdir: str | None = None,
    *,
    checkpoint: str = "",
    step: int | None = None,
) -> Runtime:
    """Builds the parts of `role`: "train" (everything), "sft" (model, checkpointer, writer; the
    updater via `Runtime.sft_updater`) or "eval" (the policy from `checkpoint`, see `load_policy`,
    with engine, sandboxes, scorer and collector). `workdir` holds checkpoints and metrics."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}: use one of {ROLES}")
    # float16 on a TPU host becomes bfloat16 here, in `config`, for every part built from it.
    config_lib.adapt_dtypes_to_platform(config, platform_of(jax.devices()))
    tokenizer, model = load_policy(config, checkpoint, step)
    rt = Runtime(config, role, tokenizer, ChatFormat(tokenizer), model)
    if role in ("train", "sft"):
        os.makedirs(workdir, exist_ok=True)
        every, keep = config.checkpoint.every, config.checkpoint.keep
        if role == "sft":
            every, keep = config.sft.checkpoint_every, 2
        rt.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep, every=every)
        # After a resume the writer drops logged lines from the first step it writes on.
        rt.writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    if role == "sft":
        return rt
    if role == "train":
        optimizer = make_optimizer(optim_config_from(config, role), compute_dtype=model.cfg.dtype)
        loss = loss_config_from(config, role)
        rt.updater = Updater(model.graphdef, optimizer, loss, mesh=model.mesh)
    rt.placement = placement_for(config, model)
    rt.sampler_state = rt.sampler_params(model.state)
    graphdef = sampler_graphdef(model, rt.sampler_dtype)
    engine_config = engine_config_from(config)
    if engine_config.num_pages is None:
        pages = kv_pages_for(config, model, rt.placement, rt.updater)
        engine_config = dataclasses.replace(engine_config, num_pages=pages)
    rt.engine = Engine((graphdef, rt.sampler_state), engine_config, rt.placement)
    sb = config.sandbox
    rt.tools = SandboxPool(tool_sandbox_config(config))
    rt.judge = LazySandbox(sb.num_workers, sb.timeout_s)
    rt.scorer = RewardScorer(reward_config_from(config), code_runner=rt.judge)
    rt.collector = collector_for(config, rt.chat, rt.engine, rt.tools)
    return rt


def prepare_synthetic(config: ml_collections.ConfigDict, workdir: str) -> None:
    """For `prepare_synthetic` runs (`:runlocal`): the synthetic demo task and its tokenizer in
    the workdir, for what the user did not give (a tokenizer, training files)."""
    # An HF checkpoint brings its own tokenizer; keep it rather than the synthetic one.
    if config.model.hf_path and not config.tokenizer_path:
        config.tokenizer_path = config.model.hf_path
    if config.tokenizer_path and config.data.train_files:
        return
    from jax.experimental import multihost_utils

    # Process 0 writes the assets; the others wait for them, then only set the paths.
    assets = os.path.join(workdir, "assets")
    if distributed.is_main_process():
        paths = demo_assets.prepare_assets(assets, n_sft=48, n_rl_train=32, n_test=8)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cleaner_jax_synthetic_assets")
        paths = demo_assets.asset_paths(assets)
    config.tokenizer_path = config.tokenizer_path or paths["tokenizer"]
    if not config.data.train_files:
        config.data.train_files = (paths["rl_train"],)
    if not config.data.val_files:
        config.data.val_files = (paths["test"],)
