"""The GRPO/DAPO algorithm, importable without the runtime (nothing here reads a config file).

  rewards (+ rewards_math, rewards_code): RewardScorer, RewardConfig, overlong_penalty
  advantages: compute_advantages (grpo, drgrpo, rloo), dynamic-sampling helpers
  credit:     call_outcome, credit_diagnostics (where outcome reward puts failed calls' credit)
  loss:       policy_loss, chunked_logprobs_and_entropy, token_logprobs_and_entropy, k3_kl
  off_policy: OffPolicyConfig, apply (TIS / MIS / decoupled weights of π_prox / μ), PRESETS
  packing:    TrainSample, pack, split_rows
  logprobs:   packed_logprobs, prefix_shared_logprobs, mismatch_metrics
  update:     Updater, make_optimizer, OptimConfig, LossConfig,
              loss_scaling / loss_scale_of (dynamic loss scaling for float16)
  passk:      unbiased pass@k
  distributed: process shares, host-batch → global arrays, sampler replicas (multi-process)
  compiled_memory: memory of the compiled train / decode programs (memory plan, bench_scale)
Import the submodules directly (they pull in JAX). The composition (config → parts, the trainer,
SFT and evaluation loops) is `cleaner_jax.runtime`; the miniature study is `cleaner_jax.study`.
"""
