"""The embedded miniature CLEANER study (DESIGN §4), above the runtime.

  demo:    run_demo(get_config, mode, workdir): assets, SFT, premise check, both GRPO arms per
           seed, the report
  premise: E[A | recovered] of a policy before RL, with a group-bootstrap interval
  report: write_report (tables, paired differences, credit diagnostics, plots)
  stats:  effects with 95% intervals, p-values, MDE / required pairs, seed bands, describe()
The study's sizes and each arm's run are variants of `configs/demo.py`.
"""
