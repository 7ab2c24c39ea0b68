"""Flax NNX Qwen2 / Qwen2.5 / Qwen3 dense decoder.

Parameter names follow HF (`embed_tokens`, `layers[i].self_attn.q_proj`, `input_layernorm`, ...)
so checkpoint import/export is transposes and reshapes. Linear kernels are stored `[in, out]`.

Two ways in, one module:
- training / scoring over packed rows: `model(tokens_BT, positions_BT, segment_ids_BT=...)`;
  tokens attend causally within their own segment only (segment 0 is padding), through
  `attention.attention` with the implementation `cfg.attention` (no [T, T] mask unless "dense");
- reads/writes of an explicit KV cache: `model(tokens_BT, positions_BT, cache=cache)`; the cache
  object (a pytree, `kv_cache.DenseKVCache` or the sampler's paged cache) does the write and the
  attention for each layer through `cache.update_and_attend(layer, q, k, v, positions)`.

Two layouts of the decoder layers (`cfg.scan_layers`), one set of numbers:
- unrolled (default): `layers` is a list, state paths `layers/3/self_attn/q_proj/kernel`, and the
  forward is a Python loop, so each program's HLO grows with the depth;
- stacked: `layers` is ONE `DecoderLayer` whose parameters carry a leading L axis (state path
  `layers/self_attn/q_proj/kernel`, shape [L, D, N*H]); the no-cache forward is a `lax.scan` over
  them (one layer's HLO whatever the depth: compile time and program size stop growing with L),
  the KV-cache paths loop over static slices `[i]` so the cache protocol keeps its int `layer`.
`stack_layers` / `unstack_layers` convert a state between the two.

Letters: B batch, T query seq, S key seq, D embed, N query heads, K kv heads, G = N // K,
H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from cleaner_jax.models import attention as attention_lib
from cleaner_jax.models.attention import attention_weights_mask as attention_weights_mask
from cleaner_jax.models.config import ModelConfig


class KVCache(Protocol):
    """What the model needs from a KV cache (a pytree that flows through jit)."""

    def update_and_attend(
        self,
        layer: int,
        q_BTNH: jax.Array,
        k_BTKH: jax.Array,
        v_BTKH: jax.Array,
        positions_BT: jax.Array,
    ) -> tuple[jax.Array, KVCache]: ...


def rope_tables(positions_BT: jax.Array, head_dim: int, theta: float):
    """cos/sin tables [B, T, H] of HF's rotate-half RoPE, in float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    emb_BTH = jnp.concatenate([freqs_BTh, freqs_BTh], axis=-1)
    return jnp.cos(emb_BTH), jnp.sin(emb_BTH)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@jax.custom_vjp
def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """HF's rotate-half RoPE of x [B, T, N, H] with tables [B, T, H], computed in float32.

    Differentiable in x only (the tables are functions of positions). The backward is written
    out: rotate_half is a signed permutation R with R^T = -R, so dx = dy * cos - R(dy * sin), the
    same products and one add per element as autodiff, which instead transposed the concatenate
    into pads and adds (~3% of the CPU train step, #19).
    """
    x = x_BTNH.astype(jnp.float32)
    out = x * cos_BTH[:, :, None, :] + _rotate_half(x) * sin_BTH[:, :, None, :]
    return out.astype(x_BTNH.dtype)


def _apply_rope_fwd(x_BTNH, cos_BTH, sin_BTH):
    return apply_rope(x_BTNH, cos_BTH, sin_BTH), (cos_BTH, sin_BTH)


def _apply_rope_bwd(res, dy_BTNH):
    cos_BTH, sin_BTH = res
    dy = dy_BTNH.astype(jnp.float32)
    dx = dy * cos_BTH[:, :, None, :] - _rotate_half(dy * sin_BTH[:, :, None, :])
    return dx.astype(dy_BTNH.dtype), None, None  # dy has x's dtype (the output's)


