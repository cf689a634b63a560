"""Loss terms of the contrastive registration model (section 3.3), kept separate; the backend weights
them (paper, eq. 9: L = L_recon + alpha * L_smooth + beta * L_contrast, alpha = 1, beta = 0.01).

Normalisation: every image/field term is a *mean over voxels* (the per-voxel share of the sums in
eqs. 5-7), then a mean over the batch. Using means for both the reconstruction and the KL term
keeps their ratio the same as for the sums in the ELBO (both sums run over the N voxels of the
volume), while making the values independent of the volume size.

Shapes: images ``(B, C, X, Y, Z)``; ``mean`` / ``log_var`` ``(B, 3, X, Y, Z)`` (``log_var`` is
log sigma^2, per voxel and component); projections ``(B, D)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["recon_mse", "kl_paper", "kl_laplacian", "info_nce", "dense_info_nce"]


def _voxels(field: torch.Tensor) -> int:
    n = 1
    for s in field.shape[2:]:
        n *= s
    return n


def recon_mse(fixed: torch.Tensor, warped: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """Eq. 7: ||y - x o phi_z||^2 / (2 sigma^2), as a mean over voxels (and channels, batch).

    ``sigma`` is the standard deviation of the image noise of the likelihood p(y | z; x) =
    N(x o phi_z, sigma^2) (eq. 4; eq. 7 prints it as sigma_{z|y;x}, but it is the image-noise
    sigma of eq. 4, a fixed hyper-parameter). Multiply by the number of voxels for the sum of eq. 7.
    The default 0.1 is meant for z-scored images (VoxelMorph-diff uses 0.02 on [0, 1] intensities).
    """
    if fixed.shape != warped.shape:
        raise ValueError(f"recon_mse: fixed {tuple(fixed.shape)} and warped {tuple(warped.shape)} differ")
    return ((fixed - warped) ** 2).mean() / (2.0 * sigma**2)


def kl_paper(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Eq. 6 exactly as printed: 1/2 [tr(sigma^2) + ||mu|| - log det(sigma^2)], divided by the number
    of voxels N, averaged over the batch.

    Per sample: tr(sigma^2) = sum of exp(log_var) over all voxels and components; log det(sigma^2)
    (diagonal covariance) = sum of log_var; ||mu|| is the Euclidean norm of the whole mean field --
    the norm, NOT its square, as printed (the KL against N(0, I) has ||mu||^2; we implement the
    printed formula). Note that ||mu|| / N ~ sqrt(3 / N) * rms(mu) is negligible for a volume, so
    this term hardly constrains the mean, and its minimum over sigma is at sigma^2 = 1 (voxel^2).
    Constants of the KL (-3N) are dropped.
    """
    if mean.shape != log_var.shape:
        raise ValueError(f"kl_paper: mean {tuple(mean.shape)} and log_var {tuple(log_var.shape)} differ")
    batch = mean.shape[0]
    trace = torch.exp(log_var).reshape(batch, -1).sum(1)
    norm = mean.reshape(batch, -1).norm(dim=1)
    log_det = log_var.reshape(batch, -1).sum(1)
    return (0.5 * (trace + norm - log_det) / _voxels(mean)).mean()


def _neighbour_counts(shape, device, dtype) -> torch.Tensor:
    """D_p: number of 6-neighbours of each voxel that lie inside the grid, (X, Y, Z)."""
    counts = torch.zeros(shape, device=device, dtype=dtype)
    for dim, n in enumerate(shape):
        if n < 2:
            continue
        index = torch.arange(n, device=device)
        per_axis = torch.full((n,), 2.0, device=device, dtype=dtype)
        per_axis[index == 0] = 1.0
        per_axis[index == n - 1] = 1.0
        view = [1, 1, 1]
        view[dim] = n
        counts = counts + per_axis.view(view)
    return counts


def kl_laplacian(mean: torch.Tensor, log_var: torch.Tensor, prior_lambda: float = 20.0) -> torch.Tensor:
    """KL[q || p] for a smooth prior p(z) = N(0, (lambda L)^-1), L = D - A the graph Laplacian of the
    6-neighbourhood grid (the probabilistic model of VoxelMorph-diff, Dalca et al. 2018), per
    component, up to constants, divided by the number of voxels N and averaged over the batch:

        1/N * sum_{p, c} 1/2 [lambda D_p sigma_{p,c}^2 - log sigma_{p,c}^2]
      + 1/N * sum_c 1/2 lambda sum_{neighbours (i, j)} (mu_{i,c} - mu_{j,c})^2

    D_p is the number of neighbours of voxel p inside the grid (6 inside, 3-5 on the faces) and
    each neighbouring pair (i, j) counts once (mu^T L mu = sum over edges of the squared
    difference). Dropped constants: -3N and -log det(lambda L) (L is singular: constant fields are
    not penalised). The optimum sigma^2 is 1 / (lambda D_p).
    """
    if mean.shape != log_var.shape:
        raise ValueError(f"kl_laplacian: mean {tuple(mean.shape)} and log_var {tuple(log_var.shape)} differ")
    batch = mean.shape[0]
    n = _voxels(mean)
    degree = _neighbour_counts(mean.shape[2:], mean.device, mean.dtype)
    sigma_term = 0.5 * (prior_lambda * degree * torch.exp(log_var) - log_var).reshape(batch, -1).sum(1)
    smooth = mean.new_zeros(batch)
    for dim in (2, 3, 4):
        if mean.shape[dim] < 2:
            continue
        diff = mean.narrow(dim, 1, mean.shape[dim] - 1) - mean.narrow(dim, 0, mean.shape[dim] - 1)
        smooth = smooth + (diff**2).reshape(batch, -1).sum(1)
    return ((sigma_term + 0.5 * prior_lambda * smooth) / n).mean()


