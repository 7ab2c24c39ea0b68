"""Convert an HF Qwen checkpoint dir through our model and back, printing a parity check.

  python launch/convert.py --hf_dir=/ckpt/Qwen3-4B --out_dir=/tmp/qwen3_4b_export \
      --dtype=bfloat16 [--torch_check]

Imports `--hf_dir` (config.json + safetensors) tensor by tensor, exports it to `--out_dir` in
the HF layout (`--dtype`, sharded above `--max_shard_gb`), re-imports the export and prints the
largest parameter difference and the logits difference on a random batch; `--torch_check` also
loads the export in `transformers` and compares its logits with ours (needs torch). A missing or
unsupported checkpoint ends in one line (`--verbose` for the traceback).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from cleaner_jax.models import hf_io, sharding
from cleaner_jax.models.config import UnsupportedModelError
from cleaner_jax.runtime import cli

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint dir to import", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "dir for the HF export", required=True)
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "param dtype")
_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "split the export above this size")
_MESH = flags.DEFINE_string("mesh", "fsdp=-1", "mesh axis sizes, e.g. data=1,fsdp=-1,tensor=2")
_TORCH = flags.DEFINE_bool("torch_check", False, "also compare logits with transformers")
_SEQ = flags.DEFINE_integer("check_seq", 16, "tokens per sequence of the logits check")


def _logits(model, tokens_BT):
    graphdef, state = nnx.split(model)
    b, t = tokens_BT.shape

    @jax.jit
    def fwd(state, tokens_BT):
        positions_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
        return nnx.merge(graphdef, state)(tokens_BT, positions_BT)[0]

    return np.asarray(fwd(state, tokens_BT))


def main(argv):
    del argv
    try:
        sizes = {k: int(v) for k, v in (kv.split("=") for kv in _MESH.value.split(",") if kv)}
    except ValueError as e:
        raise cli.UserError(f"--mesh={_MESH.value}: use axis=size pairs, e.g. fsdp=-1") from e
    if not os.path.isfile(os.path.join(_HF_DIR.value, "config.json")):
        raise cli.UserError(
            f"--hf_dir={_HF_DIR.value}: no config.json there; pass a local HF checkpoint dir"
        )
    mesh = sharding.make_mesh(sizes)
    try:
        cfg, model = hf_io.load_hf_checkpoint(_HF_DIR.value, dtype=_DTYPE.value, mesh=mesh)
    except (hf_io.CheckpointError, UnsupportedModelError) as e:
        raise cli.UserError(f"--hf_dir={_HF_DIR.value}: {e}") from e
    print(f"imported {_HF_DIR.value}: {cfg.architecture}, {cfg.num_params() / 1e9:.3f}B params")
    files = hf_io.save_hf_checkpoint(
        model, cfg, _OUT_DIR.value, max_shard_bytes=int(_SHARD_GB.value * 1024**3)
    )
    print(f"exported to {_OUT_DIR.value}: {', '.join(files)}")

    _, again = hf_io.load_hf_checkpoint(_OUT_DIR.value, dtype=_DTYPE.value, mesh=mesh)
    a = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    b = dict(nnx.to_flat_state(nnx.state(again, nnx.Param)))
    param_diff = max(
        float(jnp.abs(a[p].get_value().astype(jnp.float32) - b[p].get_value()).max()) for p in a
    )
    tokens_BT = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, _SEQ.value))
    ours = _logits(model, tokens_BT)
    logits_diff = float(np.abs(ours - _logits(again, tokens_BT)).max())
    print(f"{'check':40s} {'max abs diff':>14s}")
    print(f"{'params: import vs re-import of export':40s} {param_diff:14.3g}")
    print(f"{'logits: import vs re-import of export':40s} {logits_diff:14.3g}")
    if _TORCH.value:
        import torch
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(_OUT_DIR.value, dtype=torch.float32)
        with torch.no_grad():
            theirs = hf(torch.as_tensor(tokens_BT)).logits.numpy()
        print(f"{'logits: ours vs transformers(export)':40s} {np.abs(ours - theirs).max():14.3g}")
        same = (ours.argmax(-1) == theirs.argmax(-1)).mean()
        print(f"greedy next tokens identical: {same:.1%}")


if __name__ == "__main__":
    cli.run(main)
