"""The embedded miniature CLEANER study (DESIGN §4), above the runtime.

  demo:    run_demo(get_config, mode, workdir): assets, SFT, premise check, power design, the
           arms (baseline, cleaner, switch; or cleaner, correction) per seed, held-out eval,
           the report
  premise: E[A | recovered] of a policy before RL, with a group-bootstrap interval
  design:  the pre-run minimum detectable effect of the study
  report:  write_report (tables, claims with intervals against the baseline, or the first arm
           where there is none); report_evals: the held-out pass@k table and test-time SAAR
           claims; report_correction: the per-arm key table and the off-policy correction's
           clipped / rejected tokens and log ratios; report_diagnostics: credit on failed calls
           and wall times; plots: curves with seed bands, the arms' order and comparison
  stats:   effects with 95% intervals, p-values, MDE / required pairs, seed bands, describe()
The study's sizes and each arm's run are variants of `configs/demo.py`.
"""
