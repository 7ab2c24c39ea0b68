"""TPU slices as abstract devices, for compiling before renting (issue #29).

`jax.experimental.topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1")` gives
the devices of a TPU slice without a TPU: XLA's TPU compiler (from `libtpu`, jax's `tpu` extra)
compiles programs whose shardings name them and reports their memory and cost. Multi-host slices
come as one device list spanning several `process_index` values, which is the global mesh a
multi-controller run builds.

`SLICES` names slices the way Cloud TPU does (`v5p-8` counts TensorCores: 4 chips of 2 cores,
one device each; `v5e-16` counts chips) with the per-chip figures a fits / roofline verdict
needs. HBM is what XLA reports as available on the chip (v5p: "available HBM (95.74G)" in its
RESOURCE_EXHAUSTED message); peak FLOP/s (bf16 dense) and HBM bandwidth are the public
per-chip specifications: they make the roofline an estimate, labelled as such where printed.
"""

from __future__ import annotations

import dataclasses
import functools
import os

GiB = 1024**3


class LibtpuMissing(RuntimeError):
    """libtpu is not installed, so no TPU topology can be described."""


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # Cloud TPU's name, e.g. "v5p-8"
    topology: str  # jax's topology_name, e.g. "v5p:2x2x1"
    chips: int
    hbm_bytes_per_chip: int
    peak_flops_per_chip: float  # bf16 dense, public spec
    hbm_bytes_per_s_per_chip: float  # public spec


def _slice(name, topology, chips, hbm_gib, tflops, hbm_gbps):
    return Slice(name, topology, chips, int(hbm_gib * GiB), tflops * 1e12, hbm_gbps * 1e9)


SLICES: dict[str, Slice] = {
    s.name: s
    for s in (
        _slice("v5p-8", "v5p:2x2x1", 4, 95.74, 459, 2765),
        _slice("v5p-16", "v5p:2x2x2", 8, 95.74, 459, 2765),
        _slice("v5p-128", "v5p:4x4x4", 64, 95.74, 459, 2765),
        _slice("v4-8", "v4:2x2x1", 4, 32, 275, 1228),
        _slice("v5e-16", "v5e:4x4", 16, 16, 197, 819),
        _slice("v6e-64", "v6e:8x8", 64, 32, 918, 1640),
    )
}


def slice_for(name: str) -> Slice:
    """The `Slice` called `name` ("v5p-8") or whose topology is `name` ("v5p:2x2x1")."""
    for s in SLICES.values():
        if name in (s.name, s.topology):
            return s
    known = ", ".join(f"{s.name} ({s.topology})" for s in SLICES.values())
    raise ValueError(f"unknown TPU slice {name!r}: use one of {known}")


@functools.cache
def topology_devices(name: str) -> tuple:
    """The abstract devices of slice `name` (a `SLICES` key or a jax topology name)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise LibtpuMissing(
            "compiling for TPU needs libtpu: pip install 'jax[tpu]==<the installed jax>' "
            "(jax 0.10.2 pins libtpu 0.0.42.*); no TPU is needed"
        ) from e
    from jax.experimental import topologies

    # libtpu takes /tmp/libtpu_lockfile for the process that owns the TPU; a compile-only client
    # owns none, and parallel test workers or a second compile must not fail on the lock.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topo = name if ":" in name else slice_for(name).topology
    return tuple(topologies.get_topology_desc(platform="tpu", topology_name=topo).devices)


def devices_per_chip(s: Slice) -> int:
    """Devices the runtime exposes per chip (1 for megacore v5p, 2 where each core is one)."""
    return max(1, len(topology_devices(s.topology)) // s.chips)


def hbm_bytes_per_device(s: Slice) -> int:
    return s.hbm_bytes_per_chip // devices_per_chip(s)
