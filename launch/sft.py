r"""Cold-start SFT: `python launch/sft.py --config=configs/<x>.py[:variant] --workdir=DIR`.

Trains on `config.sft.train_files` (chat trajectories with tool turns; loss on assistant turns)
and exports the result as an HF checkpoint (weights + tokenizer) to DIR/hf_export/final, which a
GRPO run then loads with `--config.model.hf_path=DIR/hf_export/final`. A missing file or
checkpoint ends in one line (`--verbose` for the traceback).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cleaner_jax.rl import cli, defaults  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints and the export go.", required=True
)


def main(argv):
    del argv
    cli.check_workdir(_WORKDIR.value)
    defaults.check_config(_CONFIG.value, "sft")
    if cli.CHECK_ONLY.value:
        return
    from cleaner_jax.rl import sft  # after the checks, so that a mistake fails in seconds

    final = sft.run(_CONFIG.value, _WORKDIR.value)
    logging.info("done; last step metrics: %s", final)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
