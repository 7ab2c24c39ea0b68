"""The reference's strict math score (verl math_dapo, strict_box_verify) next to our default.

Expected values are derived by hand from the reference's rules (verl
`utils/reward_score/math_dapo.py`: `compute_score` keeps the last 300 characters,
`is_correct_strict_box` the last 100 of those, `last_boxed_only_string` finds the last literal
`\\boxed{` and its matching brace, and the content is compared with `==` to the ground truth,
with no normalisation on this path).
"""

import pytest

from cleaner_jax.rl import rewards_math as RM

_PAD = "I double-checked every step of the computation above, so I am confident in this. " * 2

# (name, response, ground truth, score under "strict" (ours: last box + math-verify),
#  score under "reference").
CASES = [
    ("plain", r"The answer is \boxed{42}.", "42", 1, 1),
    ("frac_vs_decimal", r"So \boxed{\frac12}.", "0.5", 1, -1),
    # The content " 42 " is not the string "42".
    ("spaces_in_box", r"So \boxed{ 42 }.", "42", 1, -1),
    ("power_vs_integer", r"So \boxed{10^3}.", "1000", 1, -1),
    # "(1, 2)" has a space the ground truth "(1,2)" lacks.
    ("tuple_spacing", r"So \boxed{(1, 2)}.", "(1,2)", 1, -1),
    ("decimal_zero", r"So \boxed{42.0}.", "42", 1, -1),
    ("dfrac_vs_frac", r"So \boxed{\dfrac{1}{2}}.", r"\frac{1}{2}", 1, -1),
    ("nested_braces_exact", r"So \boxed{\frac{1}{2}}.", r"\frac{1}{2}", 1, 1),
    # The reference's `=`-splitting normalisation is on its Minerva "Answer:" path only.
    ("equation_in_box", r"So \boxed{x = 5}.", "5", 1, -1),
    ("last_box_counts", r"First \boxed{41}, then on reflection \boxed{42}.", "42", 1, 1),
    ("last_box_wrong", r"First \boxed{42}, then on reflection \boxed{41}.", "42", -1, -1),
    # The reference searches for the literal "\boxed{", so "\boxed {" is no box at all.
    ("space_before_brace", r"So \boxed {42}.", "42", 1, -1),
    ("fbox", r"So \fbox{42}.", "42", 1, -1),
    ("no_box", "The answer is 42.", "42", -1, -1),
    ("unclosed_box", r"So \boxed{42", "42", -1, -1),
    # The box ends more than 100 characters before the end: outside the reference's window.
    ("box_then_long_text", r"So \boxed{42}. " + _PAD, "42", 1, -1),
    # Still inside the window when the text after the box is short.
    ("box_then_short_text", r"So \boxed{42}. " + _PAD[:60], "42", 1, 1),
]


def _score(verdict):
    return 1 if verdict.correct else -1


@pytest.mark.parametrize("name, response, gt, ours, reference", CASES, ids=[c[0] for c in CASES])
def test_reference_strict_score(name, response, gt, ours, reference):
    assert _score(RM.reference_strict_verdict(response, gt)) == reference, name
    assert _score(RM.verify_math(response, gt, "reference")) == reference, name


@pytest.mark.parametrize("name, response, gt, ours, reference", CASES, ids=[c[0] for c in CASES])
def test_our_default_score_on_the_same_cases(name, response, gt, ours, reference):
    assert _score(RM.verify_math(response, gt, "strict", timeout_s=5)) == ours, name


def test_cases_cover_the_issue_forms_and_differ_where_expected():
    assert len(CASES) >= 15
    differ = {c[0] for c in CASES if c[3] != c[4]}
    assert {"frac_vs_decimal", "spaces_in_box", "power_vs_integer", "tuple_spacing"} <= differ
    assert len(CASES[15][1]) - CASES[15][1].index("}") > 100  # box_then_long_text's premise
    assert len(CASES[16][1]) - CASES[16][1].index("}") < 100


def test_reference_pred_is_the_raw_box_content():
    verdict = RM.reference_strict_verdict(r"so \boxed{\{1,2\}}", r"\{1,2\}")
    assert verdict.correct and verdict.pred == r"\{1,2\}"
    assert RM.reference_strict_verdict("no box", "1").pred is None


def test_reference_box_cut_by_the_window_is_no_box():
    fits = r"\boxed{" + "4" * 92 + "}"  # exactly 100 characters
    assert len(fits) == 100
    assert RM.reference_strict_verdict("Answer: " + fits, "4" * 92).correct
    # One more digit: the backslash of "\boxed{" falls out of the last 100 characters.
    cut = r"\boxed{" + "4" * 93 + "}"
    assert RM.reference_strict_verdict(cut, "4" * 93) == RM.MathVerdict(False, None)


def test_reference_mode_through_the_verifier_pool():
    with RM.MathVerifierPool(num_workers=1, timeout_s=60) as pool:
        assert pool.verify(r"\boxed{42}", "42", "reference").correct
        assert not pool.verify(r"\boxed{ 42 }", "42", "reference").correct


def test_reference_rejects_non_strings_and_unknown_modes():
    with pytest.raises(TypeError, match="strings"):
        RM.reference_strict_verdict(r"\boxed{1}", 1)
    with pytest.raises(ValueError, match="unknown math reward mode"):
        RM.verify_math(r"\boxed{1}", "1", "exact")
