"""QC pages (issue 19): the index and a subject's report, with what made them, rendered by a real browser where one is installed."""

import shutil
import subprocess

import numpy as np
import pytest

import atlasreg
from atlasreg.lut import LabelInfo
from atlasreg.qc import subject_figure, write_index, write_subject_report
from atlasreg.volume import Volume
from atlasreg.morphometry import label_volumes, write_volumes
from conftest import blob_labels, image_from_labels

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
NAMES = {1: LabelInfo("outer", (200, 30, 30)), 2: LabelInfo("middle", (30, 200, 30)), 3: LabelInfo("inner", (30, 30, 200)),
         4: LabelInfo("blob", (240, 240, 0))}
PROVENANCE = {"Version": atlasreg.__version__, "Command": "atlasreg bids study out participant -b affine",
              "BackendOptions": {"samples": 500}}


@pytest.fixture
def pages(tmp_path):
    """A subject's label map, volumes and figure, and the index and report pages that show them."""
    labels = Volume(blob_labels((24, 26, 22)), AFFINE, is_labels=True)
    image = Volume(image_from_labels(labels.array, 1), AFFINE, is_labels=False)
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (tmp_path / "sub-01" / "figures").mkdir()
    record = {"id": "sub-01", "status": "ok", "seconds": 1.5, "backend": "affine",
              "labels": str(atlasreg.save(labels, anat / "sub-01_desc-atlas_dseg.nii.gz")),
              "volumes": str(write_volumes(label_volumes(labels, NAMES), anat / "sub-01_desc-atlas_morph.tsv")),
              "figure": str(subject_figure(tmp_path / "sub-01" / "figures" / "sub-01_dseg.png", image, labels, "sub-01", NAMES))}
    report = write_subject_report(tmp_path / "sub-01.html", "sub-01", [record], NAMES, PROVENANCE)
    index = write_index(tmp_path / "index.html", [record, {"id": "sub-02", "status": "failed", "error": "bad <image>"}],
                        provenance=PROVENANCE, reports={"sub-01": "sub-01.html#sub-01"})
    return index, report, record


def test_pages_say_what_made_them_with_a_legend_in_one_unit(pages):
    index, report, record = pages
    text = report.read_text()
    for expected in (atlasreg.__version__, "atlasreg bids study out participant -b affine", "{&quot;samples&quot;: 500}",
                     "background:#c81e1e", "outer", "neurological convention", "volume (mm³)", "sub-01/figures/sub-01_dseg.png"):
        assert expected in text, expected
    volume = sum(r["volume_mm3"] for r in atlasreg.morphometry.read_volumes(record["volumes"]))
    listing = index.read_text()
    assert f"{volume:.0f} mm³ in 4 labels" in listing and " mL" not in listing and "bad &lt;image&gt;" in listing
    assert "href='sub-01.html#sub-01'" in listing and "atlasreg bids study out" in listing


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here")
@pytest.mark.parametrize("page", [0, 1])
def test_pages_render_in_headless_chromium_with_their_figures(pages, tmp_path, page):
    """The page renders, and its relative link to the QC figure resolves: the screenshot holds the labels' colours."""
    from matplotlib.image import imread

    path = pages[page]
    shot = tmp_path / f"shot{page}.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600",
                    f"--screenshot={shot}", path.resolve().as_uri()], check=True, timeout=120, capture_output=True)
    pixels = imread(shot)[..., :3]
    reddish = (pixels[..., 0] > 0.5) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.45)  # the 'outer' label over the image
    assert reddish.sum() > 2000, f"{path.name}: the figure did not render ({reddish.sum()} label pixels)"
