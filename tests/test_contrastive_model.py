"""The contrastive registration network and its loss terms (paper section 3)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from atlasreg.flow import jacobian_determinant, warp  # noqa: E402
from atlasreg_plugins.contrastive import losses  # noqa: E402
from atlasreg_plugins.contrastive.network import ContrastiveRegNet, Encoder  # noqa: E402

SMALL = dict(enc_channels=(4, 8, 8, 8), dec_channels=(8, 8, 8, 8, 4), proj_dim=6)
SHAPE = (19, 22, 17)  # odd, not multiples of 16


def _net(**kwargs):
    torch.manual_seed(0)
    return ContrastiveRegNet(**{**SMALL, **kwargs})


def _pair(batch=2, shape=SHAPE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *shape, generator=gen), torch.randn(batch, 1, *shape, generator=gen)


def _count(module):
    return sum(p.numel() for p in module.parameters())


# --- network ---------------------------------------------------------------------------------


def test_output_shapes():
    net = _net()
    moving, fixed = _pair()
    out = net(moving, fixed)
    assert set(out) == {"mean", "log_var", "proj_moving", "proj_fixed"}
    assert out["mean"].shape == out["log_var"].shape == (2, 3, *SHAPE)
    assert out["proj_moving"].shape == out["proj_fixed"].shape == (2, 6)
    z = net.sample(out["mean"], out["log_var"])
    assert z.shape == (2, 3, *SHAPE) and net.flow(z).shape == (2, 3, *SHAPE)
    with pytest.raises(ValueError):
        net(moving, fixed[:, :, :-1])


@torch.no_grad()
def test_one_encoder_shared_by_both_images():
    net = _net().train()  # batch statistics (fresh running statistics would shrink everything)
    assert sum(isinstance(m, Encoder) for m in net.modules()) == 1
    assert _count(net) == _count(net.encoder) + _count(net.projection) + _count(net.decoder)
    moving, fixed = _pair()
    before = net(moving, fixed)
    # the same function for both images: swapping the inputs swaps the projections
    swapped = net(fixed, moving)
    assert torch.allclose(swapped["proj_moving"], before["proj_fixed"], atol=1e-6)
    assert torch.allclose(swapped["proj_fixed"], before["proj_moving"], atol=1e-6)
    net.encoder.levels[0][0][0].weight.mul_(-1.5)
    after = net(moving, fixed)
    for key in ("proj_moving", "proj_fixed"):
        assert (after[key] - before[key]).abs().max() > 0.1 * before[key].abs().max()


@torch.no_grad()
def test_swap_symmetry_also_holds_in_eval_mode():
    net = _net().eval()
    moving, fixed = _pair()
    a, b = net(moving, fixed), net(fixed, moving)
    assert torch.allclose(a["proj_moving"], b["proj_fixed"], rtol=1e-4, atol=0)
    assert torch.allclose(a["proj_fixed"], b["proj_moving"], rtol=1e-4, atol=0)


def test_initialisation_follows_the_paper():
    net = _net(enc_channels=(16, 32, 32, 64), dec_channels=(64, 32, 32, 32, 16))
    bn = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)])
    assert abs(bn.std().item() - 0.1) < 0.02 and abs(bn.mean().item()) < 0.03  # N(0, 0.1), not the default 1
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    conv = net.decoder.levels[-1][0].weight.detach()  # (32, 32 + 2 * 16, 3, 3, 3)
    fan_in = conv[0].numel()
    he_std = math.sqrt(2.0 / (1 + 0.2**2)) / math.sqrt(fan_in)
    assert abs(conv.std().item() / he_std - 1) < 0.1
    assert net.decoder.mean_head.weight.abs().max() < 1e-4 and torch.all(net.decoder.mean_head.bias == 0)
    assert torch.all(net.decoder.log_var_head.bias == -10.0)


def test_untrained_prediction_is_near_identity_and_diffeomorphic():
    net = _net().train()
    out = net(*_pair())
    assert out["mean"].abs().max() < 1e-2
    assert torch.allclose(out["log_var"], torch.full_like(out["log_var"], -10.0), atol=1e-3)
    flow = net.flow(net.sample(out["mean"], out["log_var"]))
    assert jacobian_determinant(flow).min() > 0.5


def test_sample_reparameterisation():
    torch.manual_seed(0)
    mean = torch.full((1, 3, 20, 20, 20), 1.5)
    z = ContrastiveRegNet.sample(mean, torch.full_like(mean, math.log(4.0)))
    assert abs(z.mean().item() - 1.5) < 0.05 and abs(z.std().item() - 2.0) < 0.05
    assert torch.allclose(ContrastiveRegNet.sample(mean, torch.full_like(mean, -60.0)), mean)


def _grads(net, loss):
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True)
    return {name: g for name, g in zip(params, grads)}


def _reached(grads, prefix):
    return [name for name, g in grads.items() if name.startswith(prefix) and g is not None and g.abs().sum() > 0]


def test_contrastive_loss_trains_encoder_and_projection_only():
    net = _net().train()
    out = net(*_pair())
    grads = _grads(net, losses.info_nce(out["proj_moving"], out["proj_fixed"]))
    assert _reached(grads, "encoder.") and _reached(grads, "projection.")
    assert all(g is None for name, g in grads.items() if name.startswith("decoder."))


def test_registration_losses_train_the_decoder():
    net = _net().train()
    moving, fixed = _pair()
    out = net(moving, fixed)
    warped = warp(moving, net.flow(net.sample(out["mean"], out["log_var"])))
    grads = _grads(net, losses.recon(fixed, warped))
    assert _reached(grads, "decoder.mean_head.") and _reached(grads, "decoder.log_var_head.")
    assert _reached(grads, "decoder.levels.") and _reached(grads, "encoder.")
    assert all(g is None for name, g in grads.items() if name.startswith("projection."))
    for kl in (losses.kl_paper, losses.kl_laplacian):
        grads = _grads(net, kl(out["mean"], out["log_var"]))
        assert _reached(grads, "decoder.log_var_head.") and _reached(grads, "decoder.mean_head.")
        assert all(g is None for name, g in grads.items() if name.startswith("projection."))


def test_a_few_steps_reduce_the_registration_loss():
    """A shifted blob: the mean velocity learns to move it (recon + Laplacian KL)."""
    torch.manual_seed(0)
    shape = (16, 16, 16)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij"))
    blob = lambda c: torch.exp(-(((grid - torch.tensor(c).view(3, 1, 1, 1)) ** 2).sum(0)) / 18.0)[None, None]  # noqa: E731
    moving, fixed = blob([7.0, 8.0, 8.0]), blob([9.0, 8.0, 8.0])
    net = _net(enc_channels=(4, 8, 8), dec_channels=(8, 8, 8, 4)).train()  # 3 levels: 2^3 voxels at the bottom
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss_fn():
        out = net(moving, fixed)
        warped = warp(moving, net.flow(out["mean"]))
        return losses.recon(fixed, warped, sigma=0.1), out

    first = loss_fn()[0].item()
    for _ in range(20):
        opt.zero_grad()
        recon, out = loss_fn()
        (recon + losses.kl_laplacian(out["mean"], out["log_var"], 20.0)).backward()
        opt.step()
    recon, out = loss_fn()
    assert recon.item() < 0.6 * first
    # warped(p) = moving(p + u(p)): at the fixed blob's centre u must point back, along -axis 0
    assert out["mean"][0, 0, 9, 8, 8] < -0.3


# --- losses ----------------------------------------------------------------------------------


def test_recon_by_hand():
    fixed = torch.zeros(2, 1, 3, 4, 5)
    warped = torch.zeros_like(fixed)
    warped[0] = 2.0  # half the voxels off by 2
    assert losses.recon(fixed, warped, sigma=0.5).item() == pytest.approx(0.5 * 4.0 / (2 * 0.25))


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
