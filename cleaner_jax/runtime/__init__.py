"""Composition: a locked config → typed settings and built parts, once; the loops that use them.

  config:      check_config, ConfigError, TrainSettings / SftSettings, load_config, parse_arg
  parts:       build(config, role, workdir) → Runtime (tokenizer, model, engine, sandboxes,
               scorer, collector, updater, checkpointer, metrics writer), prepare_synthetic
  collect:     Collector (the rollout phase over agent.run_rollouts), Rollout
  trainer:     Trainer, run (the GRPO loop)
  async_rollout: RolloutProducer, Round, check_round (rollouts ahead of the trainer, bounded)
  sampler_budget: placement_for, split_devices, kv_pages_for (where the sampler runs, its pool)
  sft:         run (cold-start SFT)
  evaluation:  Evaluator, EvalOptions, evaluate (pass@k with and without test-time SAAR)
  checkpoint, metrics: orbax checkpoints; JSONL/TensorBoard metrics
  memory_plan: per-device memory of a config at the paper's budgets
  cli:         one-line errors and the common start of launch/ scripts
Import the submodules directly (they pull in JAX).
"""
