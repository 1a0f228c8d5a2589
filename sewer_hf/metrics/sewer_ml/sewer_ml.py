"""Sewer-ML benchmark metrics as a Hugging Face ``evaluate`` module.

The computation is ``sewer_hf.metrics.compute_metrics`` (one implementation for the library,
the CLI and this module); this file only adapts it to ``evaluate``'s add/add_batch/compute.
"""
import datasets
import evaluate
import numpy as np

from sewer_hf.data.labels import NUM_CLASSES
from sewer_hf.metrics.core import DEFAULT_THRESHOLD, compute_metrics

_CITATION = """\
@InProceedings{Haurum_2021_CVPR,
    author    = {Haurum, Joakim Bruslund and Moeslund, Thomas B.},
    title     = {Sewer-ML: A Multi-Label Sewer Defect Classification Dataset and Benchmark},
    booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
    month     = {June},
    year      = {2021},
    pages     = {13456-13467}
}
"""

_DESCRIPTION = """\
The Sewer-ML multi-label benchmark metrics: F2_CIW (class-importance weighted F2 over the 17
defect classes) and F1_Normal (F1 of the implicit "no defect" class), plus mAP, macro/micro F1,
class-mean precision/recall/F1, exact match and per-class precision/recall/F1/F2/AP. A score at
or above the threshold is a positive prediction; numbers are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of 17 floats per image, the sigmoid scores in the benchmark's class order
        RB OB PF DE FS IS RO IN AF BE FO GR PH PB OS OP OK.
    references: list of 17 ints (0/1) per image, in the same order.
    threshold: float or list of 17 per-class floats (default 0.5, inclusive).
Returns:
    F2_CIW, F1_Normal, mAP, macro_F1, micro_F1, micro_precision, micro_recall, CP, CR, CF1,
    exact_match (floats), per_class (code -> precision, recall, F1, F2, AP, support),
    normal (precision, recall, F1, F2, support), threshold (code -> value), num_images.
Examples:
    >>> metric = evaluate.load("sewer_hf/metrics/sewer_ml")
    >>> result = metric.compute(predictions=[[0.9] + [0.1] * 16], references=[[1] + [0] * 16])
    >>> round(result["F2_CIW"], 4)
    0.1492
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SewerML(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                # float64: a float32 round trip could move a score across the threshold
                "predictions": datasets.List(datasets.Value("float64"), length=NUM_CLASSES),
                "references": datasets.List(datasets.Value("int8"), length=NUM_CLASSES),
            }),
            reference_urls=["https://vap.aau.dk/sewer-ml/"],
            codebase_urls=["https://bitbucket.org/aauvap/sewer-ml"],
            license="CC BY-NC-SA 4.0 (dataset); metric code Apache-2.0",
        )

    def _compute(self, predictions, references, threshold=DEFAULT_THRESHOLD):
        return compute_metrics(np.asarray(predictions, dtype=np.float64), np.asarray(references), threshold)
