r"""The embedded miniature CLEANER study: tiny Qwen3-shaped model, synthetic tool-use task.

The whole study (data, tokenizer, SFT, both arms, several seeds, report):
  bash launch/quickstart.sh demo            # or: python launch/demo.py --mode=full --workdir=DIR
One arm by hand, on assets the demo prepared in DIR/assets:
  python launch/train.py --config=configs/demo.py:arm=cleaner,seed=0 --workdir=DIR/x \
    --config.tokenizer_path=DIR/assets/tokenizer --config.model.hf_path=DIR/sft/hf_export/final \
    --config.data.train_files='("DIR/assets/rl_train.jsonl",)'
A self-contained smoke run of the real train path (random tiny model, 2 steps):
  python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/runlocal
"""

from cleaner_jax.rl.defaults import demo_config


def get_config(arg=None):
    return demo_config(arg)
