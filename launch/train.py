r"""GRPO(+SAAR) training: `python launch/train.py --config=configs/<x>.py[:variant] --workdir=DIR`.

Any config field can be overridden (`--config.rollout.n=8`; a file list as a tuple,
`--config.data.train_files='("/data/a.parquet", "/data/b.parquet")'`); the config is locked, so a
mistyped field fails. Paths and budgets are checked before anything is built; a mistake ends in
one line (`--verbose` for the traceback). Resumes from the newest good checkpoint in DIR.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cleaner_jax.rl import cli, defaults  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.", required=True)


def main(argv):
    del argv
    cli.check_workdir(_WORKDIR.value)
    defaults.check_config(_CONFIG.value, "train")
    if cli.CHECK_ONLY.value:
        return
    from cleaner_jax.rl import trainer  # after the checks, so that a mistake fails in seconds

    logging.info("config:\n%s", _CONFIG.value)
    final = trainer.run(_CONFIG.value, _WORKDIR.value)
    logging.info("done; last step metrics: %s", {k: final[k] for k in sorted(final)[:20]})


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
