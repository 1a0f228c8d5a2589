"""Synthetic Sewer-ML: procedural sewer CCTV frames in the official file layout.

The real images are only available from the dataset authors, so the package can make its own:
perspective pipe with material, joints, camera light and water, and one visual signature per
defect class, with label sets drawn from the real label co-occurrence.

    generate_dataset(out_dir, n_train, n_val, seed=0, size=None, workers=1, progress=True,
                     defect_fraction=None)                      -> summary dict
    sample_labels(rng, defect_fraction=None)                   -> (multi_hot uint8[17], water %)
    render_frame(labels, water_level, size=(352, 288), rng)    -> PIL.Image
    contact_sheet(...)                                          -> PIL.Image grid with captions
"""
from sewer_hf.synth.command import add_synth_arguments, run_synth
from sewer_hf.synth.contact_sheet import contact_sheet as _contact_sheet
from sewer_hf.synth.dataset import frame_rng, generate_dataset, make_frame
from sewer_hf.synth.label_sampler import load_label_table, sample_labels
from sewer_hf.synth.render import render_frame

__all__ = ["add_synth_arguments", "run_synth", "contact_sheet", "frame_rng", "generate_dataset",
           "make_frame", "load_label_table", "sample_labels", "render_frame"]


def contact_sheet(*args, **kwargs):
    """See `sewer_hf.synth.contact_sheet.contact_sheet` (imported lazily: docs tool)."""

    return _contact_sheet(*args, **kwargs)
