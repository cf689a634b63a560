"""The proxy benchmark: every backend on the shared-map subjects through `atlasreg compare`.

    python benchmarks/proxy.py [--contrastive benchmarks/work/gpu/all.pt] \
        [--voxelmorph benchmarks/work/gpu/voxelmorph.pt] [--targets 8,9,10] [--optimize-steps 20] \
        [--report benchmarks/work/proxy] [-o benchmarks/results/proxy.md]

Atlas subject01 -> held-out subjects (default 08-10), 2 mm synthesized images of
benchmarks/work/data (written by benchmarks/shared_maps.py when missing), aseg protocol. Methods:
affine, simpleitk, ANTs `fast` and `quality`, both learned models as trained (benchmarks/ablation.py
or `atlasreg train`) and with instance optimisation. The compare folder keeps finished pairs, so
a rerun resumes; delete it to measure again.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from ablation import DATA, data
from common import WORK, command_line, header



@click.command()
@click.option("--contrastive", default=str(WORK / "gpu" / "all.pt"), show_default=True)
@click.option("--voxelmorph", default=str(WORK / "gpu" / "voxelmorph.pt"), show_default=True)
@click.option("--targets", default="8,9,10", show_default=True)
@click.option("--optimize-steps", default=20, show_default=True)
@click.option("--report", default=str(WORK / "proxy"), show_default=True)
@click.option("-o", "--output", default=None)
def main(contrastive: str, voxelmorph: str, targets: str, optimize_steps: int, report: str, output: str | None) -> None:
    numbers = [int(n) for n in targets.split(",")]
    for n in [1, *numbers]:
        data(n, "t1")
    listing = DATA / "targets.csv"
    listing.write_text("image,labels\n" + "".join(f"subject{n:02d}_t1.nii.gz,subject{n:02d}_seg.nii.gz\n" for n in numbers))
    methods = ["affine", "simpleitk", "ants:preset=fast", "ants:preset=quality", "voxelmorph", "contrastive"]
    if optimize_steps:
        methods += [f"voxelmorph:optimize_steps={optimize_steps}", f"contrastive:optimize_steps={optimize_steps}"]
    command = ["atlasreg", "compare", "-b", ",".join(methods), "-a", str(data(1, "t1")), str(data(1, "seg")),
               "--dataset", "csv", str(listing), "--protocol", "aseg", "--model", f"voxelmorph={voxelmorph}",
               "--model", f"contrastive={contrastive}", "-o", report]
    subprocess.run(command, check=True)
    summary = (Path(report) / "summary.md").read_text()
    text = header(command_line()) + "\n- compare command: `" + " ".join(command) + "`\n\n" + summary
    print(text)
    if output:
        Path(output).write_text(text)
        for figure in [Path(report) / "dice_boxplot.png", *sorted((Path(report) / "figures").glob("*.png"))]:
            shutil.copy(figure, Path(output).with_name(f"proxy_{figure.name}"))


if __name__ == "__main__":
    main()
