"""Multi-process helpers: the prompt split (properties), single-process fallbacks, and a real
2-process CPU run (`jax.distributed` on localhost) whose update equals a 1-process update."""

import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given

from cleaner_jax.models import sharding
from cleaner_jax.rl import distributed
from cleaner_jax.rl import logprobs as logprobs_lib
from cleaner_jax.rl.update import LossConfig, Updater

_WORKER = os.path.join(os.path.dirname(__file__), "_two_process_worker.py")
_TIMEOUT_S = 240


def _load_worker():
    spec = importlib.util.spec_from_file_location("_two_process_worker", _WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@given(st.integers(0, 50), st.integers(1, 9))
def test_process_share_partitions_in_order(num_items, num_processes):
    items = list(range(num_items))
    shares = [
        distributed.process_share(items, process_index=p, process_count=num_processes)
        for p in range(num_processes)
    ]
    assert [i for s in shares for i in s] == items  # contiguous, in process order, no overlap
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1


def test_process_share_rejects_bad_index():
    with pytest.raises(ValueError, match="outside"):
        distributed.process_share([1, 2], process_index=2, process_count=2)


def test_single_process_fallbacks():
    obj = {"a": np.arange(3), "b": "text"}
    assert distributed.allgather_objects(obj)[0] is obj
    assert distributed.gather_shares([1, 2]) == [1, 2]
    assert distributed.process_share(list("abc")) == [0, 1, 2]
    assert distributed.is_main_process()


def test_host_batch_to_global_equals_device_put():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    s = sharding.batch_sharding(mesh)
    arrays = {
        "x": np.arange(8 * 6, dtype=np.int32).reshape(8, 6),
        "y": np.linspace(0, 1, 8 * 6, dtype=np.float32).reshape(8, 6),
    }
    out = distributed.host_batch_to_global(arrays, s)
    for k, v in arrays.items():
        assert out[k].sharding == s
        np.testing.assert_array_equal(np.asarray(out[k]), v)
        ref = jax.device_put(v, s)
        for a, b in zip(out[k].addressable_shards, ref.addressable_shards, strict=True):
            assert a.device == b.device and a.index == b.index


def test_local_replica_single_process():
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    tree = {
        "w": jax.device_put(
            jnp.arange(32.0).reshape(8, 4),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", "tensor")),
        )
    }
    rep = distributed.local_replica(tree, "bfloat16")
    assert rep["w"].devices() == {jax.local_devices()[0]}
    assert rep["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(rep["w"], np.float32), np.arange(32.0).reshape(8, 4))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch_two(out_dir: str) -> None:
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    coordinator = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, _WORKER, coordinator, "2", str(i), out_dir],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"2-process run did not finish in {_TIMEOUT_S}s (a hung collective?)")
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("two_process"))
    _launch_two(out_dir)
    reports, arrays = [], []
    for i in range(2):
        with open(os.path.join(out_dir, f"process_{i}.json")) as f:
            reports.append(json.load(f))
        arrays.append(dict(np.load(os.path.join(out_dir, f"process_{i}.npz"))))
    return reports, arrays


@pytest.fixture(scope="module")
def one_process_reference():
    """The same step on one device of this (8-device) pytest process."""
    worker = _load_worker()
    cfg, graphdef, state, micros, prompt, responses = worker.build_problem()
    state = jax.device_put(state, jax.devices()[0])
    lp = logprobs_lib.prefix_shared_logprobs(graphdef, state, prompt, responses)
    updater = Updater(graphdef, worker.optimizer(), LossConfig())
    state, _, metrics = updater.step(state, updater.init(state), micros)
    return worker.flat_numpy(state), lp, metrics


@pytest.mark.slow
def test_two_processes_exchange_objects(two_process_run):
    reports, _ = two_process_run
    for i, r in enumerate(reports):
        assert (r["process_index"], r["process_count"]) == (i, 2)
        assert (r["local_devices"], r["devices"]) == (2, 4)
        assert r["objects"] == [{"p": 0, "s": "x" * 5}, {"p": 1, "s": "x" * 102}]
        assert r["gathered_shares"] == [f"prompt{k}" for k in range(5)]
    assert reports[0]["share"] + reports[1]["share"] == list(range(5))
    assert pickle.loads(pickle.dumps(reports[0]["objects"])) == reports[1]["objects"]


@pytest.mark.slow
def test_two_process_update_equals_one_process(two_process_run, one_process_reference):
    reports, arrays = two_process_run
    ref_params, ref_lp, ref_metrics = one_process_reference
    for r in reports:
        # Parameters really span both processes: the update ran over the global mesh.
        assert not r["param_fully_addressable"] and r["sharded_params"] > 0
        for k in ("loss", "grad_norm", "trained_tokens"):
            np.testing.assert_allclose(r["metrics"][k], ref_metrics[k], rtol=1e-5)
    for a in arrays:
        for k, v in ref_params.items():
            np.testing.assert_allclose(a[f"param/{k}"], v, atol=1e-6, err_msg=k)
        for i, v in enumerate(ref_lp):
            np.testing.assert_allclose(a[f"prefix_lp/{i}"], v, atol=1e-5)
    # The two processes agree exactly on the gathered parameters ...
    for k in ref_params:
        np.testing.assert_array_equal(arrays[0][f"param/{k}"], arrays[1][f"param/{k}"])


@pytest.mark.slow
def test_two_process_local_replica(two_process_run, one_process_reference):
    reports, arrays = two_process_run
    ref_params = one_process_reference[0]
    for r, a in zip(reports, arrays, strict=True):
        # ... and each holds a full copy on its own first device for the sampler.
        assert r["replica_devices"] == [r["my_first_device"]]
        assert r["replica_bf16_dtypes"] == ["bfloat16"]
        assert r["replicator_programs"] == 2  # fp32 and bf16; a repeated sync reuses its program
        for k in ref_params:
            np.testing.assert_array_equal(a[f"replica/{k}"], a[f"param/{k}"])
    assert reports[0]["my_first_device"] != reports[1]["my_first_device"]
    # A process-local jit on each replica (what the sampler runs): both processes computed the
    # same values independently, on equal weights (== the 1-process weights, checked above).
    lp0, lp1 = arrays[0]["local_lp"], arrays[1]["local_lp"]
    assert np.isfinite(lp0).all()
    np.testing.assert_array_equal(lp0, lp1)
