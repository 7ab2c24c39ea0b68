"""Test setup: 8 forced CPU devices before jax is imported (sharding tests need them)."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _skip_tpu_compile_without_libtpu(items):
    """`tpu_compile` tests compile for abstract TPU devices and need libtpu. The README's test
    command installs it and sets CLEANER_JAX_REQUIRE_LIBTPU=1, so there they fail, not skip."""
    if os.environ.get("CLEANER_JAX_REQUIRE_LIBTPU") == "1":
        return
    import importlib.util

    import pytest

    if importlib.util.find_spec("libtpu") is None:
        skip = pytest.mark.skip(reason="needs libtpu (pip install 'jax[tpu]==<jax version>')")
        for item in items:
            if item.get_closest_marker("tpu_compile"):
                item.add_marker(skip)


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests run only where JAX's default backend is a GPU (launch/gpu_check.sh);
    `tpu_compile` tests where libtpu is installed (see above)."""
    _skip_tpu_compile_without_libtpu(items)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import jax
    import pytest

    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU (JAX default backend is not gpu)")
        for item in gpu_items:
            item.add_marker(skip)
