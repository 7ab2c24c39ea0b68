"""Cold-start SFT corpus for the synthetic tool-use task: direct solves and error → fix → answer.

Every example is a chat in the real configs' format (`synthetic_task.problem_messages` + the
`code_interpreter` tool): an assistant turn with one sentence of reasoning and a tool call, the
tool's response, and the final answer ``The answer is \\boxed{N}.``. Five kinds (the last two
off by default):

  direct       reasoning + correct call → success → answer     (1 - error_rate - guess_rate)
  shallow_fix  reasoning + call with a typo-level bug → the sandbox's error → the SAME reasoning
               + the corrected call → success → answer       (error_rate * shallow_share)
  deep_fix     reasoning + a call with a wrong approach → error → the reasoning of a different
               approach + rewritten code → success → answer
                                      (error_rate * (1 - shallow_share) * (1 - give_up_share))
  give_up      a deep bug's call → error → "I will estimate the answer instead" + a boxed guess,
               no second call: an unrecovered failure       (error_rate * (1 - shallow_share)
                                                              * give_up_share)
  guess        one sentence + a boxed guess, no tool call                        (guess_rate)

A guess is a number of the answer range other than the answer (the model may still hit it).

Shallow bugs: ``name_typo`` (NameError: a misspelt identifier such as ``prnt`` or ``rr``),
``missing_paren`` (SyntaxError), ``missing_import`` (NameError: ``operator``, ``factorial`` or
``isqrt`` used without its import; the warm sandbox pre-imports math/itertools/collections/numpy/
sympy as modules, so dropping ``import math`` would not fail). Deep bugs (per template, in
`synthetic_task.DEEP_BUGS`): ``str_operands`` / ``str_start`` / ``sum_of_str`` / ``range_power``
/ ``float_factorial`` (TypeError: strings, ranges or floats where ints belong),
``zero_modulus`` / ``divisor_from_zero`` (ZeroDivisionError: a loop counter from 0 used as a
modulus or divisor). Every tool text is
`ExecResult.to_tool_response_text()` of really running the call in the `SandboxPool`; the corpus
builder checks that each buggy call failed with the intended exception and each other call
succeeded and printed the ground truth, and raises otherwise (a shallow bug whose code ran, a typo
on a branch the input never reaches, is first drawn again, up to 3 times).

Design goal — a fair miniature of the CLEANER comparison. After SFT on this corpus the tiny model
should (a) solve most problems with the tool (every example calls it and copies the printed
number into the box), (b) still make first-call errors at a noticeable rate, and (c) usually
recover from them, so that GRPO + SAAR has successful corrections to splice in:

* Errors are drawn by a seeded coin per example, independent of the question. Nothing in the
  prompt predicts a bug, so the model cannot learn *when* to err, only *how often*: it learns a
  first-call error probability near `error_rate`, concentrated on the few tokens where the buggy
  and the clean call differ (the misspelt name, the dropped parenthesis, the missing import line,
  the quotes, ``% i``). That probability is exactly what RL can move.
* A bug never comes with its own reasoning: a shallow bug corrupts the code of an approach whose
  reasoning is unchanged, and each deep bug is a broken version of a regular approach (same
  reasoning sentence as the clean version). The fix is conditioned on the error text the model
  sees (NameError → copy the call with the name corrected; TypeError → switch approach).
* Shallow fixes repeat the turn's reasoning and change 1-2 lexical tokens of the code (token
  similarity >= 0.8); deep fixes use another approach's reasoning and code (similarity <= 0.4).
  `saar.similarity` therefore classifies every fix in the corpus as its kind at gamma = 0.5
  (checked on construction). A shallow splice (old reasoning + new call) and a deep splice (new
  turn) both yield exactly a `direct` example's first turn: purified trajectories are
  in-distribution.
* Every error in the corpus is followed by a successful fix, so the SFT model learns to recover;
  its own recovery rate is below 100% (it must copy and edit code), and an unrecovered error
  costs the reward.
* Why SAAR should help: under outcome reward an error → fix → right answer trajectory earns the
  same +1 as a clean one, so GRPO alone reinforces the buggy first call too and lowers the error
  rate only through the failed recoveries. SAAR trains on the purified trajectory instead, whose
  first call is the corrected one, so each recovered error becomes a positive example of a clean
  first call. Both arms need groups with mixed rewards (GRPO advantages are zero when all of a
  group is right): keep the task below saturation with `TaskRanges` (more digits → more copy
  errors) and the SFT budget.

Knobs: `error_rate`, `shallow_share`, `shallow_bug_weights`, `give_up_share`, `guess_rate`, the
number of problems passed in, and `synthetic_task.TaskRanges` for the numbers.

Why `give_up` and `guess` exist (issue #17): SAAR can only beat GRPO if recovered trajectories
beat their group's mean, E[A | recovered] > 0 (`study/premise.py`). A tiny model's fix is a worse
copy than its first try, so recovered trajectories stay less accurate than clean ones; the premise
needs groupmates that are wrong because the tool was not used (`guess`) or a deep failure was not
recovered (`give_up`), both always wrong in rollouts. At 8-12 SFT epochs they cost the copy
circuit; with 20 epochs, give_up_share 0.5 and guess_rate 0.1 put E[A | recovered] at +0.228 (95%
CI 0.071 to 0.388): the demo's default (configs/demo.py). Every measured setting, with its
numbers, is in the regime table of `study/demo.py`'s docstring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from cleaner_jax.data import sft_plan
from cleaner_jax.data.sft_plan import (
    DEFAULT_SHALLOW_BUG_WEIGHTS,
    GIVE_UP_TEXT,
    GUESS_MAX,
    GUESS_REASONING,
    KINDS,
    SHALLOW_BUGS,
    ExamplePlan,
    plan_corpus,
)
from cleaner_jax.data.synthetic_task import TOOLS, Problem, problem_messages
from cleaner_jax.saar.similarity import token_similarity

# The planning half lives in `sft_plan`; its public names are this module's API too.
__all__ = [
    "DEFAULT_SHALLOW_BUG_WEIGHTS",
    "GIVE_UP_TEXT",
    "GUESS_MAX",
    "GUESS_REASONING",
    "KINDS",
    "SHALLOW_BUGS",
    "ExamplePlan",
    "SftExample",
    "ToolRunner",
    "make_sft_corpus",
    "plan_corpus",
    "tokenizer_training_texts",
    "write_sft_jsonl",
]

logger = logging.getLogger(__name__)

_GAMMA = 0.5  # SAAR's default shallow/deep threshold; the corpus's fixes must fall on its sides
_REPLANS = 3  # redraws of a shallow bug whose code ran without error


class ToolRunner(Protocol):
    """What the corpus needs from `cleaner_jax.agent.sandbox.SandboxPool`."""

    async def run(self, code: str, stdin: str | None = None, timeout_s: float | None = None): ...


@dataclasses.dataclass(frozen=True)
class SftExample:
    """One SFT conversation and how it was made.

    Attributes:
      problem_id: the `Problem.id`.
      kind: "direct", "shallow_fix" or "deep_fix".
      messages: the whole chat (prompt, assistant turns with `tool_calls`, tool turns, answer);
        render with `tools=TOOLS`.
      approach: approach of the first call (e.g. "pow", "loop").
      bug: None, a `SHALLOW_BUGS` name, or a deep bug name ("zero_modulus", ...).
      error_type: the exception the first call raised in the sandbox (None for direct).
      fix_approach: approach of the corrected call (None for direct).
      similarity: `saar.similarity.token_similarity(first code, fixed code)` (None for direct).
    """

    problem_id: str
    kind: str
    messages: list[dict[str, Any]]
    approach: str
    bug: str | None = None
    error_type: str | None = None
    fix_approach: str | None = None
    similarity: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": f"{self.problem_id}-{self.kind}",
            "messages": self.messages,
            "tools": list(TOOLS),
            "meta": {
                "problem_id": self.problem_id,
                "kind": self.kind,
                "approach": self.approach,
                "bug": self.bug,
                "error_type": self.error_type,
                "fix_approach": self.fix_approach,
                "similarity": self.similarity,
            },
        }


def _assistant_call(reasoning: str, code: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": reasoning,
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": {"code": code}},
            }
        ],
    }


def _check_run(plan: ExamplePlan, code: str, result: Any, expect_error: str | None) -> None:
    where = f"problem {plan.problem.id} ({plan.kind}, bug {plan.bug}) code {code!r}"
    if result.infra_failure:
        raise RuntimeError(f"sandbox infrastructure failure on {where}: {result.stderr!r}")
    if expect_error is not None:
        if result.ok or result.error_type != expect_error:
            raise RuntimeError(
                f"{where} was meant to fail with {expect_error} but gave ok={result.ok} "
                f"error_type={result.error_type} stderr={result.stderr!r}"
            )
    elif not result.ok or result.stdout.strip() != plan.problem.answer:
        raise RuntimeError(
            f"{where} was meant to print {plan.problem.answer} but gave ok={result.ok} "
            f"stdout={result.stdout!r} stderr={result.stderr!r}; if it timed out, narrow "
            "TaskRanges or raise the sandbox timeout"
        )


def _assemble(
    plan: ExamplePlan, results: Mapping[str, Any], system_prompt: str | None
) -> SftExample:
    messages = problem_messages(plan.problem, system_prompt=system_prompt)
    if plan.kind == "guess":
        text = f"{plan.first_reasoning} The answer is \\boxed{{{plan.guess}}}."
        messages.append({"role": "assistant", "content": text})
        return SftExample(plan.problem.id, plan.kind, messages, plan.approach)
    first = results[plan.first_code]
    _check_run(plan, plan.first_code, first, plan.expected_error)
    messages.append(_assistant_call(plan.first_reasoning, plan.first_code))
    messages.append({"role": "tool", "content": first.to_tool_response_text()})
    similarity = None
    if plan.kind == "give_up":
        text = f"{GIVE_UP_TEXT} The answer is \\boxed{{{plan.guess}}}."
        messages.append({"role": "assistant", "content": text})
        return SftExample(
            plan.problem.id,
            plan.kind,
            messages,
            plan.approach,
            bug=plan.bug,
            error_type=plan.expected_error,
        )
    if plan.kind != "direct":
        fixed = results[plan.fix_code]
        _check_run(plan, plan.fix_code, fixed, None)
        similarity = token_similarity(plan.first_code, plan.fix_code)
        if (similarity >= _GAMMA) != (plan.kind == "shallow_fix"):
            raise RuntimeError(
                f"{plan.kind} example for {plan.problem.id} has similarity {similarity:.2f} on "
                f"the wrong side of gamma={_GAMMA}: {plan.first_code!r} -> {plan.fix_code!r}"
            )
        messages.append(_assistant_call(plan.fix_reasoning, plan.fix_code))
        messages.append({"role": "tool", "content": fixed.to_tool_response_text()})
    messages.append(
        {"role": "assistant", "content": f"The answer is \\boxed{{{plan.problem.answer}}}."}
    )
    return SftExample(
        problem_id=plan.problem.id,
        kind=plan.kind,
        messages=messages,
        approach=plan.approach,
        bug=plan.bug,
        error_type=plan.expected_error,
        fix_approach=plan.fix_approach,
        similarity=similarity,
    )


async def make_sft_corpus_async(
    problems: Sequence[Problem],
    pool: ToolRunner,
    *,
    error_rate: float = 1 / 3,
    shallow_share: float = 0.5,
    shallow_bug_weights: Mapping[str, float] = DEFAULT_SHALLOW_BUG_WEIGHTS,
    seed: int = 0,
    system_prompt: str | None = None,
    give_up_share: float = 0.0,
    guess_rate: float = 0.0,
) -> list[SftExample]:
    """Builds one SFT example per problem, running every call in `pool` (concurrently).

    Args:
      problems: the problems (use the train split); one example each, in order.
      pool: a started `SandboxPool` (anything with its async `run(code)`).
      error_rate: share of examples whose first call fails (rounded to a count).
      shallow_share: share of the failing examples whose fix is shallow (rounded to a count).
      shallow_bug_weights: relative frequency of the shallow bugs; a template with no import
        approach spreads missing_import's weight over the others.
      seed: decides which examples fail, their approaches and bugs.
      system_prompt: optional system text, as in `synthetic_task.problem_messages`.
      give_up_share: share of the deep failures (rounded to a count) that are not fixed: after
        the error the assistant gives up and boxes a guess ("give_up" examples). Default 0.
      guess_rate: share of all examples (rounded to a count) answered without the tool, with a
        guess ("guess" examples; on top of `error_rate`'s share). Default 0.

    Raises:
      RuntimeError: a call did not behave as planned in the sandbox (a buggy call that ran, a
        correct call that failed or printed something else, an infrastructure failure), or a fix
        would be classified on the wrong side of SAAR's gamma.
    """
    plans = plan_corpus(
        problems,
        error_rate=error_rate,
        shallow_share=shallow_share,
        shallow_bug_weights=shallow_bug_weights,
        seed=seed,
        give_up_share=give_up_share,
        guess_rate=guess_rate,
    )
    results: dict[str, Any] = {}
    for attempt in range(_REPLANS + 1):
        codes = sorted(
            {c for plan in plans for c in (plan.first_code, plan.fix_code) if c} - set(results)
        )
        outputs = await asyncio.gather(*(pool.run(code) for code in codes))
        results.update(zip(codes, outputs, strict=True))
        # A typo on a line the input never reaches (collatz's odd branch for n = 16) runs fine:
        # such a shallow bug is drawn again; every other plan (and corpus) stays as it was.
        unreached = [
            i
            for i, plan in enumerate(plans)
            if plan.kind == "shallow_fix" and results[plan.first_code].ok
        ]
        if not unreached or attempt == _REPLANS:
            break
        for i in unreached:
            rng = random.Random(f"sft_corpus/{seed}/{plans[i].problem.id}/replan{attempt}")
            plans[i] = sft_plan.plan_one(plans[i].problem, "shallow_fix", shallow_bug_weights, rng)
    examples = [_assemble(plan, results, system_prompt) for plan in plans]
    counts = {k: sum(e.kind == k for e in examples) for k in KINDS}
    logger.info("SFT corpus: %d examples %s, %d sandbox runs", len(examples), counts, len(codes))
    return examples


def make_sft_corpus(
    problems: Sequence[Problem],
    pool: ToolRunner,
    *,
    error_rate: float = 1 / 3,
    shallow_share: float = 0.5,
    shallow_bug_weights: Mapping[str, float] = DEFAULT_SHALLOW_BUG_WEIGHTS,
    seed: int = 0,
    system_prompt: str | None = None,
    give_up_share: float = 0.0,
    guess_rate: float = 0.0,
) -> list[SftExample]:
    """`make_sft_corpus_async` for synchronous callers (not from inside a running event loop)."""
    return asyncio.run(
        make_sft_corpus_async(
            problems,
            pool,
            error_rate=error_rate,
            shallow_share=shallow_share,
            shallow_bug_weights=shallow_bug_weights,
            seed=seed,
            system_prompt=system_prompt,
            give_up_share=give_up_share,
            guess_rate=guess_rate,
        )
    )


def write_sft_jsonl(examples: Sequence[SftExample], path: str | os.PathLike[str]) -> Path:
    """Writes one `SftExample.to_json()` per line ({id, messages, tools, meta}); returns it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
    return out


def tokenizer_training_texts(
    examples: Sequence[SftExample], problems: Sequence[Problem] = ()
) -> list[str]:
    """The rendered chat text (the demo's chat template, tools included) of every SFT example and
    of the prompt of every extra problem (e.g. the RL and test splits): what the tiny tokenizer
    should be trained on so the format's frequent strings get merges.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    from cleaner_jax.agent.tokenizer import chat_template

    template = chat_template()
    conversations = [e.messages for e in examples]
    texts = [
        render_jinja_template([c], tools=list(TOOLS), chat_template=template)[0][0]
        for c in conversations
    ]
    texts += [
        render_jinja_template(
            [problem_messages(p)],
            tools=list(TOOLS),
            chat_template=template,
            add_generation_prompt=True,
        )[0][0]
        for p in problems
    ]
    return texts
