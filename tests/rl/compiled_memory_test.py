"""Memory read off the compiled train and decode programs grows linearly in tokens."""

from cleaner_jax.models.config import tiny_config
from cleaner_jax.rl import compiled_memory as cm
from cleaner_jax.rl.update import LossConfig

CFG = tiny_config(vocab_size=2048, hidden_size=32, intermediate_size=64, num_layers=2, remat=True)


def test_train_step_temp_grows_linearly_with_the_row():
    loss = LossConfig(logprob_chunk=256)
    small = cm.train_step_memory(CFG, 1024, 1, loss).temp
    big = cm.train_step_memory(CFG, 8192, 1, loss).temp
    # 8x the tokens: at most linear (a constant share makes it less; 2.9x measured); attention
    # over [T, T] would be ~40x here (1 GiB of float32 logits per layer at 8192 tokens).
    assert 1.5 < big / small < 8


def test_train_activation_split_adds_up_and_remat_saves_the_layer_input():
    got = cm.train_activation_bytes(CFG.replace(num_layers=5), 512)
    assert got["total"] == got["one_layer"] + 4 * got["per_layer"]
    # With per-layer remat a layer keeps only its input [T, D] (float32 here) for the backward.
    assert got["per_layer"] == 512 * CFG.hidden_size * 4
    no_remat = cm.saved_residual_bytes(CFG.replace(remat=False), 512) - cm.saved_residual_bytes(
        CFG.replace(num_layers=1, remat=False), 512
    )
    assert no_remat > 5 * got["per_layer"]


def test_decode_temp_grows_at_most_linearly_with_the_context():
    small = cm.decode_step_memory(CFG, 512, 4)
    big = cm.decode_step_memory(CFG, 4096, 4)
    assert big.argument > 4 * small.argument  # the pool holds 8x the pages
    assert big.temp / small.temp < 10
