"""The VoxelMorph baseline network and its loss terms."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from atlasreg.flow import identity, jacobian_determinant, warp  # noqa: E402
from atlasreg_plugins.voxelmorph import losses  # noqa: E402
from atlasreg_plugins.voxelmorph.network import VoxelMorphNet  # noqa: E402

SMALL = dict(enc=(4, 8, 8, 8), dec=(8, 8, 8, 8, 8, 4, 4))
SHAPE = (19, 22, 17)


def _pair(batch=2, shape=SHAPE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *shape, generator=gen), torch.randn(batch, 1, *shape, generator=gen)


@pytest.mark.parametrize("full_size", [False, True])
def test_output_shape_and_near_identity_start(full_size):
    torch.manual_seed(0)
    net = VoxelMorphNet(**SMALL, full_size=full_size)
    out = net(*_pair())
    assert set(out) == {"velocity", "flow"} and out["velocity"].shape == (2, 3, *SHAPE)
    assert out["velocity"].abs().max() < 1e-2  # flow head ~ N(0, 1e-5)
    flow = out["flow"]
    assert torch.equal(flow, net.flow(out["velocity"]))
    assert flow.shape == (2, 3, *SHAPE) and jacobian_determinant(flow).min() > 0.5


def test_half_resolution_velocity_is_upsampled_onto_the_stride_2_grid():
    """Fine voxel 2 i holds coarse voxel i (where the stride-2 convolutions computed it), doubled."""
    torch.manual_seed(0)
    net = VoxelMorphNet(**SMALL)
    captured = {}
    net.flow_head.register_forward_hook(lambda module, args, output: captured.setdefault("coarse", output))
    out = net(*_pair(batch=1, shape=(16, 18, 20)))
    assert torch.allclose(out["velocity"][..., ::2, ::2, ::2], 2 * captured["coarse"], atol=1e-9)


def test_full_size_adds_the_input_skip():
    small = VoxelMorphNet(**SMALL)
    full = VoxelMorphNet(**SMALL, full_size=True)
    # the first full-resolution conv sees the 2 input channels as well: 2 * 4 * 27 more weights
    assert sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in small.parameters()) == 2 * 4 * 27
    with pytest.raises(ValueError):
        VoxelMorphNet(enc=(4, 8), dec=(8, 8, 8), full_size=True)


def test_int_steps_zero_returns_the_velocity():
    net = VoxelMorphNet(**SMALL, int_steps=0)
    v = torch.randn(1, 3, 8, 8, 8)
    assert torch.equal(net.flow(v), v)


def test_losses_reach_every_layer():
    torch.manual_seed(0)
    net = VoxelMorphNet(**SMALL)
    moving, fixed = _pair()
    flow = net.flow(net(moving, fixed)["velocity"])
    loss = losses.local_ncc(fixed, warp(moving, flow), window=5) + losses.grad_smoothness(flow)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_a_few_steps_move_a_blob():
    torch.manual_seed(0)
    shape = (16, 16, 16)
    grid = identity(shape)[0]
    blob = lambda c: torch.exp(-(((grid - torch.tensor(c).view(3, 1, 1, 1)) ** 2).sum(0)) / 18.0)[None, None]  # noqa: E731
    moving, fixed = blob([8.0, 7.0, 8.0]), blob([8.0, 9.0, 8.0])
    net = VoxelMorphNet(**SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = losses.mse(fixed, moving).item()
    for _ in range(20):
        opt.zero_grad()
        flow = net.flow(net(moving, fixed)["velocity"])
        (losses.mse(fixed, warp(moving, flow)) + 0.01 * losses.grad_smoothness(flow)).backward()
        opt.step()
    with torch.no_grad():
        flow = net.flow(net(moving, fixed)["velocity"])
    assert losses.mse(fixed, warp(moving, flow)).item() < 0.6 * first
    assert flow[0, 1, 8, 9, 8] < -0.3  # content comes from axis-1 index 7 < 9


def test_mse_by_hand():
    fixed = torch.zeros(1, 1, 2, 3, 4)
    warped = torch.zeros_like(fixed)
    warped[..., 0] = 3.0  # 6 of 24 voxels off by 3
    assert losses.mse(fixed, warped).item() == pytest.approx(6 * 9 / 24)


def _ncc_brute_force(a: np.ndarray, b: np.ndarray, window: int) -> float:
    r = window // 2
    pa, pb = np.pad(a, r), np.pad(b, r)  # zero padding
    values = []
    for idx in np.ndindex(a.shape):
        wa = pa[idx[0] : idx[0] + window, idx[1] : idx[1] + window, idx[2] : idx[2] + window]
        wb = pb[idx[0] : idx[0] + window, idx[1] : idx[1] + window, idx[2] : idx[2] + window]
        cross = (wa * wb).mean() - wa.mean() * wb.mean()  # window means (zero padding counts)
        var_a = (wa * wa).mean() - wa.mean() ** 2
        var_b = (wb * wb).mean() - wb.mean() ** 2
        values.append(cross**2 / (var_a * var_b + 1e-5))
    return -float(np.mean(values))


def test_local_ncc_against_brute_force():
    gen = np.random.default_rng(0)
    a, b = gen.normal(size=(5, 6, 4)), gen.normal(size=(5, 6, 4))
    b = 0.5 * a + b  # partly correlated
    got = losses.local_ncc(torch.tensor(a)[None, None], torch.tensor(b)[None, None], window=3).item()
    assert got == pytest.approx(_ncc_brute_force(a, b, 3), rel=1e-8)


def test_local_ncc_is_minus_one_for_linear_intensity_maps():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 9, 10, 11, generator=gen, dtype=torch.float64)
    assert losses.local_ncc(image, 3.0 * image, window=5).item() == pytest.approx(-1.0, abs=1e-4)  # zero padding: no offset
    other = torch.randn(2, 1, 9, 10, 11, generator=gen, dtype=torch.float64)
    assert losses.local_ncc(image, other, window=5).item() > -0.1  # independent noise: cc ~ 1 / 125
    with pytest.raises(ValueError):
        losses.local_ncc(image, other, window=4)


def test_grad_smoothness_by_hand():
    shape = (4, 5, 6)
    flow = torch.zeros(1, 3, *shape)
    a = 0.5
    flow[0, 0] = a * identity(shape)[0, 0]  # component 0 grows by a along axis 0
    # forward differences: (a, 0, 0) along axis 0, 0 along axes 1 and 2 -> (a^2 / 3 + 0 + 0) / 3
    assert losses.grad_smoothness(flow).item() == pytest.approx(a**2 / 9)
    assert losses.grad_smoothness(torch.full((1, 3, *shape), 7.0)).item() == 0.0


def test_local_ncc_stays_in_range_on_a_flat_offset_background():
    """A constant non-zero background (a z-scored skull-stripped image): no window may score above 1."""
    gen = torch.Generator().manual_seed(0)
    fixed = torch.full((1, 1, 24, 24, 24), -2.0)
    fixed[..., 8:16, 8:16, 8:16] += torch.rand(1, 1, 8, 8, 8, generator=gen)
    moving = fixed.roll(1, dims=2)
    assert -1.0 <= losses.local_ncc(fixed, moving).item() <= 0.0
    assert losses.local_ncc(fixed, fixed).item() > -1.0  # flat windows score 0, not 1
