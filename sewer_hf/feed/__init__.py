"""How a training batch is made, and how the run uses the machine's cores.

* ``spec`` — the paper's augmentations (App. A) as one spec: two frozen dataclasses, the named
  presets, and the constructor both implementations share.
* ``augment`` — that spec drawn per image with PIL/torchvision (``feed: per_image``), and the
  evaluation transform.
* ``batched`` — the same spec drawn batched, per sample, on any device (the default feed).
* ``device`` — decoding encoded images on the device (nvjpeg) and the feed thread.
* ``machine`` — loader workers and torch threads for these cores.
* ``pipeline`` — the one place the throughput settings are resolved (``resolve_feed``) and a
  training batch is made (``train_batches``).
"""
