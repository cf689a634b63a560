"""atlasreg.flow: warping conventions, scaling and squaring, Jacobian determinants, resizing."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from atlasreg.flow import compose, gaussian_blur, identity, integrate, jacobian_determinant, resize, sample_at, upsample2, warp  # noqa: E402

SHAPE = (6, 7, 8)  # distinct sizes: a mix-up of the axes cannot pass


def _random_image(shape=SHAPE, batch=1, channels=1, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, *shape, generator=gen, dtype=dtype)


def _smooth_velocity(n: int, amplitude: float) -> torch.Tensor:
    """A smooth periodic velocity (1, 3, n, n, n) whose spatial derivatives are ~ amplitude * 2 pi / n."""
    x, y, z = identity((n, n, n), dtype=torch.float64)[0]
    k = 2 * math.pi / n
    v = torch.stack(
        [torch.sin(k * y + 0.3) * torch.cos(k * z), torch.sin(k * z + 1.0) * torch.cos(k * x), torch.sin(k * x + 2.0) * torch.cos(k * y)]
    )
    return amplitude * v[None]


def test_identity_holds_voxel_indices():
    grid = identity(SHAPE)
    assert grid.shape == (1, 3, *SHAPE)
    assert grid[0, 0, 4, 2, 1] == 4 and grid[0, 1, 4, 2, 1] == 2 and grid[0, 2, 4, 2, 1] == 1


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_zero_flow_is_exact(mode):
    src = _random_image(batch=2, channels=2)
    out = warp(src, torch.zeros(2, 3, *SHAPE, dtype=torch.float64), mode=mode)
    assert torch.allclose(out, src, atol=1e-12, rtol=0)
    src32 = src.float()
    out32 = warp(src32, torch.zeros(2, 3, *SHAPE), mode=mode)
    assert torch.allclose(out32, src32, atol=1e-6, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, -3])
def test_integer_flow_shifts_content_by_exactly_k_voxels(axis, k):
    src = _random_image()
    flow = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    flow[:, axis] = k
    out = warp(src, flow, padding="zeros")
    n = SHAPE[axis]
    # warped(p) = src(p + k e_axis)
    if k > 0:
        expected, got = src.narrow(axis + 2, k, n - k), out.narrow(axis + 2, 0, n - k)
        outside = out.narrow(axis + 2, n - k, k)
    else:
        expected, got = src.narrow(axis + 2, 0, n + k), out.narrow(axis + 2, -k, n + k)
        outside = out.narrow(axis + 2, 0, -k)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert outside.abs().max() < 1e-12  # padding="zeros"


def test_single_voxel_moves_along_the_right_axis():
    src = torch.zeros(1, 1, *SHAPE)
    src[0, 0, 3, 4, 5] = 1.0
    for axis in range(3):
        flow = torch.zeros(1, 3, *SHAPE)
        flow[:, axis] = 2.0
        out = warp(src, flow)
        expected = [3, 4, 5]
        expected[axis] -= 2  # the content at p + 2 e_axis lands at p
        peak = torch.nonzero(out[0, 0] == out[0, 0].max())[0].tolist()
        assert peak == expected
        assert out[0, 0, expected[0], expected[1], expected[2]].item() == pytest.approx(1.0, abs=1e-5)


def test_fractional_flow_interpolates_linearly():
    ramp = identity(SHAPE, dtype=torch.float64)[:, 1:2] * 3.0  # intensity = 3 * (index along axis 1)
    flow = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    flow[:, 1] = 0.25
    out = warp(ramp, flow)
    inner = (slice(None), slice(None), slice(None), slice(0, SHAPE[1] - 1))
    assert torch.allclose(out[inner], ramp[inner] + 0.75, atol=1e-10)


def test_sample_at_reads_voxel_coordinates_of_its_source():
    torch.manual_seed(0)
    src = torch.randn(1, 2, 5, 6, 7)
    points = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 6.0], [1.5, 2.0, 3.0]]).view(1, 3, 1, 1, 3)
    out = sample_at(src, points)[0, :, :, 0, 0]
    assert torch.allclose(out[:, 0], src[0, :, 1, 2, 3])
    assert torch.allclose(out[:, 1], src[0, :, 4, 0, 6])
    assert torch.allclose(out[:, 2], (src[0, :, 1, 2, 3] + src[0, :, 2, 2, 3]) / 2)
    flow = torch.randn(1, 3, 5, 6, 7)  # warp is sample_at at p + flow(p)
    assert torch.allclose(sample_at(src, (identity((5, 6, 7)) + flow).permute(0, 2, 3, 4, 1)), warp(src, flow), atol=1e-6)


def test_gaussian_blur_per_channel_rows_match_separate_calls():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 9, 10, 11)
    rows = [[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]
    both = gaussian_blur(x, rows)
    assert torch.allclose(both[:, :1], gaussian_blur(x[:, :1], [1.0, 0.0, 0.5]), atol=1e-6)
    assert torch.equal(both[:, 1:], x[:, 1:])  # sigma 0: untouched
    assert torch.allclose(gaussian_blur(torch.full_like(x, 3.0), 2.0), torch.full_like(x, 3.0))  # normalised kernels, edge values repeated
    with pytest.raises(ValueError, match="rows of 3"):
        gaussian_blur(x, [[1.0, 1.0, 1.0]])


def test_border_and_zero_padding():
    src = _random_image() + 1.0
    flow = torch.full((1, 3, *SHAPE), 100.0, dtype=torch.float64)
    assert torch.all(warp(src, flow, padding="zeros") == 0)
    assert torch.allclose(warp(src, flow, padding="border"), src[..., -1:, -1:, -1:].expand_as(src))


def test_labels_keep_their_dtype_and_values():
    labels = torch.randint(0, 5, (1, 1, *SHAPE))
    flow = torch.zeros(1, 3, *SHAPE)
    flow[:, 2] = 1.0
    out = warp(labels, flow, mode="nearest")
    assert out.dtype == labels.dtype
    assert torch.equal(out[..., :-1], labels[..., 1:])
    with pytest.raises(ValueError):
        warp(labels, flow, mode="bilinear")


def test_batch_broadcast_and_bad_input():
    src = _random_image(batch=1)
    flows = torch.zeros(3, 3, *SHAPE, dtype=torch.float64)
    flows[1, 0] = 1.0
    out = warp(src, flows)
    assert out.shape == (3, 1, *SHAPE)
    assert torch.allclose(out[0], src[0]) and not torch.allclose(out[1], src[0])
    with pytest.raises(ValueError):
        warp(src, torch.zeros(1, 2, *SHAPE, dtype=torch.float64))
    with pytest.raises(ValueError):
        warp(src, torch.zeros(1, 3, 5, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError):
        warp(src, flows[:1], mode="cubic")


def test_warp_is_differentiable_in_the_flow():
    src = identity(SHAPE)[:, :1] ** 2  # non-linear intensity along axis 0
    flow = torch.full((1, 3, *SHAPE), 0.3, requires_grad=True)
    warp(src, flow).sum().backward()
    assert flow.grad[:, 0].abs().sum() > 0
    assert flow.grad[:, 1:].abs().max() < 1e-3  # intensity does not vary along axes 1, 2


@pytest.mark.parametrize("threads", [2, 3])
def test_warp_split_across_threads_gives_the_values_and_gradients_of_one_call(monkeypatch, threads):
    import atlasreg.flow as flow_module

    monkeypatch.setattr(flow_module, "SLAB_POINTS", 1)  # split even this small grid
    previous = torch.get_num_threads()
    src = _random_image(channels=3, seed=1).requires_grad_(True)
    flow = (2.0 * _random_image(channels=3, seed=2) - 1.0).requires_grad_(True)
    results = []
    try:
        for n in (1, threads):  # one thread: the plain single call
            torch.set_num_threads(n)
            out = warp(src, flow)
            src.grad = flow.grad = None
            (out * out).sum().backward()
            results.append((out.detach(), src.grad.clone(), flow.grad.clone()))
    finally:
        torch.set_num_threads(previous)
    (one, src_one, flow_one), (split, src_split, flow_split) = results
    assert torch.equal(one, split)
    assert torch.equal(flow_one, flow_split)  # each point's gradient is computed alone
    assert torch.allclose(src_one, src_split, atol=1e-12)  # summed over the slabs in another order
    assert src_one.abs().sum() > 0


def test_integrate_constant_velocity_is_that_translation():
    velocity = torch.zeros(2, 3, *SHAPE, dtype=torch.float64)
    velocity[0, 0], velocity[0, 1], velocity[0, 2] = 1.5, -0.7, 2.0
    velocity[1, 2] = -1.0
    flow = integrate(velocity, steps=7)
    assert torch.allclose(flow, velocity, atol=1e-10)
    assert torch.equal(integrate(velocity, steps=0), velocity)
    with pytest.raises(ValueError):
        integrate(velocity, steps=-1)


def test_scaling_and_squaring_of_smooth_velocity_is_diffeomorphic():
    velocity = _smooth_velocity(24, amplitude=4.0)
    # used directly as a displacement this field folds ...
    assert jacobian_determinant(velocity).min() < 0
    # ... its exponential does not
    flow = integrate(velocity, steps=7)
    assert jacobian_determinant(flow).min() > 0.3
    # a large rough velocity is not guaranteed to stay invertible under the discrete scheme
    rough = torch.randn(1, 3, 12, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 5.0
    assert jacobian_determinant(integrate(rough, 7)).min() < 0


def test_integrating_on_a_coarser_grid_matches_the_full_grid():
    coarse_velocity = _smooth_velocity(12, amplitude=0.75)  # coarse-grid voxel units
    velocity = resize(coarse_velocity, (23, 23, 23), align_corners=True)  # as a decoder's upsampled output
    # exact: the coarse grid of 23 voxels is 12 voxels, so integration reruns on the velocity's own grid
    expected = resize(integrate(coarse_velocity, 7), (23, 23, 23), align_corners=True)
    assert torch.allclose(integrate(velocity, 7, downsize=2), expected, atol=1e-10)
    # and within 6 % of the largest displacement of integrating on the fine grid itself (a smooth field)
    fine = integrate(velocity, 7)
    inner = (slice(None), slice(None), *(slice(3, -3),) * 3)
    assert (integrate(velocity, 7, downsize=2) - fine)[inner].abs().max() < 0.06 * fine.abs().max()
    assert fine.abs().max() > 1.4
    assert torch.equal(integrate(velocity, 0, downsize=2), velocity)
    with pytest.raises(ValueError):
        integrate(velocity, 7, downsize=0)


def test_exp_of_minus_v_inverts_exp_of_v():
    velocity = _smooth_velocity(24, amplitude=2.0)
    roundtrip = compose(integrate(velocity), integrate(-velocity))
    assert roundtrip.abs()[..., 4:-4, 4:-4, 4:-4].max() < 0.1
    assert velocity.abs().max() > 1.0  # the test is not trivially small


def test_compose_matches_sequential_warps():
    src = identity(SHAPE, dtype=torch.float64)[:, :1] * 2.0 + identity(SHAPE, dtype=torch.float64)[:, 2:3]  # linear image
    a = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    b = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    a[:, 0], b[:, 2] = 1.0, -1.0
    inner = (slice(None), slice(None), slice(1, -2), slice(None), slice(1, -1))
    assert torch.allclose(warp(warp(src, a), b)[inner], warp(src, compose(a, b))[inner], atol=1e-10)


def test_jacobian_determinant_of_affine_flows_is_exact():
    grid = identity(SHAPE, dtype=torch.float64)[0]
    A = torch.tensor([[0.1, 0.2, 0.0], [-0.3, 0.05, 0.1], [0.0, 0.4, -0.2]], dtype=torch.float64)
    flow = torch.einsum("ij,jxyz->ixyz", A, grid)[None] + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    det = jacobian_determinant(flow)
    assert det.shape == (1, *SHAPE)
    assert torch.allclose(det, torch.linalg.det(torch.eye(3, dtype=torch.float64) + A).expand_as(det), atol=1e-12)
    # zero flow: det 1; a flow contracting axis 1 by half: det 0.5
    assert torch.allclose(jacobian_determinant(torch.zeros(2, 3, *SHAPE)), torch.ones(2, *SHAPE))
    squash = torch.zeros(1, 3, *SHAPE, dtype=torch.float64)
    squash[:, 1] = -0.5 * grid[1]
    assert torch.allclose(jacobian_determinant(squash), torch.full((1, *SHAPE), 0.5, dtype=torch.float64))


def test_resize_rescales_vectors_by_the_size_ratio():
    flow = torch.ones(1, 3, 8, 6, 10)
    out = resize(flow, (16, 6, 5))
    assert out.shape == (1, 3, 16, 6, 5)
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 2.0))
    assert torch.allclose(out[:, 1], torch.ones_like(out[:, 1]))
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 0.5))
    corners = resize(flow, (15, 6, 10), align_corners=True)
    assert torch.allclose(corners[:, 0], torch.full_like(corners[:, 0], 2.0))  # (15 - 1) / (8 - 1)
    assert resize(flow, (8, 6, 10)) is flow


def test_resize_of_a_linear_displacement_stays_consistent():
    # u(p) = 0.1 * p along axis 0 on 9 voxels (centres aligned) -> on 17 voxels still 0.1 * p' (in new voxels)
    grid = identity((9, 4, 4), dtype=torch.float64)
    flow = torch.zeros(1, 3, 9, 4, 4, dtype=torch.float64)
    flow[:, 0] = 0.1 * grid[:, 0]
    out = resize(flow, (17, 4, 4), align_corners=True)
    assert torch.allclose(out[:, 0], 0.1 * identity((17, 4, 4), dtype=torch.float64)[:, 0], atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_follows_input():
    velocity = _smooth_velocity(16, 2.0).float().cuda()
    src = torch.rand(1, 1, 16, 16, 16, device="cuda")
    flow = integrate(velocity)
    assert flow.device.type == "cuda" and warp(src, flow).device.type == "cuda"
    assert jacobian_determinant(flow).device.type == "cuda" and resize(flow, (8, 8, 8)).device.type == "cuda"
    assert torch.allclose(flow.cpu(), integrate(velocity.cpu()), atol=1e-4)


def test_upsample2_puts_coarse_voxel_i_on_fine_voxel_2i():
    """The inverse of a stride-2, padding-1 convolution's grid: a linear ramp stays a ramp of half the slope."""
    conv = torch.nn.Conv3d(1, 1, 3, stride=2, padding=1)
    fine_shape = (10, 7, 8)  # even and odd sizes
    coarse_shape = conv(torch.zeros(1, 1, *fine_shape)).shape[2:]
    coarse = identity(coarse_shape)  # (1, 3, ...): each component is its coarse index
    fine = upsample2(coarse, fine_shape)
    expected = identity(fine_shape) / 2  # fine voxel p sits at coarse coordinate p / 2 ...
    last = torch.tensor([n - 1 for n in coarse_shape], dtype=torch.float32).view(1, 3, 1, 1, 1)
    expected = torch.minimum(expected, last)  # ... up to the border, past the last coarse voxel
    assert torch.allclose(fine, expected, atol=1e-5)
