"""Regions of interest across a study: the per-run statistics format (:mod:`.tables`), collecting every run's
statistics into one tidy table (:mod:`.collect`), its figures (:mod:`.plots`) and the group report
(:mod:`.report`). ``qsmbids bids_dir output_dir group`` runs them (:mod:`qsmbids.cli.group`)."""
