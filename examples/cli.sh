#!/usr/bin/env bash
# The same from the shell. Replace the file names with yours.
set -euo pipefail
atlasreg backends                                   # what can run here
atlasreg options ants                               # a backend's options and defaults
atlasreg register moving.nii.gz fixed.nii.gz -b ants -O preset=fast -o warped.nii.gz --transform-out warp.nii.gz
atlasreg segment scan.nii.gz -a atlas1.nii.gz atlas1_seg.nii.gz -a atlas2.nii.gz atlas2_seg.nii.gz \
    -a atlas3.nii.gz atlas3_seg.nii.gz -b ants -O preset=fast -f majority -o scan_seg.nii.gz
atlasreg evaluate scan_seg.nii.gz scan_truth_seg.nii.gz --protocol aseg --json
