"""Ahead-of-time compiles of a training step's programs for devices this host does not have.

`launch/tpu_compile.py` builds a config's parts abstractly on the devices of a TPU slice
(`models.topology`: libtpu, no TPU) and compiles, with the real shapes and shardings and nothing
allocated, each program a step runs: the update (gradient of one micro-batch accumulated into the
donated gradient tree, then AdamW), the old-log-prob recompute (the packed training forward), the
sampler's prefill and multi-step decode (paged kernel) and the weight sync trainer -> sampler.
What is compiled is what a run executes: the same jitted functions (`rl.update._grad_step`,
`Updater._apply_impl`, `rl.logprobs._packed_logprobs`, the sampler programs of `sampling.aot`),
with kernel choice following the target's platform (`models.platform`).

Per program: XLA's `memory_analysis()` (arguments, outputs, aliased, temporaries, code), its
`cost_analysis()` (FLOPs, bytes accessed: per device), the compile time and the collectives of
the compiled HLO (counts, and how many sit outside any loop with the bytes of the largest such
collective: under fsdp no all-gather of the whole parameter set should run outside the layer
loop). Memory per device adds the long-lived buffers a program does not take as arguments but
that are live while it runs (AdamW state during the gradient step, the sampler's weights and KV
pool during training programs): `fits` compares that total with the chip's HBM.

Letters: R rows, T row length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from cleaner_jax.models import sharding as sharding_lib
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import logprobs as logprobs_lib
from cleaner_jax.rl import update as update_lib

_COLLECTIVES = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
}


@dataclasses.dataclass
class ProgramReport:
    """One compiled program's figures, per device."""

    name: str
    compile_s: float
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    flops: float
    bytes_accessed: float
    collectives: dict[str, int]
    collectives_outside_loops: dict[str, int]
    # bytes of the largest result of each kind of collective outside loops (a whole-parameter
    # gather shows here, whether XLA emits it as an all-gather or an all-reduce)
    largest_outside_loops: dict[str, int]
    custom_calls: dict[str, int]  # custom-call target -> count (Mosaic kernels: tpu_custom_call)
    resident_other: int = 0  # live buffers that are not arguments (see the module docstring)
    notes: str = ""

    @property
    def program_bytes(self) -> int:
        """What the program itself holds: arguments + outputs not aliased to them + temps +
        code."""
        return self.argument + self.output - self.alias + self.temp + self.code

    @property
    def total_bytes(self) -> int:
        return self.program_bytes + self.resident_other

    def roofline_s(self, peak_flops: float, hbm_bytes_per_s: float) -> float:
        """An estimate: max(FLOPs / peak, bytes accessed / HBM bandwidth), per device."""
        return max(self.flops / peak_flops, self.bytes_accessed / hbm_bytes_per_s)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["program_bytes"] = self.program_bytes
        d["total_bytes"] = self.total_bytes
        return d


# ---------------------------------------------------------------- HLO collectives


def _computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines, from HLO text."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            current = m.group(1)
            comps[current] = []
        elif current is not None and line.startswith(" "):
            comps[current].append(line)
    return comps


def _called(line: str) -> list[str]:
    names = re.findall(
        r"(?:calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)", line
    )
    for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
    return names


def _result_bytes(line: str) -> int:
    """Bytes of the largest array in an instruction's result shape."""
    lhs = line.split("=", 1)[1] if "=" in line else line
    head = lhs.split("(", 1)[0] if not lhs.strip().startswith("(") else lhs.split(")", 1)[0]
    best = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", head):
        if dtype in _DTYPE_BYTES:
            n = math.prod(int(x) for x in dims.split(",") if x) if dims else 1
            best = max(best, n * _DTYPE_BYTES[dtype])
    return best


def collective_stats(hlo: str) -> tuple[dict[str, int], dict[str, int], int]:
    """(counts of each collective, counts outside any while loop, bytes of the largest result of
    each kind outside loops) in compiled HLO text. Async pairs count once (their `-start`)."""
    comps = _computations(hlo)
    in_loop: set[str] = set()
    frontier = [
        n
        for lines in comps.values()
        for line in lines
        for n in re.findall(r"body=%?([\w.\-]+)", line)
    ]
    while frontier:
        name = frontier.pop()
        if name in in_loop:
            continue
        in_loop.add(name)
        frontier += [c for line in comps.get(name, []) for c in _called(line)]
    total = dict.fromkeys(_COLLECTIVES, 0)
    outside = dict.fromkeys(_COLLECTIVES, 0)
    largest = dict.fromkeys(_COLLECTIVES, 0)
    for name, lines in comps.items():
        for line in lines:
            for kind in _COLLECTIVES:
                if re.search(rf"\s{kind}(-start)?\(", line):
                    total[kind] += 1
                    if name not in in_loop:
                        outside[kind] += 1
                        largest[kind] = max(largest[kind], _result_bytes(line))
    return total, outside, largest


def custom_call_counts(hlo: str) -> dict[str, int]:
    """custom_call_target -> number of custom calls in HLO text (a Pallas/Mosaic kernel is a
    "tpu_custom_call", a Triton one "__gpu$xla.gpu.triton")."""
    counts: dict[str, int] = {}
    for target in re.findall(r'custom_call_target="([^"]+)"', hlo):
        counts[target] = counts.get(target, 0) + 1
    return counts


# ---------------------------------------------------------------- compiling


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))


