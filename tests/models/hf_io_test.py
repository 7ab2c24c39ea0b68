"""HF checkpoint import/export: parity with transformers (torch) and clear errors on bad input."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from safetensors.numpy import load_file, save_file

from cleaner_jax.models import hf_io, sharding, testing
from cleaner_jax.models.config import UnsupportedModelError

# Tolerances (float32, from the design doc): torch -> ours 1e-4, ours -> torch reload 1e-5.
IMPORT_ATOL = 1e-4
EXPORT_ATOL = 1e-5

CASES = [
    ("qwen3", True, 1, False),
    ("qwen3", False, 2, True),
    ("qwen3", True, 4, True),
    ("qwen2", False, 1, True),
    ("qwen2", True, 2, True),
    ("qwen2", False, 4, True),
]


def _torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.array(tokens))).logits.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("arch, tied, gqa, bias", CASES)
def test_parity_with_transformers_both_directions(tmp_path, arch, tied, gqa, bias):
    import transformers

    cfg = testing.tiny_variant(arch, tied=tied, gqa=gqa, bias=bias)
    reference = testing.torch_model(cfg, seed=11)
    reference.save_pretrained(tmp_path / "hf")

    loaded_cfg, model = hf_io.load_hf_checkpoint(str(tmp_path / "hf"))
    assert loaded_cfg == cfg
    tokens_BT = jax.random.randint(jax.random.key(1), (2, 11), 0, cfg.vocab_size)
    ours, _ = testing.jit_forward(model)(tokens_BT, jnp.broadcast_to(jnp.arange(11), (2, 11)))
    theirs = _torch_logits(reference, tokens_BT)
    assert np.abs(np.asarray(ours) - theirs).max() <= IMPORT_ATOL
    assert np.std(theirs) > 0.1  # the comparison is not between two near-zero tensors
    np.testing.assert_array_equal(np.argmax(ours, -1), np.argmax(theirs, -1))

    hf_io.save_hf_checkpoint(model, loaded_cfg, str(tmp_path / "out"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    again = _torch_logits(reloaded, tokens_BT)
    assert np.abs(again - np.asarray(ours)).max() <= EXPORT_ATOL
    np.testing.assert_array_equal(np.argmax(again, -1), np.argmax(theirs, -1))


def _params(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_sharded_index_checkpoint_onto_mesh_equals_single_file(tmp_path, tiny_checkpoint):
    path, cfg = tiny_checkpoint
    _, single = hf_io.load_hf_checkpoint(path)
    written = hf_io.save_hf_checkpoint(single, cfg, str(tmp_path), max_shard_bytes=40_000)
    assert hf_io.INDEX_FILE in written and len(written) > 3
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, sharded = hf_io.load_hf_checkpoint(str(tmp_path), mesh=mesh)
    ref = _params(single)
    for p, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        arr = var.get_value()
        assert isinstance(arr.sharding, NamedSharding) and arr.sharding.mesh == mesh
        np.testing.assert_array_equal(np.asarray(arr), ref[p])
    assert sharding.replicated_fraction(nnx.state(sharded, nnx.Param)) < 0.05


def test_bfloat16_import_and_export_round_trip(tmp_path, tiny_checkpoint):
    path, cfg = tiny_checkpoint
    bf_cfg, model = hf_io.load_hf_checkpoint(path, dtype="bfloat16")
    assert bf_cfg.param_dtype == "bfloat16"
    assert {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model))} == {
        jnp.dtype(jnp.bfloat16)
    }
    hf_io.save_hf_checkpoint(model, bf_cfg, str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
    _, again = hf_io.load_hf_checkpoint(str(tmp_path), dtype="bfloat16")
    a, b = _params(model), _params(again)
    for p in a:
        np.testing.assert_array_equal(a[p], b[p])


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(os.path.join(dst, hf_io.SINGLE_FILE))
    edit(tensors)
    save_file(tensors, os.path.join(dst, hf_io.SINGLE_FILE), metadata={"format": "pt"})
    return str(dst)


def test_missing_tensor_is_named(tmp_path, tiny_checkpoint):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = _edited_copy(tiny_checkpoint[0], tmp_path / "c", lambda t: t.pop(name))
    with pytest.raises(hf_io.CheckpointError, match=f"missing tensors: {name}"):
        hf_io.load_hf_checkpoint(bad)


def test_unexpected_tensor_is_named_and_inv_freq_is_ignored(tmp_path, tiny_checkpoint):
    def add(t):
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
        t["model.layers.0.mlp.extra_proj.weight"] = np.ones((2, 2), np.float32)

    bad = _edited_copy(tiny_checkpoint[0], tmp_path / "c", add)
    with pytest.raises(hf_io.CheckpointError, match=r"unexpected tensors: [^;]*extra_proj") as err:
        hf_io.load_hf_checkpoint(bad)
    assert "inv_freq" not in str(err.value)


def test_wrong_shape_is_named(tmp_path, tiny_checkpoint):
    name = "model.layers.0.self_attn.k_proj.weight"
    bad = _edited_copy(
        tiny_checkpoint[0],
        tmp_path / "c",
        lambda t: t.update({name: np.ones((48, 64), np.float32)}),
    )
    with pytest.raises(hf_io.CheckpointError, match=rf"{name}.*\(48, 64\)"):
        hf_io.load_hf_checkpoint(bad)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "LlamaForCausalLM"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ],
)
def test_unsupported_architecture_in_dir(tmp_path, tiny_checkpoint, change, match):
    dst = tmp_path / "c"
    shutil.copytree(tiny_checkpoint[0], dst)
    hf = json.load(open(dst / "config.json"))
    json.dump({**hf, **change}, open(dst / "config.json", "w"))
    with pytest.raises(UnsupportedModelError, match=match):
        hf_io.load_hf_checkpoint(str(dst))


def test_dir_without_safetensors(tmp_path, tiny_checkpoint):
    shutil.copy(os.path.join(tiny_checkpoint[0], "config.json"), tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(hf_io.CheckpointError, match="only safetensors"):
        hf_io.load_hf_checkpoint(str(tmp_path))


def test_config_and_dir_disagree_on_tying(tmp_path, tiny_checkpoint):
    path, cfg = tiny_checkpoint
    with pytest.raises(hf_io.CheckpointError, match="lm_head.weight differs"):
        hf_io.load_hf_checkpoint(path, cfg.replace(tie_word_embeddings=True))
    with pytest.raises(hf_io.CheckpointError, match="missing tensors: lm_head.weight"):
        hf_io.load_hf_checkpoint(
            testing.save_tiny_checkpoint(str(tmp_path), cfg.replace(tie_word_embeddings=True)),
            cfg,
        )


def test_tied_checkpoint_with_copied_head_loads(tmp_path, tiny_checkpoint):
    path, cfg = tiny_checkpoint
    tied = testing.save_tiny_checkpoint(str(tmp_path / "t"), cfg.replace(tie_word_embeddings=True))

    def copy_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    _, model = hf_io.load_hf_checkpoint(_edited_copy(tied, tmp_path / "c", copy_head))
    assert model.lm_head is None
