import nibabel as nib
import numpy as np
import pytest

import atlasreg
from atlasreg import AtlasregError
from atlasreg.pipeline import as_image
from atlasreg.spatial import crop_or_pad, reorient, resample, resample_to_spacing
from atlasreg.volume import Volume

from conftest import blob_labels, image_from_labels


def test_image_round_trip_keeps_affine_and_values(tmp_path, affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    path = atlasreg.save(image, tmp_path / "img.nii.gz")
    back = atlasreg.load(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert nib.aff2axcodes(nib.load(path).affine) == nib.aff2axcodes(affine)


def test_labels_round_trip_as_integers(tmp_path, affine):
    labels = Volume(blob_labels(), affine, is_labels=True)
    path = atlasreg.save(labels, tmp_path / "seg.nii")
    assert np.issubdtype(nib.load(path).get_data_dtype(), np.integer)
    back = atlasreg.load(path, labels=True)
    assert back.array.dtype == np.int32
    np.testing.assert_array_equal(back.array, labels.array)


def test_trailing_singleton_axis_is_accepted(tmp_path, affine):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), affine), tmp_path / "a.nii.gz")
    assert atlasreg.load(tmp_path / "a.nii.gz").shape == (4, 5, 6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: (d / "x.txt").write_text("hello") and d / "x.txt", "NIfTI"),
        (lambda d: (d / "x.nii.gz").write_bytes(b"not a nifti") and d / "x.nii.gz", "not a readable NIfTI"),
        (lambda d: nib.save(nib.Nifti1Image(np.ones((4, 5), np.float32), np.eye(4)), d / "2d.nii") or d / "2d.nii", "3-D"),
        (lambda d: nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 2), np.float32), np.eye(4)), d / "4d.nii") or d / "4d.nii", "3-D"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(AtlasregError, match=message):
        atlasreg.load(make(tmp_path))


