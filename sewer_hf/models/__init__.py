"""The networks and their losses, free of data and training-loop concerns.

* ``vit`` — ViT-T/16 and ViT-S/16 backbones (timm), the DINO head, student/teacher, the classifier.
* ``dino`` — the DINO loss with its centre and teacher-temperature schedule, the frozen last
  layer, and the collapse signals (RankMe, teacher entropy).
* ``losses`` — the class-weighted BCE and the prior-logit head bias.
* ``knn`` — weighted kNN evaluation of features (the DINO protocol).
* ``hf_export`` — a timm ViT to and from a native transformers ``ViTModel`` /
  ``ViTForImageClassification`` folder (what the Hub and ``pipeline`` load).
"""
