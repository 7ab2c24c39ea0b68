r"""Cold-start SFT: `python launch/sft.py --config=configs/<x>.py[:variant] --workdir=DIR`.

Trains on `config.sft.train_files` (chat trajectories with tool turns; loss on assistant turns)
and exports the result as an HF checkpoint (weights + tokenizer) to DIR/hf_export/final, which a
GRPO run then loads with `--config.model.hf_path=DIR/hf_export/final`. A missing file or
checkpoint ends in one line (`--verbose` for the traceback); `--print_config` prints the
config and stops.
"""

from absl import flags, logging
from ml_collections import config_flags

from cleaner_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Where checkpoints and the export go.")


def main(argv):
    del argv
    if not cli.start(_CONFIG.value, "sft", _WORKDIR.value) or cli.CHECK_ONLY.value:
        return
    from cleaner_jax.runtime import sft  # after the checks, so that a mistake fails in seconds

    final = sft.run(_CONFIG.value, _WORKDIR.value)
    logging.info("done; last step metrics: %s", final)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