apply_rope.defvjp(_apply_rope_fwd, _apply_rope_bwd)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel stored [in, out] in param_dtype, computed in dtype."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, cfg: ModelConfig, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), cfg.jnp_param_dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), cfg.jnp_param_dtype)) if bias else None
        self.dtype = cfg.jnp_dtype

    def compute_kernel(self) -> jax.Array:
        """The kernel in the compute dtype."""
        return self.kernel[...].astype(self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.compute_kernel()
        # As one [tokens, in] @ [in, out] matmul: the kernel gradient is then a contraction over
        # one dimension, for which XLA on CPU transposes the small input instead of writing a
        # transposed copy of the [tokens, out] cotangent (the MLP's forward + backward ran 1.3x
        # faster, #19). Same products and sums, so the same numbers.
        y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel)
        y = y.reshape(*x.shape[:-1], kernel.shape[1])
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, cfg: ModelConfig):
        self.weight = nnx.Param(jnp.ones((dim,), cfg.jnp_param_dtype))
        self.eps = cfg.rms_norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # HF casts back to the input dtype before the weight multiply; so do we.
        return self.weight[...].astype(x.dtype) * y.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.q_proj = Linear(d, n * h, bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.k_proj = Linear(d, k * h, bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.v_proj = Linear(d, k * h, bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.o_proj = Linear(n * h, d, bias=cfg.o_bias, cfg=cfg, rngs=rngs)
        self.q_norm = RMSNorm(h, cfg=cfg) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h, cfg=cfg) if cfg.qk_norm else None
        self.cfg = cfg

    def qkv(self, x_BTD: jax.Array, positions_BT: jax.Array):
        cfg = self.cfg
        b, t, _ = x_BTD.shape
        q_BTNH = self.q_proj(x_BTD).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k_BTKH = self.k_proj(x_BTD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v_BTKH = self.v_proj(x_BTD).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if self.q_norm is not None:
            q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
        cos, sin = rope_tables(positions_BT, cfg.head_dim, cfg.rope_theta)
        return apply_rope(q_BTNH, cos, sin), apply_rope(k_BTKH, cos, sin), v_BTKH

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, layer, cache):
        q_BTNH, k_BTKH, v_BTKH = self.qkv(x_BTD, positions_BT)
        if cache is None:
            cfg = self.cfg
            out_BTNH = attention_lib.attention(
                q_BTNH,
                k_BTKH,
                v_BTKH,
                segment_ids_BT,
                impl=cfg.attention,
                block_q=cfg.attention_block,
                block_kv=cfg.attention_block,
            )
        else:
            out_BTNH, cache = cache.update_and_attend(layer, q_BTNH, k_BTKH, v_BTKH, positions_BT)
        b, t = x_BTD.shape[:2]
        return self.o_proj(out_BTNH.reshape(b, t, -1)), cache


@jax.custom_vjp
def swiglu_down(gate_XF: jax.Array, up_XF: jax.Array, kernel_FD: jax.Array) -> jax.Array:
    """(silu(gate) * up) @ kernel, the MLP after its gate and up projections.

    Differentiable in all three. The backward keeps only gate and up and recomputes the sigmoid
    and the product, where autodiff saved four more [tokens, F] arrays per layer (three silu
    intermediates and the product): the 6-layer CPU train step of `launch/bench_train.py` needs
    402 MB of XLA temporaries instead of 438 MB, at the same speed (#19).
    """
    return jnp.dot(jax.nn.silu(gate_XF) * up_XF, kernel_FD)


def _swiglu_down_fwd(gate_XF, up_XF, kernel_FD):
    return swiglu_down(gate_XF, up_XF, kernel_FD), (gate_XF, up_XF, kernel_FD)


def _swiglu_down_bwd(res, dy_XD):
    # The barrier stops XLA from merging this recomputation with the forward's (CSE), which
    # would keep the forward's [X, F] intermediates alive until here after all.
    gate_XF, up_XF, kernel_FD = jax.lax.optimization_barrier(res)
    sig_XF = jax.nn.sigmoid(gate_XF)
    silu_XF = gate_XF * sig_XF
    # Contractions over one token dimension, as `Linear`'s (no transposed [X, F] copy).
    dkernel_FD = jnp.einsum("xf,xd->fd", silu_XF * up_XF, dy_XD)
    dh_XF = jnp.einsum("xd,fd->xf", dy_XD, kernel_FD)
    dgate_XF = dh_XF * up_XF * (sig_XF * (1 + gate_XF * (1 - sig_XF)))
    return dgate_XF, dh_XF * silu_XF, dkernel_FD


swiglu_down.defvjp(_swiglu_down_fwd, _swiglu_down_bwd)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, bias=False, cfg=cfg, rngs=rngs)
        self.up_proj = Linear(d, f, bias=False, cfg=cfg, rngs=rngs)
        self.down_proj = Linear(f, d, bias=False, cfg=cfg, rngs=rngs)

    def __call__(self, x_BTD):
        gate_BTF, up_BTF = self.gate_proj(x_BTD), self.up_proj(x_BTD)
        f = gate_BTF.shape[-1]
        kernel_FD = self.down_proj.compute_kernel()
        y_XD = swiglu_down(gate_BTF.reshape(-1, f), up_BTF.reshape(-1, f), kernel_FD)
        return y_XD.reshape(*x_BTD.shape[:-1], y_XD.shape[-1])


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg=cfg)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg=cfg)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BTD, positions_BT, segment_ids_BT, layer, cache):
        attn_BTD, cache = self.self_attn(
            self.input_layernorm(x_BTD), positions_BT, segment_ids_BT, layer, cache
        )
        x_BTD = x_BTD + attn_BTD
        x_BTD = x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
        return x_BTD, cache


