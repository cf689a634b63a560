import numpy as np
import pytest
from scipy import ndimage

from atlasreg import AtlasregError, Transform
from atlasreg.volume import Volume

from conftest import blob_labels, image_from_labels


def smooth_field(shape, amplitude, seed=0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(*shape, 3)).astype(np.float32), (4, 4, 4, 0))
    return field / np.abs(field).max() * amplitude


def test_identity_field_is_exact(affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    labels = Volume(blob_labels(), affine, is_labels=True)
    identity = Transform.from_field(image, np.zeros((*image.shape, 3), np.float32))
    np.testing.assert_allclose(identity.warp(image).array, image.array, atol=1e-4)
    np.testing.assert_array_equal(identity.warp_labels(labels).array, labels.array)


def test_translation_moves_volume_by_exactly_that_many_mm():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    labels = Volume(blob_labels(), affine, is_labels=True)
    field = np.zeros((*labels.shape, 3), np.float32)
    field[..., 0] = 6.0  # pull from 6 mm further along x: content moves 3 voxels towards -i
    warped = Transform.from_field(labels, field).warp_labels(labels).array
    np.testing.assert_array_equal(warped[:-3], labels.array[3:])
    # the same shift as an affine matrix gives the same result
    matrix = np.eye(4)
    matrix[0, 3] = 6.0
    np.testing.assert_array_equal(Transform.from_matrix(labels, matrix).warp_labels(labels).array, warped)


def test_label_warping_keeps_the_label_set(affine):
    labels = Volume(blob_labels(), affine, is_labels=True)
    transform = Transform.from_field(labels, smooth_field(labels.shape, 5.0))
    for interp in ("nearest", "onehot"):
        warped = transform.warp_labels(labels, interp)
        assert warped.array.dtype == labels.array.dtype
        assert set(np.unique(warped.array)) <= set(np.unique(labels.array))
        assert set(np.unique(warped.array)) == {0, 1, 2, 3, 4}


def test_warp_refuses_the_wrong_kind(affine):
    labels = Volume(blob_labels(), affine, is_labels=True)
    with pytest.raises(AtlasregError):
        Transform.identity(labels).warp(labels)
    with pytest.raises(AtlasregError):
        Transform.identity(labels).warp_labels(Volume(labels.array.astype(np.float32), affine, is_labels=False))


def test_compose_matches_warping_twice(affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    inner = Transform.from_field(image, smooth_field(image.shape, 3.0, seed=1))
    outer = Transform.from_field(image, smooth_field(image.shape, 3.0, seed=2))
    once = outer.compose(inner)
    # pulling through inner then outer: points go inner first
    np.testing.assert_allclose(once.mapped_points(), outer.map_points(inner.mapped_points()), atol=1e-4)
    matrix = np.eye(4)
    matrix[:3, 3] = [1.0, -2.0, 0.5]
    affine_outer = Transform.from_matrix(image, matrix)
    composed = affine_outer.compose(inner)
    assert composed.field is inner.field or np.array_equal(composed.field, inner.field)
    np.testing.assert_allclose(composed.mapped_points(), inner.mapped_points() + matrix[:3, 3], atol=1e-4)


def test_jacobian_determinant(affine):
    grid = Volume(np.zeros((16, 16, 16), np.float32), affine, is_labels=False)
    scale = np.diag([1.1, 1.0, 0.9, 1.0])
    np.testing.assert_allclose(Transform.from_matrix(grid, scale).jacobian_determinant(), 0.99, rtol=1e-5)
    # a field u(x) = 0.1 * x (in world mm) has det (1.1)^3 everywhere
    field = (Transform.identity(grid).grid_points() * 0.1).astype(np.float32)
    det = Transform.from_field(grid, field).jacobian_determinant()
    np.testing.assert_allclose(det, 1.1**3, rtol=1e-4)
    # a field that folds space: u = -2 x along one world axis
    folding = np.zeros_like(field)
    folding[..., 0] = -2.0 * Transform.identity(grid).grid_points()[..., 0]
    assert (Transform.from_field(grid, folding).jacobian_determinant() < 0).all()


def test_save_load_round_trip(tmp_path, affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    matrix = np.eye(4)
    matrix[:3, 3] = [2.0, 0.0, -1.0]
    transform = Transform.from_field(image, smooth_field(image.shape, 4.0), matrix)
    path = transform.save(tmp_path / "warp.nii.gz")
    back = Transform.load(path)
    np.testing.assert_allclose(back.mapped_points(), transform.mapped_points(), atol=1e-3)
    np.testing.assert_allclose(back.warp(image).array, transform.warp(image).array, atol=1e-2)


def test_saved_field_is_read_by_ants_the_same_way(tmp_path, affine):
    ants = pytest.importorskip("ants")
    from atlasreg_plugins.ants.convert import to_ants

    moving = Volume(image_from_labels(blob_labels((28, 30, 26))), np.diag([-1.5, 1.8, 2.2, 1.0]), is_labels=False)
    fixed = Volume(np.zeros((26, 30, 24), np.float32), affine, is_labels=False)
    matrix = np.array([[1.02, 0.03, 0, 1.5], [0, 0.98, 0.02, -2], [0.01, 0, 1.0, 0.7], [0, 0, 0, 1]])
    transform = Transform.from_field(fixed, smooth_field(fixed.shape, 6.0), matrix)
    path = transform.save(tmp_path / "warp.nii.gz")
    theirs = ants.apply_transforms(to_ants(fixed), to_ants(moving), [str(path)]).numpy()
    np.testing.assert_allclose(theirs, transform.warp(moving).array, atol=1e-3)


def test_field_shape_must_match_grid(affine):
    grid = Volume(np.zeros((8, 8, 8), np.float32), affine, is_labels=False)
    with pytest.raises(AtlasregError):
        Transform.from_field(grid, np.zeros((8, 8, 7, 3), np.float32))


def small_affine() -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = [[1.05, 0.02, 0.0], [0.0, 0.97, 0.03], [0.01, 0.0, 1.02]]
    matrix[:3, 3] = [2.0, -1.0, 3.0]
    return matrix


def test_numerical_inverse_maps_back_within_the_tolerance(affine):
    fixed = Volume(np.zeros((30, 34, 28), np.float32), affine, is_labels=False)
    moving_affine = np.diag([2.2, 1.9, 2.1, 1.0])
    moving_affine[:3, 3] = affine[:3, 3] - 8.0
    moving = Volume(np.zeros((36, 36, 32), np.float32), moving_affine, is_labels=False)
    transform = Transform.from_field(fixed, smooth_field(fixed.shape, 5.0), small_affine())
    inverse = transform.inverse(moving)
    assert inverse.shape == moving.shape and inverse.inversion.startswith("numerical")
    # T(T^-1(y)) = y at every point of the moving grid, field extended by its edge values
    error = np.linalg.norm(transform.map_points(inverse.mapped_points()) - inverse.grid_points(), axis=-1)
    assert error.max() <= 0.011, error.max()


def test_affine_inverse_is_the_matrix_inverse(affine):
    grid = Volume(np.zeros((8, 8, 8), np.float32), affine, is_labels=False)
    inverse = Transform.from_matrix(grid, small_affine()).inverse(grid)
    assert inverse.field is None and inverse.inversion.startswith("exact")
    np.testing.assert_allclose(inverse.matrix @ small_affine(), np.eye(4), atol=1e-12)


def test_on_grid_evaluates_the_same_map_elsewhere(affine):
    image = Volume(image_from_labels(blob_labels()), affine, is_labels=False)
    transform = Transform.from_field(image, smooth_field(image.shape, 4.0), small_affine())
    other_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    other_affine[:3, 3] = affine[:3, 3] - [20.0, 0.0, 0.0]
    other = Volume(np.zeros((20, 22, 18), np.float32), other_affine, is_labels=False)
    moved = transform.on_grid(other)
    np.testing.assert_allclose(moved.mapped_points(), transform.map_points(moved.grid_points()), atol=1e-3)
    assert transform.on_grid(image) is transform


@pytest.mark.parametrize("suffix", [".mat", ".txt"])
def test_itk_affine_files_are_read_in_ras(tmp_path, affine, suffix):
    from scipy.io import savemat

    from atlasreg.itk_space import RAS_TO_LPS

    grid = Volume(np.zeros((8, 8, 8), np.float32), affine, is_labels=False)
    lps = RAS_TO_LPS @ small_affine() @ RAS_TO_LPS  # the file holds the LPS map, about a centre
    centre = np.array([4.0, -2.0, 7.0])
    parameters = np.concatenate([lps[:3, :3].ravel(), lps[:3, 3] - centre + lps[:3, :3] @ centre])
    path = tmp_path / f"affine{suffix}"
    if suffix == ".mat":  # as ANTs writes it: MATLAB v4
        savemat(path, {"AffineTransform_double_3_3": parameters[:, None], "fixed": centre[:, None]}, format="4")
    else:  # as ITK / SimpleITK write it
        path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
                        f"Parameters: {' '.join(map(str, parameters))}\nFixedParameters: {' '.join(map(str, centre))}\n")
    np.testing.assert_allclose(Transform.load(path, grid).matrix, small_affine(), atol=1e-9)
    with pytest.raises(AtlasregError, match="reference"):
        Transform.load(path)


def test_unreadable_transform_files_fail_in_one_line(tmp_path):
    grid = Volume(np.zeros((8, 8, 8), np.float32), np.eye(4), is_labels=False)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a matlab file at all")
    with pytest.raises(AtlasregError, match="junk.mat"):
        Transform.load(junk, grid)
    for name in ("junk.h5", "junk.tfm"):
        (tmp_path / name).write_bytes(b"neither HDF5 nor ITK text")
        with pytest.raises(AtlasregError, match="not a transform file ITK reads"):
            Transform.load(tmp_path / name, grid)
    (tmp_path / "warp.xfm").write_text("MNI Transform File\n")
    with pytest.raises(AtlasregError, match="expected a NIfTI"):
        Transform.load(tmp_path / "warp.xfm", grid)
    with pytest.raises(AtlasregError, match="reference image"):
        Transform.load(tmp_path / "junk.h5")


def test_any_itk_transform_file_is_read_through_simpleitk(tmp_path, affine):
    """A rigid (Euler) transform in ITK text and a composite (affine + displacement field) in HDF5, as
    ANTs and fMRIPrep write them: read as a field on the reference grid that maps each point where
    SimpleITK's own TransformPoint maps it (LPS there, RAS here)."""
    sitk = pytest.importorskip("SimpleITK")
    from atlasreg.itk_space import RAS_TO_LPS

    grid = Volume(np.zeros((10, 12, 9), np.float32), affine, is_labels=False)
    rigid = sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.1, -0.05, 0.2, (2.0, 1.0, -3.0))
    field = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1.5, (6, 7, 5, 3)), isVector=True)
    field.SetSpacing((6.0, 6.0, 6.0))
    field.SetOrigin((-60.0, -50.0, -40.0))
    composite = sitk.CompositeTransform([sitk.AffineTransform(rigid.GetMatrix(), rigid.GetTranslation(), rigid.GetCenter()),
                                         sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])
    for transform, path in ((rigid, tmp_path / "rigid.txt"), (composite, tmp_path / "composite.h5")):
        sitk.WriteTransform(transform, str(path))
        loaded = Transform.load(path, grid)
        points = loaded.grid_points().reshape(-1, 3)[::7].astype(float)
        lps = points * RAS_TO_LPS.diagonal()[:3]
        expected = np.array([transform.TransformPoint(tuple(p)) for p in lps]) * RAS_TO_LPS.diagonal()[:3]
        np.testing.assert_allclose(loaded.mapped_points().reshape(-1, 3)[::7], expected, atol=1e-3)
        assert np.abs(loaded.field).max() > 0.5


