"""The two training loops and what they share.

* ``run`` — ``Run``: accelerator, config, checkpointed counters (``TrainState``), atomic
  checkpoints with resume, the metrics log, the progress bar, the push at the end.
* ``optim`` — every lr / weight-decay / momentum schedule, parameter groups, AdamW, the EMA
  updates.
* ``pretrain`` — DINO pretraining (with the hybrid DINO + BCE mode as a small add-on);
  ``dino_monitor`` — what it watches (RankMe, teacher entropy, kNN curve and report).
* ``finetune`` — fine-tuning, linear probe and supervised-from-scratch; ``evaluation`` — its
  per-epoch scoring, thresholds, export and ``eval.json``.
* ``recipe`` — the command-line front of ``recipes/*.py``.
"""
