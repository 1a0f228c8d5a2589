"""Releasing what was trained.

* ``publish`` — model and dataset cards, ``sewer-hf push`` / ``push-dataset``, ``--push_to_hub``.
* ``space`` — building and pushing the Gradio Space; ``space_app`` — the Space itself.
"""