def _layer_forward(layer_module, x_BTD, positions_BT, segment_ids_BT):
    return layer_module(x_BTD, positions_BT, segment_ids_BT, 0, None)[0]


def _cast_in_loop(w: jax.Array, one: jax.Array, dtype) -> jax.Array:
    """`w` (one layer's slice of a stacked parameter) in the compute dtype, times `one` (== 1.0).

    The numbers are those of the layer's own casts: x * 1.0 == x (NaN and inf included), and every
    use of a layer parameter casts it to the compute dtype first (kernels, biases, norm weights),
    so casting them all up front changes nothing; the gradient of the product is g * 1.0. What it
    changes is where XLA's TPU compiler can put the cast: a bare `convert(dynamic-slice(W, i))`
    it rewrites as `dynamic-slice(convert(W), i)` and hoists `convert(W)` of the whole stack out
    of the layer loop, so a bf16 copy of every layer's weights lived through the program
    (Qwen3-4B, 36 layers, one 2048-token row, one v5p chip: 8.1 GiB of temporaries scanned vs
    2.4 GiB unrolled; 3.3 GiB with this, `launch/bench_scan_layers.py`). A product with a value
    computed from the loop index pins the cast inside the loop.
    """
    return (w.astype(jnp.float32) * one).astype(dtype)


