"""Register two images, keep the transform, and reuse it: warp a label map, check for folding.

    python examples/register_and_save_field.py MOVING.nii.gz FIXED.nii.gz MOVING_SEG.nii.gz
"""

import sys

import atlasreg
from atlasreg.metrics import folding_percent

moving, fixed, moving_labels = sys.argv[1:4]
transform = atlasreg.register(moving, fixed, backend="simpleitk")
transform.save("moving_to_fixed_warp.nii.gz")  # ITK convention: antsApplyTransforms reads it too
warped = transform.warp_labels(atlasreg.load(moving_labels, labels=True))
atlasreg.save(warped, "moving_seg_in_fixed.nii.gz")
print(f"folding: {folding_percent(transform.jacobian_determinant()):.3f}% of voxels with det J <= 0")
