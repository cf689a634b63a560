#!/usr/bin/env bash
# Everything atlasreg measures on a lent GPU machine, in one call (see benchmarks/RESULTS.md):
# the ablation models trained on the GPU for the same budget, learned inference timed on the GPU,
# and GPU vs CPU output for the same model and pair. The machine has PyTorch but no registry:
# nibabel travels as a wheel in .whl/, the shared-map images and their cached affine matrices in
# benchmarks/work/ (SimpleITK is not needed while the cache holds every pair).
#   carry: .whl benchmarks/work/data benchmarks/work/affine-cache atlasreg.egg-info
#   run there:  OUT=... [BUDGET=35] bash benchmarks/device.sh
source benchmarks/device_env.sh
BUDGET=${BUDGET:-35}
python3 benchmarks/ablation.py --device cuda --budget-seconds "$BUDGET" --work "$OUT/ablation" \
    -o "$OUT/ablation.md" 2>&1 | tee "$OUT/ablation.log"
python3 benchmarks/inference.py --device cuda --repeats 5 --model contrastive="$OUT/ablation/all.pt" \
    --model voxelmorph="$OUT/ablation/voxelmorph.pt" -o "$OUT/inference-gpu.md" 2>&1 | tee "$OUT/inference.log"
# bring back the two full models (no optimiser state needed here) and every training log, in one archive
tar czf "$OUT/models-and-logs.tgz" -C "$OUT/ablation" all.pt voxelmorph.pt $(cd "$OUT/ablation" && ls *.log.jsonl)
rm -rf "$OUT/ablation"
ls -la "$OUT"
