"""Experiments: the notebook pipeline, the papers' ablations, the report and the demo atlas."""
