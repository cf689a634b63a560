"""The contrastive registration network and its loss terms (paper section 3, strengthened in issue 12)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from atlasreg.flow import jacobian_determinant, warp  # noqa: E402
from atlasreg.engine.similarity import lncc as local_ncc  # noqa: E402
from atlasreg_plugins.contrastive import losses  # noqa: E402
from atlasreg_plugins.contrastive.network import ContrastiveRegNet, sample_points  # noqa: E402

SMALL = dict(stem_channels=4, unet_channels=(8, 8, 8), head_channels=4, proj_dim=6, points=32)
SHAPE = (19, 22, 17)  # odd, not multiples of 16


def _net(**kwargs):
    torch.manual_seed(0)
    return ContrastiveRegNet(**{**SMALL, **kwargs})


def _pair(batch=2, shape=SHAPE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *shape, generator=gen), torch.randn(batch, 1, *shape, generator=gen)


# --- network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("contrast", ["cross", "dense", "global", "none"])
def test_output_shapes(contrast):
    net = _net(contrast=contrast)
    moving, fixed = _pair()
    labels = torch.randint(0, 4, fixed.shape)
    out = net(moving, fixed, contrast=True, view=fixed.flip(0), labels=labels)
    assert out["velocity"].shape == out["flow"].shape == (2, 3, *SHAPE)
    half = tuple(-(-n // 2) for n in SHAPE)
    assert out["mean"].shape == out["log_var"].shape == (2, 3, *half)
    if contrast == "cross":
        assert out["points_fixed"].shape == out["points_view"].shape == (2, 32, 6) and out["points_labels"].shape == (2, 32)
        assert (out["points_labels"] > 0).all()  # anchors in the brain only
    elif contrast == "dense":
        assert out["points_fixed"].shape == out["points_moving"].shape == (2, 32, 6)
    elif contrast == "global":
        assert out["proj_fixed"].shape == out["proj_moving"].shape == (2, 6)
    else:
        assert not hasattr(net, "projection") and not {"proj_fixed", "points_fixed"} & set(out)


def test_one_encoder_shared_by_both_images():
    """Swapping the images swaps their encoder features (weight sharing), not the registration."""
    net = _net(contrast="global").eval()
    moving, fixed = _pair(batch=1)
    a = net(moving, fixed, contrast=True)
    b = net(fixed, moving, contrast=True)
    assert torch.allclose(a["proj_moving"], b["proj_fixed"], atol=1e-6)
    assert torch.allclose(a["proj_fixed"], b["proj_moving"], atol=1e-6)


def test_instance_norm_makes_each_sample_independent_of_the_batch():
    net = _net().train()
    moving, fixed = _pair(batch=2)
    both = net(moving, fixed)["flow"]
    alone = net(moving[:1], fixed[:1])["flow"]
    assert torch.allclose(both[:1], alone, atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_velocity_is_the_half_grid_mean_upsampled_and_doubled_and_flow_its_exponential():
    net = _net().eval()
    moving, fixed = _pair(batch=1, shape=(16, 20, 18))
    with torch.no_grad():
        out = net(moving, fixed)
    # fine voxel 2 i is coarse voxel i (stride-2 grid): exactly the coarse value, times 2
    assert torch.allclose(out["velocity"][..., ::2, ::2, ::2], 2 * out["mean"], atol=1e-7)
    assert torch.allclose(out["flow"], net.flow(out["velocity"]))


def test_untrained_prediction_is_near_identity_and_diffeomorphic():
    net = _net().eval()
    moving, fixed = _pair(batch=1)
    flow = net(moving, fixed)["flow"]
    assert flow.abs().max() < 1e-2
    assert (jacobian_determinant(flow) > 0).all()


def test_sample_draws_around_the_mean():
    net = _net().train()
    moving, fixed = _pair(batch=1)
    torch.manual_seed(3)
    sampled = net(moving, fixed, sample=True)
    mean = net(moving, fixed)
    assert not torch.equal(sampled["velocity"], mean["velocity"])
    # initial sigma = exp(-5): the sample is the mean up to a few hundredths of a voxel
    assert (sampled["velocity"] - mean["velocity"]).abs().max() < 0.1


def test_dense_contrast_reaches_the_encoder_the_head_and_the_flow():
    net = _net().train()
    moving, fixed = _pair(batch=1)
    out = net(moving, fixed, contrast=True)
    out["flow"].retain_grad()
    losses.dense_info_nce(out["points_fixed"], out["points_moving"]).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith(("encoder", "projection")))
    assert out["flow"].grad is not None and out["flow"].grad.abs().sum() > 0


def test_sample_points_lie_in_the_mask_and_include_near_neighbours():
    mask = torch.zeros(1, 10, 12, 9, dtype=torch.bool)
    mask[0, 3:7, 4:8, 2:6] = True
    torch.manual_seed(0)
    index = sample_points(mask, 40)
    assert index.shape == (1, 40)
    anchors, near = index[0, :20], index[0, 20:]
    assert mask.flatten()[anchors].all()
    a = torch.stack(torch.unravel_index(anchors, (10, 12, 9)), -1)
    b = torch.stack(torch.unravel_index(near, (10, 12, 9)), -1)
    distance = (a - b).abs().max(-1).values
    assert ((distance >= 1) & (distance <= 2)).all()


def test_a_few_steps_reduce_the_registration_loss():
    """A blob shifted by 2 voxels: a few Adam steps on LNCC + smoothness register it."""
    shape = (16, 16, 16)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    blob = lambda centre: torch.exp(-(((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2).sum(0)) / 8.0)[None, None]  # noqa: E731
    moving, fixed = blob([7.0, 8.0, 8.0]), blob([9.0, 8.0, 8.0])
    net = _net(contrast="none", unet_channels=(8, 8))  # 16 voxels: two U-Net levels (1/8 resolution = 2 voxels)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        optimizer.zero_grad()
        out = net(moving, fixed)
        recon = local_ncc(fixed, warp(moving, out["flow"]), 5)
        (recon + 0.01 * losses.kl_laplacian(out["mean"], out["log_var"])).backward()
        optimizer.step()
        first = recon.item() if first is None else first
    assert recon.item() < first - 0.1
    # warped(p) = moving(p + u(p)): at the fixed blob's centre u must point back, along -axis 0
    assert out["flow"][0, 0, 9, 8, 8] < -0.5


# --- losses ----------------------------------------------------------------------------------


def test_recon_mse_by_hand():
    fixed = torch.zeros(2, 1, 3, 4, 5)
    warped = torch.zeros_like(fixed)
    warped[0] = 2.0  # half the voxels off by 2
    assert losses.recon_mse(fixed, warped, sigma=0.5).item() == pytest.approx(0.5 * 4.0 / (2 * 0.25))


def test_kl_paper_as_printed():
    shape, m, s = (3, 4, 5), 0.7, -1.3
    n = 3 * 4 * 5
    mean = torch.full((1, 3, *shape), m)
    log_var = torch.full((1, 3, *shape), s)
    # 1/2 [tr(sigma^2) + ||mu|| - log det sigma^2] / N with 3N entries
    expected = 0.5 * (3 * n * math.exp(s) + math.sqrt(3 * n) * m - 3 * n * s) / n
    assert losses.kl_paper(mean, log_var).item() == pytest.approx(expected, rel=1e-6)
    # ||mu|| is the norm, not its square: a single 3 in the field adds 3 / (2N)
    single = torch.zeros(1, 3, *shape)
    single[0, 1, 2, 2, 2] = 3.0
    zero_var = torch.zeros_like(single)
    base = losses.kl_paper(torch.zeros_like(single), zero_var).item()
    assert losses.kl_paper(single, zero_var).item() - base == pytest.approx(3.0 / (2 * n), rel=1e-5)
    # batch: mean over samples
    both = losses.kl_paper(torch.cat([mean, single]), torch.cat([log_var, zero_var]))
    assert both.item() == pytest.approx(0.5 * (expected + base + 3.0 / (2 * n)), rel=1e-5)


def test_kl_laplacian_by_hand():
    X, Y, Z = 4, 3, 5
    n, lam, s, a = X * Y * Z, 7.0, -2.0, 0.6
    mean = torch.zeros(1, 3, X, Y, Z)
    mean[0, 0] = a * torch.arange(X, dtype=torch.float32).view(X, 1, 1)  # neighbours along axis 0 differ by a
    log_var = torch.full_like(mean, s)
    edges = (X - 1) * Y * Z + X * (Y - 1) * Z + X * Y * (Z - 1)
    sum_degree = 2 * edges  # sum over voxels of the number of in-grid neighbours
    sigma_term = 0.5 * 3 * (lam * math.exp(s) * sum_degree - n * s)
    smooth_term = 0.5 * lam * a**2 * (X - 1) * Y * Z
    expected = (sigma_term + smooth_term) / n
    assert losses.kl_laplacian(mean, log_var, prior_lambda=lam).item() == pytest.approx(expected, rel=1e-5)


def test_kl_laplacian_matches_an_explicit_graph_laplacian():
    gen = torch.Generator().manual_seed(3)
    shape = (3, 2, 4)
    mean = torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64)
    log_var = torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64)
    lam = 3.0
    coords = [(i, j, k) for i in range(shape[0]) for j in range(shape[1]) for k in range(shape[2])]
    index = {c: t for t, c in enumerate(coords)}
    L = torch.zeros(len(coords), len(coords), dtype=torch.float64)
    for c in coords:
        for axis in range(3):
            for step in (-1, 1):
                d = list(c)
                d[axis] += step
                if tuple(d) in index:
                    L[index[c], index[tuple(d)]] -= 1
                    L[index[c], index[c]] += 1
    per_sample = []
    for b in range(2):
        total = 0.0
        for comp in range(3):
            mu = mean[b, comp].reshape(-1)
            var = log_var[b, comp].exp().reshape(-1)
            # KL(N(mu, diag var) || N(0, (lam L)^-1)) up to constants
            total += 0.5 * (lam * (torch.diag(L) * var).sum() + lam * mu @ L @ mu - log_var[b, comp].sum())
        per_sample.append(total / len(coords))
    expected = sum(per_sample) / 2
    assert losses.kl_laplacian(mean, log_var, prior_lambda=lam).item() == pytest.approx(expected.item(), rel=1e-10)


def _cos(u, v):
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def test_info_nce_by_hand():
    x = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    y = [[1.0, 1.0, 0.0], [0.0, 1.0, 3.0]]
    tau = 0.5
    images = x + y

    def anchor_loss(a, pos):
        others = [i for i in range(4) if i != a]
        num = math.exp(_cos(images[a], images[pos]) / tau)
        den = sum(math.exp(_cos(images[a], images[i]) / tau) for i in others)
        return -math.log(num / den)

    one_way = [anchor_loss(0, 2), anchor_loss(1, 3)]
    both = one_way + [anchor_loss(2, 0), anchor_loss(3, 1)]
    pm, pf = torch.tensor(x), torch.tensor(y)
    assert losses.info_nce(pm, pf, tau=tau, symmetric=False).item() == pytest.approx(sum(one_way) / 2, rel=1e-5)
    assert losses.info_nce(pm, pf, tau=tau).item() == pytest.approx(sum(both) / 4, rel=1e-5)
    # cosine similarity: the scale of the vectors does not matter
    assert losses.info_nce(3 * pm, 0.2 * pf, tau=tau).item() == pytest.approx(sum(both) / 4, rel=1e-5)


def test_info_nce_decreases_as_positives_align():
    gen = torch.Generator().manual_seed(0)
    pm, pf = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    values = [losses.info_nce(pm, (1 - t) * pf + t * pm).item() for t in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_info_nce_is_zero_without_negatives():
    pm = torch.randn(1, 8, requires_grad=True)
    loss = losses.info_nce(pm, torch.randn(1, 8))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pm.grad == 0)


def test_dense_info_nce_by_hand():
    fixed = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # three locations, 2-D projections
    moving = [[2.0, 0.5], [0.2, 1.0], [-1.0, 1.0]]
    tau = 0.5

    def anchor_loss(anchors, others, i):
        logits = [_cos(anchors[i], others[j]) / tau for j in range(3)]
        return -(logits[i] - math.log(sum(math.exp(v) for v in logits)))

    from_fixed = sum(anchor_loss(fixed, moving, i) for i in range(3)) / 3
    from_moving = sum(anchor_loss(moving, fixed, i) for i in range(3)) / 3
    f, m = torch.tensor([fixed]), torch.tensor([moving])
    assert losses.dense_info_nce(f, m, tau).item() == pytest.approx(0.5 * (from_fixed + from_moving), rel=1e-5)
    # per sample, then the mean over the batch
    matched = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    both = losses.dense_info_nce(torch.cat([f, matched]), torch.cat([m, matched]), tau).item()
    alone = losses.dense_info_nce(matched, matched, tau).item()
    assert both == pytest.approx(0.5 * (0.5 * (from_fixed + from_moving) + alone), rel=1e-5)


def test_cross_contrast_negatives_are_other_structures_only():
    """With labels, a location of the anchor's own structure is neither positive nor negative: it
    leaves the denominator; the flow plays no part (the gradient reaches the encoder and the head)."""
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.2]]])
    v = torch.tensor([[[1.0, 0.1], [0.1, 1.0], [0.9, 0.3]]])
    labels = torch.tensor([[1, 2, 1]])
    logits = F.normalize(f, dim=2) @ F.normalize(v, dim=2).transpose(1, 2) / 0.1
    same = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])
    masked = logits[0].masked_fill(same, float("-inf"))
    rows = torch.logsumexp(masked, 1) - masked.diagonal()
    cols = torch.logsumexp(masked, 0) - masked.diagonal()
    expected = 0.5 * (rows.mean() + cols.mean())
    assert losses.dense_info_nce(f, v, 0.1, labels).item() == pytest.approx(expected.item(), rel=1e-3)
    assert losses.dense_info_nce(f, v, 0.1, labels) < losses.dense_info_nce(f, v, 0.1)  # fewer (false) negatives
    net = _net(contrast="cross").train()
    moving, fixed = _pair(batch=1)
    out = net(moving, fixed, contrast=True, view=-fixed, labels=torch.randint(0, 3, fixed.shape))
    losses.dense_info_nce(out["points_fixed"], out["points_view"], 0.1, out["points_labels"]).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith(("encoder", "projection")))
    assert all(grads[n] is None for n in grads if n.startswith(("mean_head", "down", "up")))
    with pytest.raises(ValueError, match="needs a view"):
        net(moving, fixed, contrast=True)
