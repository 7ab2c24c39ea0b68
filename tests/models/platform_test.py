"""models.platform: kernel choice follows the devices a program is compiled for."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from cleaner_jax.models import platform
from cleaner_jax.models.topology import topology_devices


@pytest.mark.parametrize("name,expected", [("cuda", "gpu"), ("ROCm", "gpu"), ("tpu", "tpu")])
def test_normalize(name, expected):
    assert platform.normalize(name) == expected


def test_normalize_refuses_unknown():
    with pytest.raises(ValueError, match="unknown platform 'metal'"):
        platform.normalize("metal")


def test_host_default_and_explicit_target():
    assert platform.target_platform() == platform.normalize(jax.default_backend())
    with platform.target("cuda") as p:
        assert p == "gpu" and platform.target_platform() == "gpu"
    assert platform.target_platform() == platform.normalize(jax.default_backend())


def test_cpu_mesh_is_cpu():
    mesh = Mesh(np.array(jax.devices()[:2]), ("fsdp",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        assert platform.target_platform() == "cpu"
        assert not platform.target_megacore()


@pytest.mark.tpu_compile
@pytest.mark.parametrize("topology,megacore", [("v5p:2x2x1", True), ("v5e:4x4", False)])
def test_tpu_topology_mesh_is_tpu_on_a_cpu_host(topology, megacore):
    devices = topology_devices(topology)
    mesh = Mesh(np.array(devices), ("fsdp",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        assert platform.target_platform() == "tpu"
        assert platform.target_megacore() is megacore
        # An explicit target wins over the mesh.
        with platform.target("cpu"):
            assert platform.target_platform() == "cpu"


def test_platform_of():
    assert platform.platform_of(jax.devices()[:1]) == "cpu"
    with pytest.raises(ValueError, match="no devices"):
        platform.platform_of([])
