"""The platform a program is compiled for, which decides every kernel choice (issue #29).

`jax.default_backend()` names the host's backend, not the target of the program being traced:
a program lowered on a CPU host for abstract TPU devices (`launch/tpu_compile.py`,
`jax.experimental.topologies`) must pick splash attention and the Mosaic paged kernel, and a GPU
host compiling a CPU program must not pick Triton. So kernel choice reads, in order:

1. an explicit `target(platform)` context (for programs with no mesh in context);
2. the platform of the context mesh's devices (`jax.set_mesh(mesh)`; an abstract mesh built from
   a TPU topology carries `abstract_device.platform == "tpu"`);
3. the host's default backend.

Platforms are normalised to "cpu" | "gpu" | "tpu" ("cuda" and "rocm" are "gpu").
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

PLATFORMS = ("cpu", "gpu", "tpu")
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cleaner_jax_target_platform", default=None
)


def normalize(platform: str) -> str:
    """ "cuda"/"rocm"/"gpu" -> "gpu"; "tpu"; "cpu". Unknown names raise `ValueError`."""
    p = platform.lower()
    if p in ("cuda", "rocm", "gpu"):
        return "gpu"
    if p in ("tpu", "cpu"):
        return p
    raise ValueError(f"unknown platform {platform!r}: expected one of cpu, gpu (cuda/rocm), tpu")


def _mesh_device():
    """The abstract device of the context mesh, or None without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    return getattr(mesh, "abstract_device", None)


def target_platform() -> str:
    """ "cpu" | "gpu" | "tpu": what the program being traced runs on (see the module docstring)."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    device = _mesh_device()
    if device is not None:
        return normalize(device.platform)
    return normalize(jax.default_backend())


def target_device_kind() -> str:
    """The device kind ("TPU v5", "TPU v5 lite", "NVIDIA H100 80GB HBM3", "cpu", ...) of the
    context mesh's devices, else of this host's first device."""
    device = _mesh_device()
    if device is not None:
        return str(device.device_kind)
    return str(jax.devices()[0].device_kind)


def target_megacore() -> bool:
    """Whether one device of the target is two TensorCores (megacore: TPU v5p; v4 as some
    runtimes expose it). Read from the context mesh's abstract device (`num_cores`); without a
    mesh, from this host's first device."""
    device = _mesh_device()
    if device is None:
        device = jax.devices()[0]
    if normalize(device.platform) != "tpu":
        return False
    return int(getattr(device, "num_cores", 1) or 1) >= 2


@contextlib.contextmanager
def target(platform: str) -> Iterator[str]:
    """Kernel choice inside this context follows `platform` (normalised)."""
    token = _OVERRIDE.set(normalize(platform))
    try:
        yield _OVERRIDE.get()
    finally:
        _OVERRIDE.reset(token)


def platform_of(devices) -> str:
    """The normalised platform of a non-empty sequence of (possibly abstract) devices."""
    devices = list(devices)
    if not devices:
        raise ValueError("no devices")
    kinds = {normalize(d.platform) for d in devices}
    if len(kinds) != 1:
        raise ValueError(f"devices span several platforms: {sorted(kinds)}")
    return kinds.pop()
