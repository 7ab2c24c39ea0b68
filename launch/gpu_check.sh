#!/usr/bin/env bash
# The prepared accelerator check (issues #15, #19): one command, <= 9.5 minutes on one H100/H200.
#   bash launch/gpu_check.sh [OUT_DIR]          # on the GPU machine
#   GPU_CHECK_TINY=1 bash launch/gpu_check.sh   # its CPU dry run (tiny shapes)
# Writes OUT_DIR/gpu_check.json (sections: machine, decode, train, rollout; see launch/gpu_check.py),
# OUT_DIR/gpu_phases.json (the phase tables of #19) and OUT_DIR/gpu_tests.log (the `gpu` marker).
# Installs the package if it is not importable.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && py=.venv/bin/python
if ! "$py" -c "import cleaner_jax, flax, optax, ml_collections, transformers" 2>/dev/null; then
  "$py" -m pip install -q -e '.[test]' || exit 1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ -n "${GPU_CHECK_TINY:-}" ]; then
  export JAX_PLATFORMS=cpu
  timeout 600 "$py" launch/gpu_check.py --tiny --reps=2 --out="$out/gpu_check.json" || exit $?
  timeout 300 "$py" launch/gpu_check.py --tiny --reps=2 --sections=phases \
    --out="$out/gpu_phases.json"
  exit $?
fi
# The gpu-marked tests first (kernel parity on the real device), bounded to 2 minutes.
JAX_PLATFORMS=cuda,cpu timeout 120 "$py" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 330 "$py" launch/gpu_check.py --out="$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
check_rc=${PIPESTATUS[0]}
# The phase tables last, in their own process and time limit: a slow compile loses nothing else.
timeout 100 "$py" launch/gpu_check.py --sections=phases --reps=3 --out="$out/gpu_phases.json" \
  2>&1 | tee "$out/gpu_phases.log"
phases_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, gpu_check rc=$check_rc, phases rc=$phases_rc"
[ "$tests_rc" = 0 ] && [ "$check_rc" = 0 ] && [ "$phases_rc" = 0 ]
