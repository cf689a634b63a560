#!/usr/bin/env bash
# The GPU path of issue 22 measured in one call on a lent GPU machine: `atlasreg segment` on a folder
# of 10 targets (shared subjects 01-10, 2 mm synthesized T1) with atlas 01, for svf, the learned
# backends with 20 instance-optimisation steps and the affine backend, each one process, model and
# atlas loaded once; per-target seconds from the study records; then one target's stages timed
# alone (benchmarks/gpu.py). Results land in $OUT (segment.md, stages.md, the logs).
#
# Prepare here, once:  python benchmarks/shared_maps.py benchmarks/work/data 1 2 3 4 5 6 7 8 9 10
#                      and a nibabel wheel in .whl/ (see /work/.library/device/README.md)
# Run there:           OUT=... bash benchmarks/gpu.sh
#   carry: .whl benchmarks/work/data atlasreg.egg-info
source benchmarks/device_env.sh
DATA=benchmarks/work/data
mkdir -p /tmp/gpu-targets && cp "$DATA"/subject*_t1.nii.gz /tmp/gpu-targets/ || exit 1
studies=()
run() {  # NAME, then the segment options
    local name=$1
    shift
    local start=$SECONDS
    python3 -m atlasreg segment /tmp/gpu-targets -a "$DATA/subject01_t1.nii.gz" "$DATA/subject01_seg.nii.gz" \
        -o "/tmp/gpu-out/$name" "$@" 2>&1 | tail -3 | tee "$OUT/$name.log"
    echo "$name: the whole command $((SECONDS - start)) s (start-up, 10 targets, files and QC figures)" | tee -a "$OUT/commands.txt"
    studies+=("/tmp/gpu-out/$name")
}
run svf -b svf -O device=cuda
run contrastive20 -b contrastive --optimize-steps 20 -O device=cuda
run voxelmorph20 -b voxelmorph --optimize-steps 20 -O device=cuda
run affine -b affine -O device=cuda
python3 benchmarks/gpu.py summary "${studies[@]}" -o "$OUT/segment.md"
python3 benchmarks/gpu.py stages --device cuda -o "$OUT/stages.md" 2>&1 | tail -40
ls -la "$OUT"