def info_nce(proj_moving: torch.Tensor, proj_fixed: torch.Tensor, tau: float = 0.1, symmetric: bool = True) -> torch.Tensor:
    """Contrastive loss (eq. 8) with cosine similarity and temperature ``tau``, mean over anchors.

    The set I of a batch of B pairs holds the 2B projections {x_1..x_B, y_1..y_B}. For the anchor
    x_b the positive is y_b and the negatives are the 2B - 2 other images (x_k, y_k, k != b):

        l(x_b) = -log exp(sim(x_b, y_b)/tau) / sum_{i in I, i != x_b} exp(sim(x_b, i)/tau)

    i.e. the standard InfoNCE / NT-Xent of the cited SimCLR and MoCo definitions: the denominator
    holds the positive and all negatives and leaves out only the anchor itself. Eq. 8 prints the
    indicator as 1[i != y], which read literally would drop the positive and keep the anchor
    (sim(x, x) = 1) in the denominator; we read it as the cited definitions' 1[i != anchor].

    ``symmetric=True`` (default, SimCLR's NT-Xent) averages l over the 2B anchors x_b and y_b;
    ``symmetric=False`` uses only the anchors x_b (eq. 8 written for the moving image).

    With B = 1 there are no negatives: the denominator is the positive alone and the loss is
    exactly 0 (with zero gradient) -- the term only acts for batches of two or more pairs.
    """
    if proj_moving.shape != proj_fixed.shape or proj_moving.dim() != 2:
        raise ValueError(f"info_nce: expected two (B, D) tensors, got {tuple(proj_moving.shape)} and {tuple(proj_fixed.shape)}")
    batch = proj_moving.shape[0]
    z = F.normalize(torch.cat([proj_moving, proj_fixed], dim=0), dim=1)
    logits = z @ z.t() / tau
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    index = torch.arange(batch, device=z.device)
    positives = torch.cat([index + batch, index])  # x_b <-> y_b
    losses = torch.logsumexp(logits, dim=1) - logits[torch.arange(2 * batch, device=z.device), positives]
    return losses.mean() if symmetric else losses[:batch].mean()


def dense_info_nce(points_fixed: torch.Tensor, points_moving: torch.Tensor, tau: float = 0.1,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """Correspondence InfoNCE over sampled locations, per sample, mean over anchors and batch.

    ``points_fixed[b, i]`` is the projection of the fixed image's features at location p_i and
    ``points_moving[b, i]`` that of the moving image's features warped by the current flow, read
    at the same p_i: where the registration is right they describe the same anatomy (the
    positive); the moving features at every other sampled location p_j (j != i, near ones
    included) are the negatives:

        l_i = -log exp(sim(f_i, m_i)/tau) / sum_j exp(sim(f_i, m_j)/tau)

    with cosine similarity, averaged with the symmetric term (anchors m_i against all f_j).
    Shapes ``(B, N, D)``. With ``labels`` (B, N), the structure at each location, only locations of
    another structure are negatives (j with labels_j == labels_i, j != i, leave the denominator):
    the cross-contrast term, where the second set of points is the same anatomy under another
    contrast.
    """
    if points_fixed.shape != points_moving.shape or points_fixed.dim() != 3:
        raise ValueError(f"dense_info_nce: expected two (B, N, D) tensors, got {tuple(points_fixed.shape)} and {tuple(points_moving.shape)}")
    f = F.normalize(points_fixed, dim=2)
    m = F.normalize(points_moving, dim=2)
    logits = f @ m.transpose(1, 2) / tau  # (B, N, N): row i = anchor f_i against every m_j
    if labels is not None:
        same = labels[:, :, None] == labels[:, None, :]
        same &= ~torch.eye(same.shape[1], dtype=torch.bool, device=same.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    rows = F.cross_entropy(logits.transpose(1, 2), target)  # anchors f_i (class dim = m_j)
    cols = F.cross_entropy(logits, target)  # anchors m_j (class dim = f_i)
    return 0.5 * (rows + cols)
