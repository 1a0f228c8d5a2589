"""Drivers that chain the stages into one command, each run reused when it finished.

* ``quickstart`` — ``sewer-hf quickstart``: synthetic data, prepared shards, DINO, fine-tuning
  and from scratch, the exported classifier through ``pipeline``, a summary next to the
  constant predictor.
* ``label_efficiency`` — the paper's label-efficiency claim in miniature
  (``recipes/label_efficiency.py``).
"""
