"""Scoring frames and footage with an exported classifier.

* ``predict`` — ``SewerClassifier`` (PyTorch or ONNX Runtime, lanes on a CPU) and ``sewer-hf predict``.
* ``lanes`` — batches scored in parallel on a CPU, each on one thread (files, footage, auto's timing).
* ``onnx`` — the ONNX graph and its ONNX Runtime session; ``quantize`` — int8, the accuracy
  checks, ``sewer-hf export-onnx``; ``precision`` — which precision a machine may run and picks.
* ``attention`` — attention overlays; ``video`` — ``sewer-hf scan`` of inspection footage;
  ``report`` — its timeline, events and HTML report.
"""
