#!/usr/bin/env bash
# The README's two Quick start commands. Each creates/uses .venv and installs what it needs.
#   bash launch/quickstart.sh demo [quick|full|long|correction|async|reference] [WORKDIR]  -- the embedded miniature CLEANER study
#   bash launch/quickstart.sh test [pytest args...]             -- the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-}"; shift || true

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(sha1sum setup.py | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e '.[test,torch]'
  touch "$stamp"
fi
# The test command also installs google-tunix for the Tunix adapter's CI test. Tunix 0.1.7 caps
# safetensors <0.8, which our transformers pin cannot meet; it runs with ours, so its other
# requirements are installed pinned, constrained to what is installed, and Tunix itself --no-deps.
if [ "$cmd" = test ]; then
  reqs=third_party/tunix_saar/requirements.txt
  tstamp="$venv/.tunix-$(cat "$reqs" | sha1sum | cut -c1-12)"
  if [ ! -f "$tstamp" ]; then
    constraints="$(mktemp)"
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -v ' @ ' > "$constraints"
    "$venv/bin/python" -m pip install -q -c "$constraints" -r "$reqs"
    "$venv/bin/python" -m pip install -q --no-deps google-tunix==0.1.7
    rm -f "$constraints"
    touch "$tstamp"
  fi
fi
# The test command also installs libtpu (jax's `tpu` extra at the installed jax version): the
# tpu_compile tests compile our programs for abstract TPU devices on this CPU host, no TPU needed.
if [ "$cmd" = test ]; then
  jaxv="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("jax"))')"
  lstamp="$venv/.libtpu-$jaxv"
  if [ ! -f "$lstamp" ]; then
    "$venv/bin/python" -m pip install -q "jax[tpu]==$jaxv"
    touch "$lstamp"
  fi
  export CLEANER_JAX_REQUIRE_LIBTPU=1
fi
# The sandbox runs tool code under bubblewrap; install it where we can (root + apt), else the
# sandbox falls back to its own containment (README "Sandbox isolation") and warns loudly.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -qq bubblewrap >/dev/null 2>&1 || echo "warning: could not install bubblewrap" >&2
fi

case "$cmd" in
  test)
    exec "$venv/bin/python" -m pytest -q -n 2 --timeout=900 "$@"
    ;;
  demo)
    mode="${1:-full}"
    workdir="${2:-/tmp/cleaner_jax_demo_$(date +%Y%m%d_%H%M%S)}"
    exec "$venv/bin/python" launch/demo.py --mode="$mode" --workdir="$workdir"
    ;;
  *)
    echo "usage: bash launch/quickstart.sh {demo [quick|full|long|correction|async|reference] [WORKDIR] | test [pytest args]}" >&2
    exit 2
    ;;
esac
