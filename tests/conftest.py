"""Test setup: 8 forced CPU devices before jax is imported (sharding tests need them)."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests run only where JAX's default backend is a GPU (launch/gpu_check.sh)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import jax
    import pytest

    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU (JAX default backend is not gpu)")
        for item in gpu_items:
            item.add_marker(skip)