@pytest.mark.parametrize("kind, inverse", [("warp", False), ("affine", False), ("affine", True)])
def test_apply_agrees_with_ants_apply_transforms_on_labels(tmp_path, affine, kind, inverse):
    """``atlasreg.apply`` and antsApplyTransforms read the same files the same way: a label map
    pulled through a displacement field (onto a reference grid other than the field's) or an
    ANTs ``.mat`` affine, forward and inverted, agree on >= 99.9 % of the reference voxels."""
    ants = pytest.importorskip("ants")
    import atlasreg
    from atlasreg_plugins.ants.convert import from_ants, to_ants

    labels = Volume(blob_labels((34, 36, 32)), affine, is_labels=True)
    field_grid = Volume(np.zeros((36, 38, 34), np.float32), affine, is_labels=False)
    reference_affine = np.diag([1.7, 1.6, 1.8, 1.0])  # axis-aligned, about the field grid's centre, within it
    reference_affine[:3, 3] = affine[:3, :3] @ ((np.array(field_grid.shape) - 1) / 2) + affine[:3, 3] - 10.5 * np.array([1.7, 1.6, 1.8])
    reference = Volume(np.zeros((22, 22, 22), np.float32), reference_affine, is_labels=False)
    if kind == "warp":  # the reference grid lies inside the field's: ITK has no field beyond it
        path = Transform.from_field(field_grid, smooth_field(field_grid.shape, 6.0), small_affine()).save(tmp_path / "warp.nii.gz")
    else:
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ small_affine() @ np.diag([-1.0, -1.0, 1.0, 1.0])
        path = tmp_path / "affine.mat"
        ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3],
                                                        translation=lps[:3, 3]), str(path))
    theirs = ants.apply_transforms(to_ants(reference), to_ants(labels), [str(path)], interpolator="nearestNeighbor",
                                   whichtoinvert=[inverse] if kind == "affine" else None)
    ours = atlasreg.apply(path, labels, reference, labels=True, inverse=inverse)
    assert ours.same_grid(reference) and ours.is_labels and (ours.array > 0).mean() > 0.5
    agreement = (ours.array == from_ants(theirs, labels=True).array).mean()
    assert agreement >= 0.999, agreement