def _stacked_layers(cfg: ModelConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """One `DecoderLayer` whose parameters have a leading axis of `cfg.num_layers`, each layer
    initialised from its own split of the rng streams."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(layer_rngs):
        return DecoderLayer(cfg, rngs=layer_rngs)

    return make(rngs)


class Qwen(nnx.Module):
    """The decoder. `__call__` returns (float32 logits [B, T, V], cache)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(0.02)
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            param_dtype=cfg.jnp_param_dtype,
            dtype=cfg.jnp_dtype,
            embedding_init=init,
            rngs=rngs,
        )
        if cfg.scan_layers:
            self.layers = _stacked_layers(cfg, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg=cfg)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(cfg.hidden_size, cfg.vocab_size, bias=False, cfg=cfg, rngs=rngs)
        )
        self.cfg = cfg

    def hidden_states(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        segment_ids_BT: jax.Array | None = None,
        cache: Any = None,
    ) -> tuple[jax.Array, Any]:
        """Final-norm hidden states [B, T, D] in the compute dtype, and the updated cache."""
        x_BTD = self.embed_tokens(tokens_BT).astype(self.cfg.jnp_dtype)
        if cache is None and segment_ids_BT is None:
            segment_ids_BT = jnp.ones_like(tokens_BT)
        if self.cfg.scan_layers:
            x_BTD, cache = self._stacked_forward(x_BTD, positions_BT, segment_ids_BT, cache)
            return self.norm(x_BTD), cache
        for i, layer in enumerate(self.layers):
            if self.cfg.remat and cache is None:
                x_BTD = nnx.remat(_layer_forward)(layer, x_BTD, positions_BT, segment_ids_BT)
            else:
                x_BTD, cache = layer(x_BTD, positions_BT, segment_ids_BT, i, cache)
        return self.norm(x_BTD), cache

    def _stacked_forward(self, x_BTD, positions_BT, segment_ids_BT, cache):
        # The layers' state is split off and each step merges its slice back into a layer: the
        # scan body is a pure function of (carry, layer parameters), which `lax.scan` and
        # `jax.checkpoint` need; gradients reach the stacked parameters through the scan.
        graphdef, params = nnx.split(self.layers)
        if cache is not None:
            # Static slices: the cache protocol names its layer with a Python int.
            for i in range(self.cfg.num_layers):
                layer = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], params))
                x_BTD, cache = layer(x_BTD, positions_BT, segment_ids_BT, i, cache)
            return x_BTD, cache

        def body(x_BTD, xs):
            layer_params, index = xs
            # A 1.0 that XLA cannot prove constant, so that each layer's parameter casts stay in
            # the loop (see `_cast_in_loop`).
            one = (index >= 0).astype(jnp.float32)
            layer_params = jax.tree.map(
                lambda a: _cast_in_loop(a, one, self.cfg.jnp_dtype), layer_params
            )
            layer = nnx.merge(graphdef, layer_params)
            return layer(x_BTD, positions_BT, segment_ids_BT, 0, None)[0], None

        if self.cfg.remat:
            # As `nnx.remat` per unrolled layer: only the layer input is saved for the backward.
            # No CSE barrier is needed inside a scan body (JAX's `checkpoint` docs).
            body = jax.checkpoint(body, prevent_cse=False)
        layer_index = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
        x_BTD, _ = jax.lax.scan(body, x_BTD, (params, layer_index))
        return x_BTD, None

    def unembedding(self) -> tuple[jax.Array, bool]:
        """The output projection as stored: (`[V, D]` tied embedding, True) or (`[D, V]`, False).

        For callers that compute logits a chunk of tokens at a time (`rl/loss.py`), never [T, V].
        """
        if self.lm_head is None:
            return self.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        """float32 logits [..., V] from hidden states [..., D]."""
        return project_logits(h_BTD, *self.unembedding())

    def __call__(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        segment_ids_BT: jax.Array | None = None,
        cache: Any = None,
    ) -> tuple[jax.Array, Any]:
        h_BTD, cache = self.hidden_states(
            tokens_BT, positions_BT, segment_ids_BT=segment_ids_BT, cache=cache
        )
        return self.logits(h_BTD), cache


def project_logits(h_XD: jax.Array, unembed: jax.Array, transposed: bool) -> jax.Array:
    """float32 logits [..., V] of hidden states [..., D] through `Qwen.unembedding()`'s matrix."""
    w = unembed.astype(h_XD.dtype)
    eq = "...d,vd->...v" if transposed else "...d,dv->...v"
    return jnp.einsum(eq, h_XD, w, preferred_element_type=jnp.float32)


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array, temperature: float = 1.0):
    """log p(target) under softmax(logits / temperature), float32 [B, T]."""
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def stack_layers(state: nnx.State) -> nnx.State:
    """`state` of the unrolled layout (`layers/<i>/...`) in the stacked layout of
    `cfg.scan_layers` (`layers/...` with a leading layer axis); the other entries are shared."""
    raw = dict(state.raw_mapping)  # nested plain dicts, the tree `nnx.split` returns
    layers = raw["layers"]
    if not all(isinstance(i, int) for i in layers):
        raise ValueError(
            "stack_layers: state['layers'] is not indexed by layer number; it is stacked already"
        )
    raw["layers"] = jax.tree.map(
        lambda *xs: jnp.stack(xs), *[layers[i] for i in range(len(layers))]
    )
    return nnx.State(raw)


def unstack_layers(state: nnx.State) -> nnx.State:
    """`state` of the stacked layout (`cfg.scan_layers`) in the unrolled one; inverse of
    `stack_layers`."""
    raw = dict(state.raw_mapping)
    layers = raw["layers"]
    if any(isinstance(i, int) for i in layers):
        raise ValueError("unstack_layers: state['layers'] is indexed by layer number already")
    num_layers = jax.tree.leaves(layers)[0].shape[0]
    raw["layers"] = {i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)}
    return nnx.State(raw)
