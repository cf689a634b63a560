"""The paper's protocol (Tables 1 and 2) on LPBA40 or Mindboggle-101, for a user who has them.
Not run here or in CI: neither dataset is on this machine.

    python benchmarks/paper_protocol.py --dataset lpba40 /data/LPBA40 [--atlas-id S01] \
        [--train-minutes 60] [--device auto] [--methods affine,simpleitk,...] [-o benchmarks/work/paper-lpba40]
    python benchmarks/paper_protocol.py --dataset mindboggle101 /data/mindboggle [--atlas-id NKI-RS-22-1] ...

1. Preprocess every subject as the paper does (RAS, 2 mm, 91×109×91, z-scored; labels nearest)
   into OUT/data, listed with their split in OUT/data/subjects.csv.
2. Train `contrastive` and `voxelmorph` with `atlasreg train` on the `train` split (the paper's:
   LPBA40 S01-S30, Mindboggle NKI-TRT-20 + NKI-RS-22), atlas = --atlas-id.
3. `atlasreg compare` every method from the atlas to each subject of the `test` split (LPBA40
   S31-S40, Mindboggle OASIS-TRT-20), scored with the dataset's protocol (7 LPBA40 regions or 5
   DKT lobes): OUT/report/summary.md is the counterpart of Table 1 or 2.
Each step prints the command it runs; `--dry-run` prints them only.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import click

import atlasreg
from atlasreg.datasets import MNI_2MM_SHAPE, load_image, load_labels, open_dataset, preprocess

DEFAULT_ATLAS = {"lpba40": "S01", "mindboggle101": None}
DEFAULT_METHODS = "affine,simpleitk,ants:preset=fast,ants:preset=quality,voxelmorph,contrastive"


def _run(command: list[str], dry_run: bool) -> None:
    print("$ " + shlex.join(command), file=sys.stderr)
    if not dry_run:
        subprocess.run(command, check=True)


@click.command()
@click.option("--dataset", nargs=2, required=True, metavar="KIND ROOT", help="lpba40 or mindboggle101, and its folder.")
@click.option("--atlas-id", help="Labelled subject used as the atlas  [default: S01 for LPBA40, the first training subject otherwise]")
@click.option("--train-minutes", default=60.0, show_default=True, help="Training time per learned model.")
@click.option("--device", default="auto", show_default=True)
@click.option("--methods", default=DEFAULT_METHODS, show_default=True)
@click.option("--dry-run", is_flag=True, help="Preprocess nothing, run nothing: print the commands.")
@click.option("-o", "--output", default=None, help="Work folder  [default: benchmarks/work/paper-KIND]")
def main(dataset: tuple[str, str], atlas_id: str | None, train_minutes: float, device: str, methods: str, dry_run: bool,
         output: str | None) -> None:
    kind, root = dataset
    data = open_dataset(kind, root)
    out = Path(output or Path(__file__).parent / "work" / f"paper-{kind}")
    folder = out / "data"
    train_ids, test_ids = data.splits["train"], data.splits["test"]
    atlas_id = atlas_id or DEFAULT_ATLAS.get(kind) or train_ids[0]
    split_of = {**{i: "train" for i in train_ids}, **{i: "test" for i in test_ids}}
    if not dry_run:
        folder.mkdir(parents=True, exist_ok=True)
        rows = ["image,labels,id,split"]
        for subject in data.subjects:
            image, labels = folder / f"{subject.id}_t1.nii.gz", folder / f"{subject.id}_seg.nii.gz"
            if not image.exists():
                atlasreg.save(preprocess(load_image(subject), 2.0, MNI_2MM_SHAPE), image)
                atlasreg.save(preprocess(load_labels(subject), 2.0, MNI_2MM_SHAPE), labels)
            rows.append(f"{image.name},{labels.name},{subject.id},{split_of.get(subject.id, '')}")
        (folder / "subjects.csv").write_text("\n".join(rows) + "\n")
    atlas = [str(folder / f"{atlas_id}_t1.nii.gz"), str(folder / f"{atlas_id}_seg.nii.gz")]
    models = {}
    for backend in ("contrastive", "voxelmorph"):
        if backend not in methods:
            continue
        models[backend] = str(out / f"{backend}.pt")
        images = [arg for i in train_ids if i != atlas_id for arg in ("--images", str(folder / f"{i}_t1.nii.gz"))]
        _run(["atlasreg", "train", "-b", backend, *images, "--atlas", *atlas, "--device", device,
              "--max-minutes", str(train_minutes), "--cache-dir", str(out / "affine-cache"), "-o", models[backend]], dry_run)
    model_args = [arg for name, path in models.items() for arg in ("--model", f"{name}={path}")]
    _run(["atlasreg", "compare", "-b", methods, "--dataset", "csv", str(folder / "subjects.csv"), "--split", "test",
          "--atlas-id", atlas_id, "--protocol", data.protocol, *model_args, "-o", str(out / "report")], dry_run)


if __name__ == "__main__":
    main()
