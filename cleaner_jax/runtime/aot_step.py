"""A config's training step compiled for a TPU slice, program by program (`launch/tpu_compile.py`).

`compile_step(config, slice_name)` builds the config's parts abstractly on the slice's devices
(the config's mesh over all of them, as the multi-controller run builds it; the sampler placed as
`sampling.aot` places it) and compiles each program with `runtime.aot`. The dtype policy is the
run's (`config.adapt_dtypes_to_platform`: float16 becomes bfloat16 on TPU).

Memory per device of each program adds the long-lived buffers that are live while it runs but
are not its arguments (the trainer and the sampler share the devices):
- update/grad: AdamW state, the sampler's weights, the KV pool;
- update/apply, recompute: the sampler's weights and the KV pool (and AdamW state for recompute);
- prefill, decode: the trainer's parameters and AdamW state;
- weight_sync: AdamW state, the KV pool and the sampler's previous weights (freed after).
The KV pool is the config's `rollout.engine.num_pages` or, for 0, what the run would size
(`sampler_budget.kv_pages_for`'s formula, the training step's temporaries from its TPU
compile).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cleaner_jax.models import sharding as sharding_lib
from cleaner_jax.models import topology as topology_lib
from cleaner_jax.models.platform import platform_of
from cleaner_jax.models.qwen import Qwen
from cleaner_jax.rl import update as update_lib
from cleaner_jax.runtime import aot, sampler_budget
from cleaner_jax.runtime import config as config_lib
from cleaner_jax.runtime import parts as parts_lib
from cleaner_jax.sampling.placement import sampler_placement

PROGRAMS = ("update", "recompute", "prefill", "decode", "weight_sync")


def _model_cfg(config, num_layers: int):
    if config.model.hf_path:
        cfg = parts_lib.model_config_for(config, 0)
    else:
        cfg = parts_lib.model_config_for(config, 256)  # the vocab only matters for "tiny"
    if num_layers:
        cfg = cfg.replace(num_layers=num_layers)
    return cfg


def compile_step(
    config: ml_collections.ConfigDict,
    slice_name: str,
    *,
    programs: tuple[str, ...] = PROGRAMS,
    recompute_lengths: tuple[int, ...] = (),
    prefix_shared_lengths: tuple[int, ...] = (),
    num_layers: int = 0,
    headroom: float = 0.1,
) -> dict:
    """Compiles `programs` of `config`'s step for `slice_name` (`models.topology.SLICES`).

    `recompute_lengths`: extra compiles of the recompute at these row lengths (one row per batch
    shard) to show its memory against the length; `prefix_shared_lengths`: the same for the
    previous dense prefix-shared recompute (a group of `rollout.n` responses of each length after
    a `data.max_prompt_tokens` prompt; a compile the TPU compiler refuses is recorded with its
    error). `num_layers` > 0 overrides the depth (tests).
    Returns a JSON-able dict (see `launch/tpu_compile.py` for the keys).
    """
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise ValueError(f"unknown programs {sorted(unknown)}; choose from {PROGRAMS}")
    sl = topology_lib.slice_for(slice_name)
    devices = topology_lib.topology_devices(sl.topology)
    platform = platform_of(devices)
    dtype_changes = config_lib.adapt_dtypes_to_platform(config, platform)
    cfg = _model_cfg(config, num_layers)
    rollout_devices, train_devices = sampler_budget.split_devices(config, devices)
    mesh = sharding_lib.make_mesh(sampler_budget.mesh_axes(config), devices=train_devices)
    hbm = topology_lib.hbm_bytes_per_device(sl)
    peak = sl.peak_flops_per_chip / topology_lib.devices_per_chip(sl)
    bw = sl.hbm_bytes_per_s_per_chip / topology_lib.devices_per_chip(sl)

    graphdef, params = aot.abstract_params(cfg, mesh)
    optim = parts_lib.optim_config_from(config, "train")
    optimizer = update_lib.make_optimizer(optim, compute_dtype=cfg.dtype)
    loss_cfg = parts_lib.loss_config_from(config, "train")
    opt_state = aot.abstract_opt_state(optimizer, params, mesh, cfg)
    rows = aot.round_rows(config.train.rows_per_micro, mesh)
    row_len = config.train.row_len
    sizes = {
        "params": aot.tree_bytes_per_device(params),
        "opt_state": aot.tree_bytes_per_device(opt_state),
    }
    reports: dict[str, aot.ProgramReport] = {}

    def run(name, fn, args, kwargs, notes="", on=mesh):
        logging.info("compiling %s for %s", name, sl.name)
        reports[name] = aot.compile_program(name, fn, args, kwargs, on, notes)
        return reports[name]

    if "update" in programs:
        update, grads = aot.update_programs(
            graphdef, params, opt_state, optimizer, loss_cfg, mesh, rows, row_len
        )
        sizes["grads"] = aot.tree_bytes_per_device(grads)
        for name, (fn, args, kwargs) in update.items():
            run(name, fn, args, kwargs, f"{rows} x {row_len} tokens per micro-batch")
    by_length = {}
    lengths = ([row_len] if "recompute" in programs else []) + list(recompute_lengths)
    for i, length in enumerate(lengths):
        fn, args, kwargs = aot.recompute_program(
            graphdef,
            params,
            mesh,
            rows,
            length,
            config.rollout.temperature,
            config.train.logprob_chunk,
        )
        main = i == 0 and "recompute" in programs
        name = "recompute" if main else f"recompute@{length}"
        r = run(
            name, fn, args, kwargs, f"{rows} x {length}" + ("; one shape per run" if main else "")
        )
        if not main:
            by_length[length] = r.program_bytes

    prefix_shared = {}
    for length in prefix_shared_lengths:
        fn, args, kwargs = aot.prefix_shared_program(
            graphdef,
            params,
            mesh,
            config.rollout.n,
            config.data.max_prompt_tokens,
            length,
            config.rollout.temperature,
            config.train.logprob_chunk,
        )
        try:
            r = aot.compile_program(f"prefix_shared@{length}", fn, args, kwargs, mesh)
            prefix_shared[length] = {"program_bytes": r.program_bytes, "temp": r.temp}
        except Exception as e:  # noqa: BLE001 - the compiler's refusal is the measurement
            prefix_shared[length] = {"error": str(e).splitlines()[0][:400]}

    sampler = _sampler(
        config, cfg, graphdef, params, mesh, programs, reports, sizes, hbm, run, rollout_devices
    )

    _add_residents(reports, sizes, split=rollout_devices is not None)
    model = _model_work(config, cfg, mesh, rows, sampler, sizes)
    out_programs = {}
    for name, r in reports.items():
        d = r.as_dict()
        d.update(aot.fits(r.total_bytes, hbm, headroom))
        flops, accessed = model.get(name.split("@")[0], (0.0, 0.0))
        if name.startswith("recompute@"):
            flops *= int(name.split("@")[1]) / row_len
        d["model_flops"], d["model_bytes"] = flops, accessed
        d["roofline_s_estimate"] = max(
            max(r.flops, flops) / peak, max(r.bytes_accessed, accessed) / bw
        )
        out_programs[name] = d

    def peak_of(prefix):
        vals = [
            r.total_bytes
            for n, r in reports.items()
            if n.split("@")[0] == prefix or n.startswith(prefix + "/")
        ]
        return max(vals) if vals else None

    return {
        "slice": sl.name,
        "topology": sl.topology,
        "devices": len(devices),
        "processes": len({d.process_index for d in devices}),
        "device_kind": str(devices[0].device_kind),
        "hbm_bytes_per_device": hbm,
        "mesh": dict(mesh.shape),
        "model": {
            "num_layers": cfg.num_layers,
            "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size,
            "dtype": cfg.dtype,
            "param_dtype": cfg.param_dtype,
            "attention": cfg.attention,
            "remat": cfg.remat,
            "scan_layers": bool(getattr(cfg, "scan_layers", False)),
        },
        "dtype_changes": dtype_changes,
        "rows_per_micro": rows,
        "row_len": row_len,
        "sizes_bytes_per_device": sizes,
        "sampler": sampler,
        "programs": out_programs,
        "train_step_bytes_per_device": peak_of("update"),
        "recompute_bytes_per_device": reports["recompute"].total_bytes
        if "recompute" in reports
        else None,
        "recompute_program_bytes_by_length": by_length,
        "prefix_shared_by_length": prefix_shared,
        # recompute_sample_logprobs packs every sample into [rows_per_micro, row_len] calls.
        "recompute_shapes_per_step": 1 if "recompute" in reports else None,
        "prefill_bytes_per_device": peak_of("prefill"),
        "decode_bytes_per_device": peak_of("decode"),
        "weight_sync_bytes_per_device": peak_of("weight_sync"),
        "fits": all(d["fits"] for d in out_programs.values()),
        "fits_with_headroom": all(d["fits_with_headroom"] for d in out_programs.values()),
        "compile_s_total": sum(r.compile_s for r in reports.values()),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _model_work(config, cfg, mesh, rows, sampler: dict, sizes: dict) -> dict:
    """Per device (FLOPs, bytes) of each program from the model's shapes, for the roofline:
    XLA's cost analysis counts a while loop's body once (a scanned model's layers, the decode
    steps, the chunked head) and not at all inside Pallas/Mosaic custom calls, so it undercounts.

    Matmul FLOPs 2 P per token forward (P: parameters in matmuls), attention 4 L N H per token
    per visible key (half the row on average, causal); training with remat 8 P + 4 attention
    (forward, recomputed forward, backward twice); decode reads the sampler's weights and the
    visible KV once per step (context: half of max_seq_len on average).
    """
    p = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attn_per_key = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    row_len = config.train.row_len
    tokens = rows * row_len / batch_shards / mesh.shape["tensor"]
    fwd = tokens * (2 * p + attn_per_key * row_len / 2)
    out = {"update/grad": (4 * fwd, 0.0), "recompute": (fwd, 0.0)}
    if sampler:
        e = config.rollout.engine
        tp = sampler["tensor_parallel"]
        ctx = e.max_seq_len / 2
        chunk = parts_lib.engine_config_from(config).prefill_chunk
        out["prefill"] = (chunk * (2 * p + attn_per_key * ctx) / tp, 0.0)
        steps, slots = sampler["decode_steps"], sampler["max_slots"]
        kv_bytes = slots * ctx / e.page_size * sampler["kv_page_bytes_per_device"]
        out["decode"] = (
            steps * slots * (2 * p + attn_per_key * ctx) / tp,
            steps * (sizes["sampler_weights"] + kv_bytes),
        )
    return out


def _add_residents(reports: dict, sizes: dict, split: bool = False) -> None:
    """What else each program's devices hold while it runs; split (`mesh.rollout_devices`), the
    sampler's devices hold its weights and pool only and the trainer's none of them."""
    opt, sampler, kv = sizes["opt_state"], sizes.get("sampler_weights", 0), sizes.get("kv_pool", 0)
    params = sizes["params"]
    if split:
        sampler = kv = params = opt_on_sampler = 0
    else:
        opt_on_sampler = opt
    other = {
        "update/grad": opt + sampler + kv,
        "update/apply": sampler + kv,
        "recompute": opt + sampler + kv,
        "prefill": params + opt_on_sampler,
        "decode": params + opt_on_sampler,
        "weight_sync": opt + kv + sampler,
    }
    for name, r in reports.items():
        r.resident_other = other.get(name.split("@")[0], opt + sampler + kv)


def _split_pool_model(progs_at, mesh, placement, wanted, hbm, fraction, page) -> tuple[int, int]:
    """(fixed bytes, bytes per page) of the sampler's programs on devices of their own, from
    probe compiles: at 64 and 128 pages, then again between 64 and the pool size that estimate
    gives (the generated code grows a little with the pool)."""
    from cleaner_jax.sampling.paged_cache import pages_for_memory

    def probe(k: int) -> int:
        return max(
            aot.compile_program(
                f"probe/{n}", *progs_at(k, mesh, placement)[n], placement.mesh
            ).program_bytes
            for n in wanted
        )

    lo, k = probe(64), 128
    for _ in range(2):
        per_page = max(page, (probe(k) - lo) / (k - 64))
        fixed = lo - 64 * per_page
        k = max(128, pages_for_memory(hbm, int(fixed), 0, fraction, math.ceil(per_page)))
    return int(fixed), int(math.ceil(per_page))


def _sampler_progs(sampler_cfg, params, engine, num_pages, mesh, placement) -> dict:
    from cleaner_jax.sampling import aot as sampler_aot

    graphdef = nnx.split(nnx.eval_shape(lambda: Qwen(sampler_cfg, rngs=nnx.Rngs(0))))[0]
    engine = dataclasses.replace(engine, num_pages=num_pages)
    return sampler_aot.sampler_programs(graphdef, params, engine, mesh, placement=placement)


def _sampler(
    config, cfg, graphdef, params, mesh, programs, reports, sizes, hbm, run, rollout_devices=None
) -> dict:
    """Compiles the sampler's programs on the placement a run builds (`sampling.placement`:
    tensor-parallel over one host's devices, or over `mesh.rollout_devices` of its own) with the
    pool a run allocates; fills `sizes`. Split, the weights cross by a device-to-device copy
    after a cast on the training mesh, not one program: `weight_sync` is then not compiled."""
    wanted = [p for p in ("prefill", "decode", "weight_sync") if p in programs]
    if rollout_devices is not None and "weight_sync" in wanted:
        wanted.remove("weight_sync")
    if not wanted:
        return {}
    from cleaner_jax.sampling.paged_cache import bytes_per_page, pages_for_memory

    engine = parts_lib.engine_config_from(config)
    dtype = parts_lib.sampler_dtype(config)
    devices = list(mesh.devices.flat)
    process = devices[0].process_index
    tp = config.rollout.engine.get("tensor_parallel", 0)
    if rollout_devices is not None:
        placement = sampler_placement(cfg, rollout_devices, tensor_parallel=tp)
    else:
        placement = sampler_placement(
            cfg,
            [d for d in devices if d.process_index == process],
            tensor_parallel=tp,
            train_devices=devices,
        )
    sampler_cfg = cfg.replace(dtype=dtype)
    sampler_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), params)
    sizes["sampler_weights"] = aot.tree_bytes_per_device(
        aot.with_shardings(sampler_params, placement.param_shardings(sampler_params, sampler_cfg))
    )
    page = bytes_per_page(cfg, engine.page_size, dtype, shards=placement.tp)
    num_pages = engine.num_pages
    cost = page  # bytes a page of the pool costs
    if not num_pages:
        # As `sampler_budget.kv_pages_for` sizes it when the engine is built: in use then are the
        # trainer's parameters and the sampler's weights; the reserve is AdamW state and the
        # gradient step (with the TPU compile's figures).
        in_use = sizes["params"] + sizes["sampler_weights"]
        grad = reports.get("update/grad")
        # What the gradient step holds beyond the parameters (the accumulator, the batch, its
        # temporaries and code), from its compile; without it, the gradients alone.
        step = grad.program_bytes - sizes["params"] if grad is not None else sizes["params"]
        reserve = sizes["opt_state"] + step
        fraction = config.rollout.engine.get("memory_fraction", sampler_budget.KV_MEMORY_FRACTION)
        if rollout_devices is not None:  # the sampler's devices hold nothing of the trainer's
            progs_at = functools.partial(_sampler_progs, sampler_cfg, params, engine)
            in_use, cost = _split_pool_model(progs_at, mesh, placement, wanted, hbm, fraction, page)
            reserve = 0
        num_pages = pages_for_memory(hbm, in_use, reserve, fraction, cost)
    sizes["kv_pool"] = num_pages * page
    progs = _sampler_progs(sampler_cfg, params, engine, num_pages, mesh, placement)
    for name in wanted:
        fn, args, kwargs = progs[name]
        # Prefill and decode run on the sampler's own mesh (their shard_map names it); the sync
        # is a jit with explicit output shardings over the training mesh's devices.
        on = placement.mesh if name != "weight_sync" else placement.sync_mesh
        run(name, fn, args, kwargs, f"tp {placement.tp}, {num_pages} pages", on=on)
    return {
        "split": None if rollout_devices is None else len(rollout_devices),
        "num_pages": num_pages,
        "pages_from": "config" if engine.num_pages else "sized net of training (num_pages=0)",
        "tokens_in_pool": num_pages * engine.page_size,
        # Sequences of max_seq_len the pool holds at once (fewer than max_slots: the engine
        # preempts long rollouts and recomputes them later).
        "full_length_sequences": (num_pages - 1) // -(-engine.max_seq_len // engine.page_size),
        "tensor_parallel": placement.tp,
        "megacore": placement.megacore,
        "kv_page_bytes_per_device": page,
        "max_slots": engine.max_slots,
        "decode_steps": engine.decode_steps,
    }


__all__ = ["PROGRAMS", "compile_step"]
