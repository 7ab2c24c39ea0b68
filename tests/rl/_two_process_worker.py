"""One process of the 2-process CPU test (`distributed_test.py` launches two of these).

Runs what a multi-process GRPO step needs, on a tiny model: object exchange, the prompt split,
global parameters built from host data, prefix-shared old log-probs with global parameters, one
`Updater.step` on a global (fsdp x tensor) mesh spanning both processes, and a local replica
used by a process-local jit. Results go to `<out_dir>/process_<i>.npz` for the test to compare
against a 1-process run of `build_problem()` (which the test imports from this file).

Usage: python _two_process_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

MESH = {"fsdp": 2, "tensor": 2}
ROWS_PER_MICRO = 4


def build_problem():
    """Model, initial host parameters, micro-batches and a prefix-shared group (deterministic)."""
    from flax import nnx

    from cleaner_jax.models.config import tiny_config
    from cleaner_jax.models.qwen import Qwen
    from cleaner_jax.rl.packing import TrainSample, pack, split_rows

    cfg = tiny_config(vocab_size=64, hidden_size=32, intermediate_size=64, head_dim=8, num_layers=1)
    graphdef, state = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    samples = [
        TrainSample(
            rng.integers(0, 64, n),
            rng.random(n) > 0.3,
            advantage=float(rng.normal()),
            logprobs=-rng.random(n) * 4,
        )
        for n in rng.integers(5, 30, 10)
    ]
    micros = split_rows(pack(samples, 32, rows_multiple=8), ROWS_PER_MICRO)
    prompt = rng.integers(0, 64, 7)
    responses = [rng.integers(0, 64, n) for n in (5, 9, 3)]
    return cfg, graphdef, state, micros, prompt, responses


def flat_numpy(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(tree)}


def optimizer():
    from cleaner_jax.rl.update import OptimConfig, make_optimizer

    return make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=1))


def _main(coordinator: str, num_processes: int, process_id: int, out_dir: str) -> None:
    from cleaner_jax.rl import distributed

    distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=60)

    import jax

    from cleaner_jax.models import sharding
    from cleaner_jax.rl import logprobs as logprobs_lib
    from cleaner_jax.rl.update import LossConfig, Updater

    report: dict = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "devices": jax.device_count(),
    }
    # Different sizes per process exercise the length exchange and padding.
    t0 = time.perf_counter()
    report["objects"] = distributed.allgather_objects(
        {"p": process_id, "s": "x" * (97 * process_id + 5)}
    )
    report["share"] = distributed.process_share(list(range(5)))
    report["gathered_shares"] = distributed.gather_shares(
        [f"prompt{i}" for i in distributed.process_share(list(range(5)))]
    )

    report["time_exchange_s"] = time.perf_counter() - t0
    cfg, graphdef, host_state, micros, prompt, responses = build_problem()
    host_state = jax.tree.map(np.asarray, host_state)
    mesh = sharding.make_mesh(MESH)
    shardings = sharding.state_shardings(host_state, mesh, cfg=cfg)
    state = distributed.host_batch_to_global(host_state, shardings)
    leaf = jax.tree.leaves(state)[0]
    report["param_fully_addressable"] = bool(leaf.is_fully_addressable)
    report["sharded_params"] = sum(
        not x.sharding.is_fully_replicated for x in jax.tree.leaves(state)
    )

    # Old log-probs: the prefix-shared forward on the global parameters with host inputs.
    lp = logprobs_lib.prefix_shared_logprobs(graphdef, state, prompt, responses)

    report["time_prefix_lp_s"] = time.perf_counter() - t0 - report["time_exchange_s"]
    updater = Updater(graphdef, optimizer(), LossConfig(), mesh=mesh)
    opt_state = updater.init(state)
    state, opt_state, metrics = updater.step(state, opt_state, micros)
    report["metrics"] = metrics
    report["time_to_update_s"] = time.perf_counter() - t0

    replica = distributed.local_replica(state)
    report["replica_devices"] = sorted(
        {str(d) for x in jax.tree.leaves(replica) for d in x.devices()}
    )
    report["my_first_device"] = str(jax.local_devices()[0])
    # A process-local jit on the replica: what the sampler does; no other process takes part.
    local_lp = logprobs_lib.packed_logprobs(graphdef, replica, micros[0])
    replica_bf16 = distributed.local_replica(state, "bfloat16")
    report["replica_bf16_dtypes"] = sorted({str(x.dtype) for x in jax.tree.leaves(replica_bf16)})
    # The per-step weight sync must reuse its compiled program.
    distributed.local_replica(state, "bfloat16")
    report["replicator_programs"] = distributed._replicator.cache_info().currsize

    np.savez(
        os.path.join(out_dir, f"process_{process_id}.npz"),
        **{f"param/{k}": v for k, v in flat_numpy(distributed.to_host(state)).items()},
        **{f"replica/{k}": v for k, v in flat_numpy(replica).items()},
        **{f"prefix_lp/{i}": v for i, v in enumerate(lp)},
        local_lp=local_lp,
    )
    report["time_total_s"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, f"process_{process_id}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    _main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
