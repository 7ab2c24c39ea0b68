"""Prompt templates for the evaluation/training readers, as plain strings named by config.

Templates are `str.format` strings (literal braces doubled). Configs refer to them by name
(``config.data.math_template = "math"``) and may pass a full template string instead; readers call
`render_prompt`. The answer-format instructions must agree with the rewards in `cleaner_jax.rl`:
math/GPQA answers are read from the last ``\\boxed{}``, code from the final ```python block.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

MATH_TEMPLATE = (
    "{problem}\n\n"
    "Solve the problem step by step. You can use the Python code interpreter tool to compute "
    "and check intermediate results. Put your final answer within \\boxed{{}}."
)

GPQA_TEMPLATE = (
    "{question}\n\n"
    "A) {A}\nB) {B}\nC) {C}\nD) {D}\n\n"
    "Think step by step; you can use the Python code interpreter tool. Answer with the letter of "
    "the correct option within \\boxed{{}}, for example \\boxed{{A}}."
)

CODE_STDIN_TEMPLATE = (
    "{question}\n\n"
    "Write a Python 3 program that reads the input from standard input and writes the answer to "
    "standard output. You can use the Python code interpreter tool to test your ideas. Give the "
    "complete solution in a final ```python code block at the end of your answer."
)

CODE_STARTER_TEMPLATE = (
    "{question}\n\n"
    "Complete the following starter code:\n```python\n{starter_code}\n```\n"
    "You can use the Python code interpreter tool to test your ideas. Give the complete solution, "
    "starting from the starter code, in a final ```python code block at the end of your answer."
)

TEMPLATES: dict[str, str] = {
    "math": MATH_TEMPLATE,
    "gpqa": GPQA_TEMPLATE,
    "code_stdin": CODE_STDIN_TEMPLATE,
    "code_starter": CODE_STARTER_TEMPLATE,
}


def get_template(name_or_template: str) -> str:
    """A template by name from `TEMPLATES`, or the argument itself when it is a template string."""
    if name_or_template in TEMPLATES:
        return TEMPLATES[name_or_template]
    if "{" not in name_or_template:
        raise KeyError(
            f"unknown prompt template {name_or_template!r}; use one of {sorted(TEMPLATES)} or "
            "pass a format string with {{fields}}"
        )
    return name_or_template


def render_prompt(name_or_template: str, fields: Mapping[str, str]) -> str:
    """Formats a template; raises KeyError naming the missing field and the template."""
    template = get_template(name_or_template)
    needed = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = sorted(needed - set(fields))
    if missing:
        raise KeyError(f"prompt template needs fields {missing}; got {sorted(fields)}")
    return template.format(**fields)
