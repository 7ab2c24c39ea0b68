r"""GRPO(+SAAR) training: `python launch/train.py --config=configs/<x>.py[:variant] --workdir=DIR`.

Any config field can be overridden (`--config.rollout.n=8`; a file list as a tuple,
`--config.data.train_files='("/data/a.parquet", "/data/b.parquet")'`); the config is locked, so a
mistyped field fails. Paths and budgets are checked before anything is built; a mistake ends in
one line (`--verbose` for the traceback); `--print_config` prints the config and stops.
Resumes from the newest good checkpoint in DIR.
"""

from absl import flags, logging
from ml_collections import config_flags

from cleaner_jax.runtime import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Where checkpoints and logs go.")


def main(argv):
    del argv
    if not cli.start(_CONFIG.value, "train", _WORKDIR.value) or cli.CHECK_ONLY.value:
        return
    from cleaner_jax.runtime import trainer  # after the checks, so that a mistake fails in seconds

    logging.info("config:\n%s", _CONFIG.value)
    final = trainer.run(_CONFIG.value, _WORKDIR.value)
    logging.info("done; last step metrics: %s", {k: final[k] for k in sorted(final)[:20]})


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
