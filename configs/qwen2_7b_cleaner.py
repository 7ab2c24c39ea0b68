r"""qwen2_7b: GRPO/DAPO + SAAR (CLEANER) with the paper's settings (DESIGN §1).

Needs local files (nothing is downloaded): an HF checkpoint dir (e.g. Qwen2.5-7B-RA-SFT) and
Open-AgentRL-30K and validation parquet files, both in the Open-AgentRL (verl) schema (plain
AIME/GPQA/LiveCodeBench files are for `launch/evaluate.py --dataset_kind=...`):

  python launch/train.py --config=configs/qwen2_7b_cleaner.py \
    --config.model.hf_path=/ckpt/Qwen2.5-7B-RA-SFT \
    --config.data.train_files='("/data/open_agentrl_30k.parquet",)' \
    --config.data.val_files='("/data/aime24_agentrl.parquet",)' --workdir=/runs/qwen2_7b_cleaner

Variant `:runlocal`: a self-contained CPU smoke run (random tiny model of the same architecture,
tiny budgets, the synthetic demo task and its tokenizer prepared in the workdir):

  python launch/train.py --config=configs/qwen2_7b_cleaner.py:runlocal --workdir=/tmp/runlocal
"""

from cleaner_jax.rl.defaults import paper_config


def get_config(arg=None):
    return paper_config("qwen2_7b", saar=True, arg=arg)
