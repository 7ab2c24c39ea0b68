"""The study's power, stated before the GRPO runs: the smallest first-attempt failure-rate effect
(treatment - reference: cleaner - baseline, or correction - cleaner in the correction mode) the
design can detect.

The design is paired by seed and step (both arms of a seed start from the same SFT checkpoint and
draw the same prompts) and its independent units are the seeds. With p the SFT model's
first-call failure rate (premise.json) and m rollouts per (arm, seed, step), one step's paired
difference has binomial sd sqrt(2 p (1 - p) / m); a seed's mean over `steps` steps has that over
sqrt(steps). That sd is an approximation in both directions: drift between seeds (training paths)
adds variance, while the arms of a seed sample with the same random numbers, so their rollouts
agree wherever their weights have not yet moved apart and their difference varies less than two
independent binomials (in seed 0 of the Dec 2026 full-mode run the arms' per-step train
accuracies were identical at all 6 steps). The minimum detectable effect (MDE) is the exact
paired-t one (`stats.minimum_detectable_effect`, noncentral t, df = seeds - 1), with the normal
approximation beside it, and the seeds needed for a few effect sizes.
"""

from __future__ import annotations

import math
from typing import Any

from cleaner_jax.study import stats

EFFECTS = (0.02, 0.05)  # effect sizes (absolute failure-rate differences) for required_pairs

ASSUMPTIONS = (
    "binomial per-step rates: each of the m rollouts of an (arm, seed, step) fails its first call "
    "independently with probability p, the SFT model's rate, in both arms",
    "a seed's paired difference is its mean over steps of independent per-step differences; "
    "drift between seeds (training paths) would add variance, and the arms' shared sampling "
    "seeds remove some (their rollouts agree until their weights move apart): an approximation "
    "either way",
    "seeds are the independent units: a two-sided paired t-test on per-seed mean differences",
)


def plan(
    p: float,
    m: int,
    steps: int,
    seeds: int,
    alpha: float = 0.05,
    power: float = 0.8,
    comparison: tuple[str, str] = ("cleaner", "baseline"),
) -> dict[str, Any]:
    """The design's MDE on the first-attempt failure rate; a JSON-ready dict.

    p: first-call failure rate before RL; m: rollouts per (arm, seed, step) (prompts x n);
    steps: GRPO steps per run; seeds: seeds per arm (the pairs); comparison: the (treatment,
    reference) arms whose paired difference is the effect. Returns the inputs, `sd_step`,
    `sd_seed`, `mde` (exact t; None with `mde_reason` when it cannot be computed: fewer than 2
    seeds, or p at 0 / 1 / not a number), `mde_normal`, `required_pairs` {effect: seeds} (exact
    t) and `assumptions`.
    """
    if m < 1 or steps < 1 or seeds < 0:
        raise ValueError(f"need m >= 1, steps >= 1 and seeds >= 0, got {m}, {steps}, {seeds}")
    if len(comparison) != 2 or comparison[0] == comparison[1]:
        raise ValueError(f"comparison is (treatment, reference), two arms, got {comparison}")
    if not (math.isnan(p) or 0.0 <= p <= 1.0):
        raise ValueError(f"p is a failure rate in [0, 1], got {p}")
    out: dict[str, Any] = {
        "effect": f"first-attempt tool failure rate, {comparison[0]} - {comparison[1]}",
        "units": "seeds (paired by seed and step; a seed's mean difference over its steps)",
        "p": p,
        "m": m,
        "steps": steps,
        "seeds": seeds,
        "alpha": alpha,
        "power": power,
        "sd_step": None,
        "sd_seed": None,
        "mde": None,
        "mde_normal": None,
        "mde_reason": None,
        "required_pairs": None,
        "assumptions": list(ASSUMPTIONS),
    }
    if math.isnan(p):
        out["mde_reason"] = "p is not a number: the premise check saw no first tool call"
        return out
    sd_step = math.sqrt(2 * p * (1 - p) / m)
    sd_seed = sd_step / math.sqrt(steps)
    out.update(sd_step=sd_step, sd_seed=sd_seed)
    if sd_seed == 0:
        out["mde_reason"] = f"p = {p}: a binomial rate of 0 or 1 has no variance to test against"
        return out
    design = dict(alpha=alpha, power=power)
    out["required_pairs"] = {
        str(e): stats.required_pairs(e, sd_seed, **design, method="t") for e in EFFECTS
    }
    if seeds >= 1:
        out["mde_normal"] = stats.minimum_detectable_effect(
            sd_seed, seeds, **design, method="normal"
        )
    if seeds < 2:
        out["mde_reason"] = f"{seeds} seed(s): a paired t-test over seeds needs at least 2"
        return out
    out["mde"] = stats.minimum_detectable_effect(sd_seed, seeds, **design, method="t")
    return out


def describe(design: dict[str, Any]) -> str:
    """One line for the log: the MDE, its inputs and the seeds a 0.05 / 0.02 effect needs."""
    size = (
        f"{design['seeds']} seeds x {design['steps']} steps x {design['m']} rollouts, "
        f"p = {design['p']:.3f}"
    )
    if design["mde"] is None:
        return f"design ({size}): no minimum detectable effect: {design['mde_reason']}"
    need = ", ".join(f"{e} needs {n} seeds" for e, n in sorted(design["required_pairs"].items()))
    pair = design.get("effect", "cleaner - baseline").split(", ")[-1]
    return (
        f"design ({size}): the smallest detectable change in the first-attempt failure rate "
        f"({pair}) is {design['mde']:.3f} (normal approx. {design['mde_normal']:.3f}; "
        f"alpha {design['alpha']}, power {design['power']}, binomial approximation); {need}"
    )
