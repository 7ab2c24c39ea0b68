"""Datasets: readers for the real benchmark/training formats and the demo's synthetic task.

  readers:        Example, read_agentrl, read_aime, read_gpqa, read_livecodebench, read_dataset,
                  read_records, filter_overlong, EpochIterator
  prompts:        prompt templates (math, GPQA, code) referenced by config
  synthetic_task: the demo's tool-use arithmetic problems (make_problems, write_rl_jsonl, ...)
  sft_corpus:     the demo's cold-start SFT corpus (make_sft_corpus, write_sft_jsonl, ...)
  sft_plan:       its planning half: each example's kind, bug and code (plan_corpus)
Import the submodules directly.
"""
