r"""The embedded default: the miniature CLEANER study on a CPU (README Quick start, first command).

  python launch/demo.py --mode=full --workdir=/tmp/cleaner_demo   # ~15 min on 2 cores
  python launch/demo.py --mode=quick --workdir=/tmp/cleaner_quick # ~3 min, one seed
Re-running with the same workdir skips the finished stages. Compiled programs are cached in
<workdir>/jax_cache (or $JAX_COMPILATION_CACHE_DIR; --compilation_cache=off disables): the arms
and seeds run the same programs, so every GRPO run after the first skips most compilation.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import flags, logging  # noqa: E402

from cleaner_jax.rl import cli, demo  # noqa: E402

_MODE = flags.DEFINE_enum("mode", "full", list(demo.MODES), "Study size.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dir (report.md lands here).", required=True)
_CACHE = flags.DEFINE_string(
    "compilation_cache",
    "",
    "JAX persistent compilation cache dir; default $JAX_COMPILATION_CACHE_DIR or "
    "<workdir>/jax_cache; 'off' disables it.",
)


def _enable_compilation_cache() -> None:
    # Must run before the first compilation: JAX initialises its cache once per process.
    if _CACHE.value == "off":
        return
    cache = _CACHE.value or jax.config.jax_compilation_cache_dir
    jax.config.update(
        "jax_compilation_cache_dir", cache or os.path.join(_WORKDIR.value, "jax_cache")
    )
    # The demo's programs are small: cache all of them, not only those over 1 s to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv):
    del argv
    t0 = time.time()
    print(f"cleaner-jax demo ({_MODE.value} mode): outputs in {_WORKDIR.value}", flush=True)

    def progress(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    logging.set_verbosity(logging.WARNING)
    _enable_compilation_cache()
    path = demo.run_demo(_MODE.value, _WORKDIR.value, progress=progress)
    print(f"done in {time.time() - t0:.0f}s; report: {path}", flush=True)
    with open(path) as f:
        print(f.read())


if __name__ == "__main__":
    cli.run(main)
