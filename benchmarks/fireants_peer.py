"""FireANTs as a peer for benchmarks/engine.py; runs in FireANTs' own virtual environment (it pins
an older SimpleITK), so it imports nothing from atlasreg.

    /work/fireants-venv/bin/python benchmarks/fireants_peer.py JOBS.json THREADS

JOBS.json: a list of {moving, moving_seg, fixed, output} NIfTI paths. Each pair: centre-of-mass
moments, then FireANTs' LPBA40 example settings (benchmarks/../fireants/scripts/pairwise/test_lpba40.py:
affine 8-4-2-1 x 100-50-25-20, CC window 5, Adam lr 3e-4; greedy 4-2-1 x 200-100-50, CC window 7,
grad sigma 2, warp sigma 0.5, Adam lr 0.5). The moving labels are warped one-hot (linear, argmax)
onto the fixed grid and written to ``output``. Prints one JSON line: registration seconds per pair.
"""

import json
import sys
import time

import numpy as np
import SimpleITK as sitk
import torch
from fireants.io.image import BatchedImages, Image
from fireants.registration.affine import AffineRegistration
from fireants.registration.greedy import GreedyRegistration
from fireants.registration.moments import MomentsRegistration


def register(fixed: BatchedImages, moving: BatchedImages) -> GreedyRegistration:
    moments = MomentsRegistration(1, fixed, moving, moments=1)
    moments.optimize()
    affine = AffineRegistration([8, 4, 2, 1], [100, 50, 25, 20], fixed, moving, loss_type="cc", optimizer="Adam",
                                optimizer_lr=3e-4, cc_kernel_size=5, init_rigid=moments.get_affine_init())
    affine.optimize()
    greedy = GreedyRegistration(scales=[4, 2, 1], iterations=[200, 100, 50], fixed_images=fixed, moving_images=moving,
                                loss_type="cc", cc_kernel_size=7, deformation_type="compositive", smooth_grad_sigma=2,
                                smooth_warp_sigma=0.5, optimizer="adam", optimizer_lr=0.5,
                                init_affine=affine.get_affine_matrix().detach())
    greedy.optimize()
    return greedy


def main() -> None:
    jobs = json.loads(open(sys.argv[1]).read())
    torch.set_num_threads(int(sys.argv[2]))
    seconds = []
    for job in jobs:
        fixed = BatchedImages([Image.load_file(job["fixed"], device="cpu")])
        moving = BatchedImages([Image.load_file(job["moving"], device="cpu")])
        start = time.perf_counter()
        greedy = register(fixed, moving)
        seconds.append(time.perf_counter() - start)
        segmentation = sitk.GetArrayFromImage(sitk.ReadImage(job["moving_seg"]))
        labels = np.unique(segmentation)
        onehot = torch.from_numpy(np.stack([segmentation == label for label in labels]).astype(np.float32))[None]
        with torch.no_grad():
            warped = greedy.evaluate(fixed, onehot)[0].argmax(0).numpy()
        out = sitk.GetImageFromArray(labels[warped].astype(np.int32))
        out.CopyInformation(sitk.ReadImage(job["fixed"]))
        sitk.WriteImage(out, job["output"])
        print(f"FireANTs pair {len(seconds)}/{len(jobs)}: {seconds[-1]:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
