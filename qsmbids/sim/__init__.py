"""qsmbids.sim — realistic numerical head, multi-echo GRE forward model and BIDS writer (the demo dataset).

Depends on :mod:`qsmbids.qsm` for the dipole physics; never on workflows or the CLI.
"""
