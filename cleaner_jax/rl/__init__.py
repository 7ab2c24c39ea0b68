"""GRPO/DAPO training with SAAR rollouts.

  rewards (+ rewards_math, rewards_code): RewardScorer, RewardConfig, overlong_penalty
  advantages: compute_advantages (grpo, drgrpo, rloo), dynamic-sampling helpers
  loss:       policy_loss, chunked_logprobs_and_entropy, token_logprobs_and_entropy, k3_kl
  packing:    TrainSample, pack, split_rows
  logprobs:   packed_logprobs, prefix_shared_logprobs, mismatch_metrics
  update:     Updater, make_optimizer, OptimConfig, LossConfig, optim_config_from,
              loss_scaling / loss_scale_of (dynamic loss scaling for float16)
  compiled_memory: memory of the compiled train / decode programs (memory plan, bench_scale)
  checkpoint, metrics: orbax checkpoints, JSONL/TensorBoard metrics
  collect, trainer, sft: the rollout phase, the GRPO loop (`trainer.run`), cold-start SFT
  defaults:   base_config / paper_config / demo_config used by configs/
  demo, report: the embedded miniature study
Import the submodules directly (they pull in JAX).
"""