def compile_program(
    name: str, fn, args: tuple, kwargs: dict, mesh, notes: str = ""
) -> ProgramReport:
    """Lowers and compiles `fn(*args, **kwargs)` (a jitted function; args ShapeDtypeStructs with
    shardings) under `jax.set_mesh(mesh)` (None: no context mesh), and reads its figures."""
    t0 = time.perf_counter()
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        compiled = fn.lower(*args, **kwargs).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    flops, accessed = _cost(compiled)
    hlo = compiled.as_text()
    total, outside, largest = collective_stats(hlo)
    return ProgramReport(
        name=name,
        compile_s=seconds,
        argument=int(mem.argument_size_in_bytes),
        output=int(mem.output_size_in_bytes),
        alias=int(mem.alias_size_in_bytes),
        temp=int(mem.temp_size_in_bytes),
        code=int(mem.generated_code_size_in_bytes),
        flops=flops,
        bytes_accessed=accessed,
        collectives=total,
        collectives_outside_loops=outside,
        largest_outside_loops=largest,
        custom_calls=custom_call_counts(hlo),
        notes=notes,
    )


# ---------------------------------------------------------------- abstract inputs


def with_shardings(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def param_like_shardings(tree: Any, mesh, cfg) -> Any:
    """Shardings of a parameter tree or a parameter-shaped one (optimizer moments): the model's
    rules by parameter name; scalars (step counts, the loss scale) replicated."""
    units = {"heads": cfg.head_dim, "kv_heads": cfg.head_dim}

    def one(path, leaf):
        if not leaf.shape:
            return NamedSharding(mesh, PartitionSpec())
        logical = sharding_lib.param_logical_axes(path)
        spec = sharding_lib.logical_to_spec(logical, shape=leaf.shape, mesh=mesh, units=units)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, tree)


def abstract_params(cfg, mesh):
    """(graphdef, parameter ShapeDtypeStructs sharded on `mesh` by the model's rules)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding_lib.state_shardings(state, mesh, cfg=cfg)
    return graphdef, with_shardings(state, shardings)


def abstract_opt_state(optimizer, params, mesh, cfg):
    shapes = jax.eval_shape(optimizer.init, params)
    return with_shardings(shapes, param_like_shardings(shapes, mesh, cfg))


def tree_bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest
    shard's, which is every shard's for even splits)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def batch_structs(fields, rows: int, row_len: int, mesh, batch_axes=("data", "fsdp")) -> dict:
    """A packed micro-batch's arrays as ShapeDtypeStructs, rows sharded over `batch_axes`."""
    sharding = NamedSharding(mesh, PartitionSpec(batch_axes, None))
    floats = {"loss_mask_RT", "old_logprobs_RT", "advantages_RT", "is_weights_RT"}
    return {
        k: jax.ShapeDtypeStruct(
            (rows, row_len), jnp.float32 if k in floats else jnp.int32, sharding=sharding
        )
        for k in fields
    }


def update_programs(graphdef, params, opt_state, optimizer, loss_cfg, mesh, rows, row_len):
    """The update's two programs as the trainer runs them with gradient accumulation: the
    gradient of one micro-batch added into the donated accumulator, then AdamW."""
    batch_axes = ("data", "fsdp")
    arrays = batch_structs(loss_cfg.array_fields, rows, row_len, mesh, batch_axes)
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    grads = with_shardings(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params),
        jax.tree.map(lambda x: x.sharding, params),
    )
    metrics = jax.eval_shape(
        lambda s, a, n: update_lib._grad_step(s, graphdef, a, n, loss_cfg, None, batch_axes)[1],
        params,
        {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in arrays.items()},
        jax.ShapeDtypeStruct((), jnp.float32),
    )
    metrics = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=scalar.sharding), metrics
    )
    updater = update_lib.Updater(graphdef, optimizer, loss_cfg, mesh=mesh, batch_axes=batch_axes)
    loss_scale = update_lib.loss_scale_of(opt_state)
    grad = (
        update_lib._grad_step,
        (params, graphdef, arrays, scalar, loss_cfg, mesh, batch_axes),
        {"acc": (grads, metrics), "loss_scale": None if loss_scale is None else scalar},
    )
    apply = (updater._apply, (params, opt_state, grads), {})
    return {"update/grad": grad, "update/apply": apply}, grads


def recompute_program(graphdef, params, mesh, rows, row_len, temperature, chunk):
    """The old-log-prob recompute (`logprobs.recompute_sample_logprobs`'s one program)."""
    batch_axes = ("data", "fsdp")
    arrays = batch_structs(logprobs_lib.SCORE_FIELDS, rows, row_len, mesh, batch_axes)
    return (
        logprobs_lib._packed_logprobs,
        (graphdef, params, *(arrays[k] for k in logprobs_lib.SCORE_FIELDS)),
        {"temperature": temperature, "chunk": chunk, "mesh": mesh, "batch_axes": batch_axes},
    )


def prefix_shared_program(graphdef, params, mesh, group, prompt_len, resp_len, temperature, chunk):
    """The previous recompute (`logprobs._prefix_shared`: dense attention over a prompt KV cache
    copied `group` times), kept to show what it costs at the paper's lengths."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def struct(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    args = (
        graphdef,
        params,
        struct((prompt_len,)),
        struct(()),
        struct((group, resp_len)),
        struct((group,)),
    )
    return logprobs_lib._prefix_shared, args, {"temperature": temperature, "chunk": chunk}


def fits(total_bytes: int, hbm_bytes: int, headroom: float = 0.1) -> dict:
    return {
        "fits": bool(total_bytes <= hbm_bytes),
        "fits_with_headroom": bool(total_bytes <= (1.0 - headroom) * hbm_bytes),
        "headroom_fraction": float(1.0 - total_bytes / hbm_bytes),
    }


def round_rows(rows: int, mesh) -> int:
    return update_lib.round_rows(rows, mesh)