def test_warping_in_torch_gives_what_numpy_gives(affine):
    """The GPU path (torch, float32), run here on the CPU: the same images and labels as NumPy's."""
    moving_affine = affine.copy()
    moving_affine[:3, 3] += [3.0, -2.0, 1.5]
    image = Volume(image_from_labels(blob_labels()), moving_affine, is_labels=False)
    labels = Volume(blob_labels(), moving_affine, is_labels=True)
    grid = Volume(np.zeros((28, 30, 26), np.float32), affine, is_labels=False)
    numpy_way = Transform.from_field(grid, smooth_field(grid.shape, 5.0), small_affine())
    torch_way = Transform(numpy_way.shape, numpy_way.grid_affine, numpy_way.field, numpy_way.matrix, device="cpu")
    np.testing.assert_allclose(torch_way.warp(image).array, numpy_way.warp(image).array, atol=1e-2)
    large = labels.with_array(np.where(labels.array > 0, labels.array + 2**30, 0))  # beyond float32's exact integers
    for volume in (labels, large):
        for interp in ("nearest", "onehot"):
            ours, theirs = torch_way.warp_labels(volume, interp).array, numpy_way.warp_labels(volume, interp).array
            assert ours.dtype == theirs.dtype and (ours == theirs).mean() >= 0.999
            assert (ours > 0).mean() > 0.3 and set(np.unique(ours)) <= set(np.unique(volume.array))
    assert torch_way.inverse(grid).device == "cpu" and torch_way.on_grid(image).device == "cpu"
