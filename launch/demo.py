r"""The embedded default: the miniature CLEANER study on a CPU (README Quick start, first command).

  python launch/demo.py --mode=full --workdir=/tmp/cleaner_demo   # ~12 min on 2 cores
  python launch/demo.py --mode=quick --workdir=/tmp/cleaner_quick # ~3 min, one seed
  python launch/demo.py --mode=long --workdir=/tmp/cleaner_long   # more seeds/steps, 31 min
  python launch/demo.py --mode=correction --workdir=/tmp/cleaner_corr  # long's sizes, arms
      cleaner and correction (SAAR + off-policy correction, #30), compared with cleaner; 25 min
  python launch/demo.py --mode=async --workdir=/tmp/cleaner_async  # long's sizes, arms cleaner
      and async (S = 1 async rollouts with token TIS, #31), compared with cleaner
  python launch/demo.py --mode=reference --workdir=/tmp/cleaner_ref  # long's sizes, baseline and
      cleaner under the reference implementation's switches that apply to the task (#32)
The study is `configs/demo.py:<mode>` (its `study.*` fields) and, per arm and seed, the variant
`configs/demo.py:<mode>,arm=...,seed=...`; print one with
  python launch/train.py --config=configs/demo.py:full,arm=baseline --print_config
Re-running with the same workdir skips the finished stages. Compiled programs are cached in
<workdir>/jax_cache (or $JAX_COMPILATION_CACHE_DIR; --compilation_cache=off disables): the arms
and seeds run the same programs, so every GRPO run after the first skips most compilation.
"""

import importlib.util
import os
import time

import jax
from absl import flags, logging

from cleaner_jax.runtime import cli
from cleaner_jax.study import demo

_DEMO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py"
)
_MODE = flags.DEFINE_enum(
    "mode",
    "full",
    ["quick", "full", "long", "correction", "async", "reference"],
    "Study size and arms (a configs/demo.py variant).",
)
_CONFIG_FILE = flags.DEFINE_string("config_file", _DEMO_CONFIG, "The study's config file.")
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


def _get_config():
    spec = importlib.util.spec_from_file_location("demo_config", _CONFIG_FILE.value)
    if spec is None or not os.path.isfile(_CONFIG_FILE.value):
        raise cli.UserError(f"--config_file={_CONFIG_FILE.value} is not a config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def main(argv):
    del argv
    t0 = time.time()
    print(f"cleaner-jax demo ({_MODE.value} mode): outputs in {_WORKDIR.value}", flush=True)

    def progress(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    logging.set_verbosity(logging.WARNING)
    _enable_compilation_cache()
    path = demo.run_demo(_get_config(), _MODE.value, _WORKDIR.value, progress=progress)
    print(f"done in {time.time() - t0:.0f}s; report: {path}", flush=True)
    with open(path) as f:
        print(f.read())


if __name__ == "__main__":
    cli.run(main)
