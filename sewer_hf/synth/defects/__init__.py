"""One painter per Sewer-ML class: its visual signature, of random size and place.

`NUMPY_PAINTERS` bend the pipe (run on the pixel array before the water is drawn);
`IMAGE_PAINTERS` draw on the PIL image, in this order (surfaces first, objects in front).
"""
from __future__ import annotations

from sewer_hf.synth.defects.connections import (
    paint_branch_pipe,
    paint_chiseled,
    paint_construction_change,
    paint_drilled,
    paint_reinstatement_cut,
    paint_transition_profile,
)
from sewer_hf.synth.defects.objects import (
    paint_intruding_seal,
    paint_obstacle,
    paint_roots,
    paint_settled_deposits,
)
from sewer_hf.synth.defects.shape import paint_deformation, paint_displaced_joint
from sewer_hf.synth.defects.surface import (
    paint_attached_deposits,
    paint_cracks,
    paint_infiltration,
    paint_production_error,
    paint_surface_damage,
)

NUMPY_PAINTERS = {"DE": paint_deformation, "FS": paint_displaced_joint}
IMAGE_PAINTERS = {
    "OB": paint_surface_damage, "BE": paint_attached_deposits, "RB": paint_cracks,
    "PF": paint_production_error,
    "GR": paint_branch_pipe, "PH": paint_chiseled, "PB": paint_drilled,
    "OS": paint_reinstatement_cut, "OP": paint_transition_profile, "OK": paint_construction_change,
    "IN": paint_infiltration, "AF": paint_settled_deposits, "FO": paint_obstacle,
    "IS": paint_intruding_seal, "RO": paint_roots,
}
