#!/usr/bin/env bash
# The prepared accelerator check (issues #15, #19): one command, <= 11.5 minutes on one H100/H200.
#   bash launch/gpu_check.sh [OUT_DIR]                 # on the GPU machine
#   bash launch/gpu_check.sh --cpu-dry-run [OUT_DIR]   # its CPU dry run (tiny shapes)
#   GPU_CHECK_TINY=1 bash launch/gpu_check.sh          # the same dry run
# Without a GPU (and no dry run asked for) it stops within seconds, exit 3, before any install.
# Writes OUT_DIR/gpu_check.json (sections: machine, decode, train, rollout), OUT_DIR/gpu_extra.json
# (logprobs, fp16), OUT_DIR/gpu_phases.json (the phase tables of #19) and OUT_DIR/gpu_tests.log
# (the `gpu` marker); see launch/gpu_check.py. Installs the package if it is not importable.
# Compiles persist in JAX_COMPILATION_CACHE_DIR (default .jax_cache/ in the repo), so a rerun on
# the same warm machine skips them.
set -uo pipefail
cd "$(dirname "$0")/.."
tiny="${GPU_CHECK_TINY:-}"
if [ "${1:-}" = "--cpu-dry-run" ]; then
  tiny=1
  shift
fi
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.1}"
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

no_gpu() {
  echo "gpu_check: $1; this check needs a GPU (run 'bash launch/gpu_check.sh --cpu-dry-run'" \
    "or GPU_CHECK_TINY=1 for the CPU dry run)" >&2
  exit 3
}
# JAX's backend decides; before jax is installed, the NVIDIA device files stand in for it so that
# a machine without a GPU never waits for the install.
backend_is_gpu() {
  timeout 120 "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null
}
if [ -z "$tiny" ]; then
  if "$py" -c "import jax" 2>/dev/null; then
    backend_is_gpu || no_gpu "JAX's default backend is not a GPU"
  elif ! ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    no_gpu "no NVIDIA device (/dev/nvidia*) and jax is not installed"
  fi
fi
if ! "$py" -c "import cleaner_jax, flax, optax, ml_collections, transformers" 2>/dev/null; then
  "$py" -m pip install -q -e '.[test]' || exit 1
fi
if [ -n "$tiny" ]; then
  export JAX_PLATFORMS=cpu
  timeout 600 "$py" launch/gpu_check.py --tiny --reps=2 --out="$out/gpu_check.json" || exit $?
  timeout 300 "$py" launch/gpu_check.py --tiny --reps=2 --sections=logprobs,fp16 \
    --out="$out/gpu_extra.json" || exit $?
  timeout 300 "$py" launch/gpu_check.py --tiny --reps=2 --sections=phases \
    --out="$out/gpu_phases.json"
  exit $?
fi
backend_is_gpu || no_gpu "JAX's default backend is not a GPU after the install"
# The gpu-marked tests first (kernel parity on the real device), bounded to 2 minutes.
JAX_PLATFORMS=cuda,cpu timeout 120 "$py" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 330 "$py" launch/gpu_check.py --out="$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
check_rc=${PIPESTATUS[0]}
# Each later run has its own process and time limit: a slow compile loses nothing else.
timeout 120 "$py" launch/gpu_check.py --sections=logprobs,fp16 --reps=3 \
  --out="$out/gpu_extra.json" 2>&1 | tee "$out/gpu_extra.log"
extra_rc=${PIPESTATUS[0]}
timeout 100 "$py" launch/gpu_check.py --sections=phases --reps=3 --out="$out/gpu_phases.json" \
  2>&1 | tee "$out/gpu_phases.log"
phases_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, gpu_check rc=$check_rc, extra rc=$extra_rc, phases rc=$phases_rc"
[ "$tests_rc" = 0 ] && [ "$check_rc" = 0 ] && [ "$extra_rc" = 0 ] && [ "$phases_rc" = 0 ]
