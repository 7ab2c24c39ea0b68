r"""The embedded miniature CLEANER study (DESIGN §4): a tiny Qwen3-shaped model, synthetic task.

Variants: a mode, `quick` (a smoke run of every stage, CI), `full` (the default; 12 min on a
2-core CPU), `long` (more seeds, steps and prompts; 31 min), or one of long's sizes with other
arms: `correction` (cleaner, correction), `async` (cleaner, async) and `reference` (baseline,
cleaner under the reference implementation's switches that apply to this task);
`arm=cleaner|baseline|switch|correction|async` (SAAR from the start, never, from step
total_steps // 2 on, from the start with the off-policy correction on (token TIS), or that with
async rollouts one version stale), `seed=N`, and `runlocal` (a 2-step smoke run of the real
train path on a random tiny model, assets prepared in the workdir). `study.*` sizes the whole
study (`launch/demo.py` runs SFT once, then `study.arms` for each seed, then the held-out
evaluation); every other field is one GRPO run.

The whole study (data, tokenizer, SFT, premise, design, arms x seeds, held-out eval, report):
  bash launch/quickstart.sh demo            # or: python launch/demo.py --mode=full --workdir=DIR
One arm by hand, on assets the demo prepared in DIR/assets:
  python launch/train.py --config=configs/demo.py:full,arm=cleaner,seed=0 --workdir=DIR/x \
    --config.tokenizer_path=DIR/assets/tokenizer --config.model.hf_path=DIR/sft/hf_export/final \
    --config.data.train_files='("DIR/assets/rl_train.jsonl",)' \
    --config.data.val_files='("DIR/assets/test.jsonl",)'
A self-contained smoke run of the real train path (random tiny model, 2 steps):
  python launch/train.py --config=configs/demo.py:runlocal --workdir=/tmp/runlocal
Print a variant:
  python launch/train.py --config=configs/demo.py:quick,arm=baseline --print_config
"""

import ml_collections

from cleaner_jax.rl import off_policy
from cleaner_jax.runtime.config import apply_reference_switches, parse_arg

MODES = {
    "quick": dict(
        study=dict(
            seeds=(0,),
            arms=("baseline", "cleaner"),
            n_sft=48,
            sft_copies=2,
            n_rl_train=32,
            n_test=8,
            premise_prompts=4,
            premise_n=4,
            eval=dict(problems=4, n=2, problems_per_batch=4),
        ),
        total_steps=2,
        prompts_per_step=4,
        n=4,
        sft_epochs=1,
        val_every=2,
        val_n=2,
    ),
    "full": dict(
        study=dict(
            seeds=(0, 1, 2),
            arms=("baseline", "cleaner", "switch"),
            # 880 distinct SFT problems, each once: with 176 problems x 5 copies the model
            # memorised them (data/demo_assets.py, TASK_RANGES).
            n_sft=880,
            sft_copies=1,
            n_rl_train=256,
            n_test=128,
            premise_prompts=64,
            premise_n=8,
            eval=dict(problems=32, n=2, problems_per_batch=8),
        ),
        total_steps=6,
        prompts_per_step=4,
        n=8,
        # 20 epochs: the copy circuit must also hold in the self-corrections, which sit further
        # from the question than a first call (default corpus, 64 RL-train prompts x 8: accuracy
        # clean / recovered 0.74 / 0.30 after 12 epochs, 0.89 / 0.67 after 20; study/demo.py).
        sft_epochs=20,
        # Every held-out problem x 1 sample, before and after training only (val_every =
        # total_steps): a held-out set large enough to tell the arms apart, at a bearable cost.
        val_every=6,
        val_n=1,
    ),
    # 6 seeds x 3 arms x 16 steps of 8 prompts x 4 samples (128 RL-train prompts a run): 31 min
    # from a fresh clone on a 2-core EPYC (Dec 5 2026), the budget is 60. Its design detects a
    # change of 0.039 in the first-attempt failure rate; SAAR's was 0.038 (p = 0.008).
    "long": dict(
        study=dict(
            seeds=(0, 1, 2, 3, 4, 5),
            arms=("baseline", "cleaner", "switch"),
            n_sft=880,
            sft_copies=1,
            n_rl_train=256,
            n_test=128,
            premise_prompts=128,
            premise_n=8,
            eval=dict(problems=128, n=4, problems_per_batch=8),
        ),
        total_steps=16,
        prompts_per_step=8,
        n=4,
        sft_epochs=20,
        # Held-out accuracy at steps 0, 4, 8, 12 and 16: a curve, and steps to the baseline's
        # final accuracy at a resolution of 4 steps.
        val_every=4,
        val_n=1,
    ),
}

# `correction` mode: the long mode's sizes with the SAAR arm beside the same arm with the
# off-policy correction on (token TIS, C = 2, against the trainer's recompute): issue #30.
MODES["correction"] = dict(
    MODES["long"], study=dict(MODES["long"]["study"], arms=("cleaner", "correction"))
)