def test_nan_image_and_empty_labels_are_refused(tmp_path):
    data = np.ones((4, 5, 6), np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(AtlasregError, match="NaN"):
        atlasreg.load(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(AtlasregError, match="empty"):
        atlasreg.load(tmp_path / "empty.nii.gz", labels=True)


def test_failed_write_leaves_no_file(tmp_path, affine, monkeypatch):
    def boom(img, path):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        atlasreg.save(Volume(np.ones((3, 3, 3), np.float32), affine, is_labels=False), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_resample_to_same_grid_is_identity(affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    same = resample(image, image.shape, affine)
    np.testing.assert_allclose(same.array, image.array, atol=1e-4)


def test_resample_to_spacing_keeps_world_positions(affine):
    labels = Volume(blob_labels(), affine, is_labels=True)
    coarse = resample_to_spacing(labels, 4.0)
    assert np.allclose(coarse.spacing, 4.0)
    assert set(np.unique(coarse.array)) <= set(np.unique(labels.array))
    # the centre of the field of view stays put
    centre = lambda v: v.affine @ np.append((np.array(v.shape) - 1) / 2.0, 1)  # noqa: E731
    np.testing.assert_allclose(centre(coarse), centre(labels), atol=1e-6)


def test_reorient_to_ras_keeps_world_content(affine):
    labels = Volume(blob_labels(), np.diag([-2.0, 2.0, -2.0, 1.0]), is_labels=True)
    ras = reorient(labels, "RAS")
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    back = resample(ras, labels.shape, labels.affine)
    np.testing.assert_array_equal(back.array, labels.array)


def test_crop_or_pad_keeps_world_positions(affine):
    labels = Volume(blob_labels(), affine, is_labels=True)
    cropped = crop_or_pad(labels, (20, 50, 16))
    assert cropped.shape == (20, 50, 16)
    back = resample(cropped, labels.shape, labels.affine)
    inside = back.array > 0
    np.testing.assert_array_equal(back.array[inside], labels.array[inside])
    assert inside.sum() > 0.3 * (labels.array > 0).sum()


def test_saved_files_get_ordinary_permissions(tmp_path, affine):
    import os

    umask = os.umask(0o022)
    try:
        path = atlasreg.save(Volume(np.ones((3, 3, 3), np.float32), affine, is_labels=False), tmp_path / "out.nii.gz")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_an_integer_image_is_an_image_and_a_label_map_needs_integers(affine):
    t1 = Volume(image_from_labels(blob_labels()).astype(np.int16), affine, is_labels=False)  # an int16 T1
    assert not t1.is_labels and not t1.with_array(t1.array).is_labels
    assert atlasreg.segment(t1, [(t1, Volume(blob_labels(), affine, is_labels=True))], backend="affine").is_labels
    with pytest.raises(AtlasregError, match="integer array"):
        Volume(np.ones((3, 3, 3), np.float32), affine, is_labels=True)


def test_api_accepts_paths_volumes_nibabel_images_and_array_affine_pairs(tmp_path, pair):
    moving, moving_labels, fixed, _ = pair
    fixed_path = atlasreg.save(fixed, tmp_path / "fixed.nii.gz")
    as_nibabel = nib.Nifti1Image(moving.array, moving.affine)
    for like in (as_nibabel, (moving.array, moving.affine), atlasreg.save(moving, tmp_path / "moving.nii.gz")):
        volume = as_image(like)
        assert not volume.is_labels and np.array_equal(volume.array, moving.array)
        np.testing.assert_allclose(volume.affine, moving.affine, atol=1e-6)
    options = {"samples": 500}
    assert atlasreg.register(as_nibabel, fixed_path, backend="affine", options=options).shape == fixed.shape
    labels_pair = (moving_labels.array, moving_labels.affine)
    seg = atlasreg.segment(fixed_path, [(as_nibabel, labels_pair)], backend="affine", backend_options=options)
    assert seg.is_labels and seg.same_grid(fixed)
    seg_path = atlasreg.save(seg, tmp_path / "seg.nii.gz")
    by_volume = atlasreg.evaluate(seg, seg, protocol="labels")
    for pred, truth in ((seg_path, seg_path), (str(seg_path), seg.to_nibabel()), ((seg.array, seg.affine), seg)):
        assert atlasreg.evaluate(pred, truth, protocol="labels") == by_volume  # paths too (once an AttributeError)
    assert by_volume["mean_dice"] == 1.0 and set(by_volume["label_names"]) == set(by_volume["dice"])
    with pytest.raises(AtlasregError, match="missing.nii.gz: no such file"):
        atlasreg.evaluate(seg_path, tmp_path / "missing.nii.gz")
    transform = atlasreg.register(moving, fixed, backend="affine", options=options)  # a Transform takes them too
    moving_path, labels_path = tmp_path / "moving.nii.gz", atlasreg.save(moving_labels, tmp_path / "moving_seg.nii.gz")
    np.testing.assert_allclose(transform.warp(moving_path).array, transform.warp(moving).array, atol=1e-3)  # (float32 affine on disk)
    assert np.array_equal(transform.warp_labels(labels_path).array, transform.warp_labels(moving_labels).array)
    assert transform.on_grid(fixed.to_nibabel()).shape == fixed.shape and transform.inverse(moving_path).shape == moving.shape
    with pytest.raises(AtlasregError, match="expected a path, a Volume, a nibabel image"):
        atlasreg.register(42, fixed, backend="affine")
    with pytest.raises(AtlasregError, match="3-D"):
        atlasreg.register((np.zeros((4, 4)), np.eye(4)), fixed, backend="affine")


def test_to_nibabel_is_what_save_writes(tmp_path, affine):
    """Volume.to_nibabel(): the affine as qform and sform, labels int32 with the label intent, images float32."""
    labels = Volume(blob_labels(), affine, is_labels=True)
    img = labels.to_nibabel()
    assert isinstance(img, nib.Nifti1Image) and img.get_data_dtype() == np.int32 and img.header.get_intent()[0] == "label"
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(img.get_sform(), affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(img.dataobj), labels.array)
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False).to_nibabel()
    assert image.get_data_dtype() == np.float32 and image.header.get_intent()[0] == "none"
    saved = nib.load(atlasreg.save(labels, tmp_path / "seg.nii.gz"))
    assert saved.header.get_intent() == img.header.get_intent() and np.array_equal(saved.affine, img.affine)
    back = as_image(image)  # and it goes back in wherever a volume goes
    assert np.array_equal(back.array, image.get_fdata(dtype=np.float32))
