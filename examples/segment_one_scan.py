"""Label a scan from one or more labelled atlases and score it, from Python.

    python examples/segment_one_scan.py TARGET.nii.gz ATLAS.nii.gz ATLAS_SEG.nii.gz [TRUTH_SEG.nii.gz]
"""

import sys

import atlasreg

target, atlas_image, atlas_labels = sys.argv[1:4]
labels = atlasreg.segment(target, [(atlas_image, atlas_labels)], backend="ants", backend_options={"preset": "fast"})
atlasreg.save(labels, "segmentation.nii.gz")
print("wrote segmentation.nii.gz")
if len(sys.argv) > 4:
    scores = atlasreg.evaluate(labels, sys.argv[4], protocol="aseg")
    print(f"mean Dice (aseg): {scores['mean_dice']:.3f}")
