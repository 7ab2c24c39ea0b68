r"""The embedded default: the miniature CLEANER study on a CPU (README Quick start, first command).

  python launch/demo.py --mode=full --workdir=/tmp/cleaner_demo   # ~15 min on 2 cores
  python launch/demo.py --mode=quick --workdir=/tmp/cleaner_quick # ~3 min, one seed
Re-running with the same workdir skips the finished stages.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from cleaner_jax.rl import demo  # noqa: E402

_MODE = flags.DEFINE_enum("mode", "full", list(demo.MODES), "Study size.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dir (report.md lands here).", required=True)


def main(argv):
    del argv
    t0 = time.time()
    print(f"cleaner-jax demo ({_MODE.value} mode): outputs in {_WORKDIR.value}", flush=True)

    def progress(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    logging.set_verbosity(logging.WARNING)
    path = demo.run_demo(_MODE.value, _WORKDIR.value, progress=progress)
    print(f"done in {time.time() - t0:.0f}s; report: {path}", flush=True)
    with open(path) as f:
        print(f.read())


if __name__ == "__main__":
    app.run(main)