# `async` mode (issue #31): the SAAR arm beside async rollouts with one version of staleness
# and the correction on (S = 1, token TIS). `reference` mode (issue #32): the long mode's baseline
# and SAAR arms under the reference implementation's switches that apply to this task.
MODES["async"] = dict(MODES["long"], study=dict(MODES["long"]["study"], arms=("cleaner", "async")))
MODES["reference"] = dict(
    MODES["long"], study=dict(MODES["long"]["study"], arms=("baseline", "cleaner"))
)

ARMS = ("cleaner", "baseline", "switch", "correction", "async")


def get_config(arg=None):
    args = parse_arg(
        arg,
        quick=False,
        full=False,
        long=False,
        correction=False,
        reference=False,
        arm="cleaner",
        **{"async": False},
        seed=0,
        runlocal=False,
    )
    if args["arm"] not in ARMS:
        raise ValueError(f"arm must be one of {'|'.join(ARMS)}, got {args['arm']!r}")
    modes = [m for m in MODES if args[m]]
    if len(modes) > 1:
        raise ValueError(f"give at most one mode of {'|'.join(MODES)}, got {modes}")
    mode_name = modes[0] if modes else "full"
    mode = MODES[mode_name]
    c = ml_collections.ConfigDict()
    c.seed = args["seed"]
    c.total_steps = 2 if args["runlocal"] else mode["total_steps"]
    # The study around the GRPO runs: its seeds, the synthetic problems (SFT / RL-train /
    # held-out, disjoint), how many corpus conversations each SFT problem yields, and the premise
    # check's size (the SFT model without SAAR on premise_prompts RL-train prompts x premise_n).
    # `arms`: the GRPO arms the study runs for each seed (each an `arm=` variant); `eval`: the
    # held-out evaluation of the SFT model and of each arm's first-seed final checkpoint, with
    # and without test-time SAAR (`problems` held-out problems x `n` samples).
    c.study = dict(mode=mode_name, **mode["study"])
    # The SFT corpus's kinds (`data/sft_corpus.py`): share of first calls that fail, share of
    # those fixed shallowly, share of deep failures given up (a guess after the error), and share
    # of tool-free guesses. The paper's regime needs groupmates that are wrong without a recovered
    # error: answers guessed without the tool, deep failures never fixed. Without them a recovered
    # trajectory is below its group's mean (E[A | recovered] -0.17, 95% CI -0.41 to 0.02, after
    # 20 SFT epochs); with give_up 0.5 and guesses 0.1 it is above it: +0.23 (0.07 to 0.39),
    # accuracy 0.47, 81% of the groups mixed (64 RL-train prompts x 8; study/demo.py).
    c.study.corpus = dict(error_rate=1 / 3, shallow_share=0.5, give_up_share=0.5, guess_rate=0.1)
    c.model = dict(
        preset="tiny",
        hf_path="",
        dtype="float32",
        param_dtype="float32",
        remat=False,
        attention="auto",
        attention_block=512,
        scan_layers=False,  # the miniature's 2-6 layers compile in seconds unrolled
        tiny=dict(
            architecture="Qwen3ForCausalLM",
            vocab_size=0,
            hidden_size=96,
            intermediate_size=288,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            # Input and output embeddings tied, as in Qwen3 0.6B-4B.
            tie_word_embeddings=True,
            # 4 x 48 > hidden_size on purpose: with head_dim 24 the copy circuit (question number
            # into the code, tool output into \boxed{}) formed ~100 steps later in the same drills.
            head_dim=48,
        ),
    )
    c.tokenizer_path = ""
    # `rollout_devices` k > 0: disaggregated, the first k devices sample and the rest train
    # (one process; the weights cross at every push); 0: the sampler on the training devices.
    c.mesh = dict(data=1, fsdp=-1, tensor=1, rollout_devices=0)
    c.multiprocess = False
    c.data = dict(
        train_files=(),
        val_files=(),
        max_prompt_tokens=256,
        shuffle_seed=args["seed"],
        # Without Qwen's ~150-token <tools> block the question sits ~40 tokens before the code
        # that copies its numbers; with it, the 2-layer model did not learn to copy in budget.
        tools_in_prompt=False,
    )
    c.rollout = dict(
        prompts_per_step=mode["prompts_per_step"],
        n=mode["n"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_turns=6,
        max_response_tokens=384,
        # Async rollouts (runtime/async_rollout.py): 0 = synchronous (sample, then update); S >= 1
        # = the sampler runs up to S rounds ahead, every trained token at most S versions old.
        max_staleness=1 if args["arm"] == "async" else 0,
        # At a weight push, in-flight trajectories continue on their K/V from the old weights
        # ("keep") or re-prefill under the new ones ("reprefill").
        push_kv="keep",
        max_calls_per_turn=4,
        extra_calls="fail",
        max_tool_attempts=8,
        max_tool_response_chars=0,
        retries_count_as_turns=True,
        dtype="",
        engine=dict(
            page_size=16,
            num_pages=2048,
            memory_fraction=0.9,  # used only with num_pages=0
            tensor_parallel=0,  # sampler TP width; 0 = automatic (1 on CPU)
            max_slots=64,
            prefill_chunk=128,
            max_seq_len=640,
            attention="auto",
        ),
    )
    c.saar = dict(
        enabled=args["arm"] in ("cleaner", "switch", "correction", "async"),
        # The train step (0-based) from which SAAR is applied; `switch` turns it on halfway
        # (the paper's post-introduction arm).
        start_step=c.total_steps // 2 if args["arm"] == "switch" else 0,
        gamma=0.5,
        max_retries=3,
        rollback_probability=1.0,
        similarity_on="code",
        similarity="tokens",
        disable_after_exhaustion=True,
        recompute_spliced_logprobs=True,
        infra_failures_roll_back=False,
        max_rounds_before_disable=0,
        exhaustion_note="ours",
    )
    c.sandbox = dict(
        num_workers=2,
        timeout_s=4.0,
        preimport=("math", "itertools", "collections", "numpy", "sympy"),
        truncation_marker="\n... [output truncated]",
        memory_limit_mb=1024,
        max_infra_retries=2,
    )
    c.reward = dict(
        math_mode="strict",
        overlong_buffer=64,
        overlong_factor=1.0,
        overlong_policy_tokens_only=False,
    )
    # DAPO dynamic sampling: drop groups whose rewards are all equal and sample more batches
    # until prompts_per_step informative groups are kept (at most max_sampling_rounds batches).
    c.advantage = dict(estimator="grpo", dynamic_sampling=False, max_sampling_rounds=3)
    corrected = args["arm"] in ("correction", "async")
    c.loss = dict(
        clip_eps_low=0.2,
        clip_eps_high=0.28,
        dual_clip_c=10.0,
        entropy_coef=0.0,
        **off_policy.preset_fields("tis" if corrected else "none"),
    )
    # With the 8-epoch SFT model (held-out acc ~0.66 at step 0), 1e-3 made both arms worse in
    # 6 steps (mean held-out acc 0.55 baseline / 0.48 cleaner, 3 seeds); 3e-4 kept it at
    # 0.63-0.69 (2 seeds each). (With the weaker 5-epoch model 5e-5 and 2e-4 changed nothing.)
    c.optim = dict(
        learning_rate=3e-4,
        warmup_steps=2,
        weight_decay=0.0,
        grad_clip=1.0,
        loss_scale="auto",
        mu_dtype="",
    )
    # fp32 sampler and trainer: their log-probs differ by ~5e-8 nats on average (7e-6 at most,
    # measured in the demo's GRPO runs), so recomputing them (1-8 s a step on 2 cores) buys
    # nothing here; groups with stale spliced log-probs are still scored by the trainer. The
    # correction arm recomputes: its weights need π_prox beside the sampler's μ.
    c.train = dict(
        mini_batch_prompts=mode["prompts_per_step"],
        row_len=640,
        rows_per_micro=8,
        old_logprobs="recompute" if corrected else "sampler",
        logprob_chunk=1024,
    )
    c.validation = dict(
        every=mode["val_every"],
        n=mode["val_n"],
        temperature=1.0,
        top_p=1.0,
        max_prompts=mode["study"]["n_test"],
        saar=False,
    )
    c.checkpoint = dict(every=8, keep=1, export_hf=False)
    c.prepare_synthetic = False
    c.sft = dict(
        train_files=(),
        epochs=mode["sft_epochs"],
        # 2 rows (~7 conversations) per step: twice the updates of 4 rows for the same compute;
        # the copy circuit is a matter of update count (4 rows: 0.17/0.47 held-out copy accuracy
        # for question number/tool output after 5 epochs, 2 rows: 0.33/0.89).
        rows_per_step=2,
        row_len=640,
        learning_rate=3e-3,
        warmup_steps=20,
        # Copying numbers forms late (a phase change after ~200 steps at the full rate); a
        # cosine decay had taken the rate away by then and the model copied nothing.
        lr_schedule="constant",
        checkpoint_every=100000,
    )
    if mode_name == "reference":
        # The reference's switches that apply to this task (README "Fidelity to the reference
        # implementation"); left ours: the sandbox's pre-imports and memory limit (the SFT
        # corpus was written against ours), validation without SAAR and its cadence (held-out
        # accuracy stays the same measurement in every mode).
        apply_reference_switches(c)
    if args["runlocal"]:
        c.prepare_synthetic = True
        c.rollout.update(prompts_per_step=2, n=2)
        c.train.mini_batch_prompts = 2
        c.validation.every = 0
        c.checkpoint.every = 1
    return c
