"""Shared fixtures of the model tests: a tiny random HF checkpoint written by our exporter."""

import pytest

from cleaner_jax.models import testing


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(dir, cfg) of a tiny untied Qwen3 checkpoint with biases, saved as model.safetensors."""
    cfg = testing.tiny_variant("qwen3", tied=False, gqa=2, bias=True)
    path = str(tmp_path_factory.mktemp("tiny_ckpt"))
    return testing.save_tiny_checkpoint(path, cfg, seed=3), cfg
