"""Part-local probes: latent directions that change one part's pixels and little else.

The sensitivity profile's random probes move the parts together (docs/tuning.md, "Open"), so
a regression on their part changes has little independent variation to credit each part with.
These probes are found from the generator itself: for part p, the directions in W whose
change of the image, per pixel, is largest on p's pixels against the rest of the image, summed
over samples (a generalized eigenproblem on the Jacobian of the image with respect to w),
optionally only among the principal axes of the latents' own spread (``natural_basis``) and
one standard deviation of it long. A unit's direct profile is then its mean squared response
along each part's probes, and ``share_test`` asks whether its top part's share is above a
line given the probes drawn. ``refine_by_measured_change`` keeps the combinations of rendered
candidates most local in the profile's own measures, and ``part_energy_bias`` compares each
part's probe energy with a reference's. ``part_split_responses`` splits a read-out's
response to an image change (over ``image_change_basis``, the changes the generator can make)
into the parts' pixels, and ``split_profile`` sums that up at one sample, less the global
moves that ``global_move_count`` finds. ``benchmarks/part_probes.py`` and
``benchmarks/prior_probes.py`` measure them against the toy world's ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import eigh

from linkstyle_core.models.protocols import Generator
from linkstyle_core.render import broadcast_w


def natural_basis(w: np.ndarray, labels: np.ndarray | None, variance: float) -> np.ndarray:
    """w [N, w_dim] (samples of the generator's own latent distribution, e.g. the paired data)
    -> [w_dim, m]: the principal axes of w's spread within its classes (``labels`` [N]; all
    one class if None) that hold ``variance`` of it, each scaled by its standard deviation.
    Directions outside them are ones the generator's mapping never produces."""
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    w = np.asarray(w, dtype=np.float64)
    groups = np.zeros(len(w), dtype=int) if labels is None else np.asarray(labels)
    centred = w.copy()
    for g in np.unique(groups):
        centred[groups == g] -= w[groups == g].mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    spread = s ** 2 / max(len(centred) - 1, 1)
    m = int(np.searchsorted(np.cumsum(spread) / spread.sum(), variance) + 1)
    return vt[:m].T * np.sqrt(spread[:m])


def part_subspaces(generator: Generator, w0: torch.Tensor, labels: torch.Tensor,
                   parts: Sequence[int], k: int,
                   basis: np.ndarray | None = None) -> list[np.ndarray]:
    """For each part label in ``parts``, [w_dim, k] unit-norm columns: the top ``k``
    generalized eigenvectors of (sum_i J_i,p^T J_i,p / |p_i|, sum_i J_i,o^T J_i,o / |o_i|),
    J_i the Jacobian of sample i's image with respect to its latent (every colour channel),
    p_i the pixels of the part in ``labels`` [Ns, H, W] (the segmentation of the base images
    of w0 [Ns, w_dim]) and o_i the other pixels. The first columns change the part's pixels
    most against the others', per pixel. ``basis`` [w_dim, m] (``natural_basis``) restricts
    the directions to its span, with the latent's coordinates along it; default all of W.
    Forward-mode differentiation, one pass per coordinate and sample."""
    dim = generator.w_dim
    coords = torch.eye(dim) if basis is None else torch.as_tensor(basis, dtype=torch.float32)
    if coords.shape[0] != dim:
        raise ValueError(f"basis must be [w_dim, m] = [{dim}, m], got {tuple(coords.shape)}")
    m = coords.shape[1]
    if k < 1 or k > m:
        raise ValueError(f"k must be between 1 and the latent's {m} coordinates, got {k}")
    axes = coords.to(w0.device, w0.dtype)

    def image(i: int, a: torch.Tensor) -> torch.Tensor:
        return generator.synthesis(broadcast_w((w0[i] + axes @ a)[None], generator.num_ws))[0]

    inside, outside, _ = locality_grams(image, labels, parts,
                                        torch.zeros(m, device=w0.device, dtype=w0.dtype))
    to_latent = coords.double().numpy()
    return [most_local(inside[j], outside[j], to_latent, k) for j in range(len(parts))]


def locality_grams(image: Callable[[int, torch.Tensor], torch.Tensor], labels: torch.Tensor,
                   parts: Sequence[int], origin: torch.Tensor
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image(i, a)``: sample i's image [3, H, W] moved by coordinates ``a`` (``origin``, zeros
    [m]: its base image); ``labels`` [Ns, H, W] the base images' segmentation. -> (inside,
    outside, energy), each [len(parts), m, m]: per part, summed over the samples, J_p^T J_p /
    |p|, J_o^T J_o / |o| and J_p^T J_p, J the Jacobian of the image at ``origin`` (every colour
    channel), p the part's pixels and o the others. Forward mode, one pass per coordinate."""
    m = origin.shape[0]
    inside = np.zeros((len(parts), m, m))
    outside, energy = np.zeros_like(inside), np.zeros_like(inside)
    for i in range(len(labels)):
        jac = torch.func.jacfwd(lambda a, i=i: image(i, a))(origin)
        jac = jac.detach().double().cpu().permute(1, 2, 0, 3)         # [H, W, 3, m]
        jac = jac.reshape(-1, jac.shape[2], m).numpy()
        label = labels[i].reshape(-1).cpu().numpy()
        for j, part in enumerate(parts):
            own = label == part
            a, b = jac[own].reshape(-1, m), jac[~own].reshape(-1, m)
            gram = a.T @ a
            energy[j] += gram
            inside[j] += gram / max(int(own.sum()), 1)
            outside[j] += b.T @ b / max(int((~own).sum()), 1)
    return inside, outside, energy


def enclosed_borders(labels: torch.Tensor, parts: Sequence[int], background: int,
                     radius: int = 1, share: float = 0.8) -> torch.Tensor:
    """labels [H, W] -> a copy in which every part of ``parts`` that another part encloses
    (at least ``share`` of the pixels within ``radius`` around it carry that one other part's
    label, and it is not ``background``) takes those border pixels over. An eye that grows
    changes the face's pixels around it: by the base labels alone that change is the face's,
    though it is the eye that moved; the enclosing part keeps the rest of its pixels."""
    out = labels.clone()
    for part in parts:
        mask = (labels == part).float()[None, None]
        if not mask.any():
            continue
        near = torch.nn.functional.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
        ring = (near[0, 0] > 0) & (labels != part)
        values, counts = torch.unique(labels[ring], return_counts=True)
        if len(values) and int(values[counts.argmax()]) != background \
                and int(counts.max()) >= share * int(ring.sum()):
            out[ring & (labels == values[counts.argmax()])] = part
    return out


def most_local(inside: np.ndarray, outside: np.ndarray, columns: np.ndarray,
               k: int, floor: float = 1e-6) -> np.ndarray:
    """The top ``k`` generalized eigenvectors of (inside, outside) [n, n], the outside term
    floored at ``floor`` of its mean eigenvalue, as combinations of ``columns`` [w_dim, n]:
    [w_dim, k], unit-norm columns, the most local first."""
    n = inside.shape[0]
    floor = floor * max(np.trace(outside), 1e-12) / n
    _, vectors = eigh(inside, outside + floor * np.eye(n))
    top = columns @ vectors[:, ::-1][:, :k]
    return top / np.linalg.norm(top, axis=0)


def refine_by_measured_change(candidates: Sequence[np.ndarray], change: np.ndarray,
                              k: int) -> list[np.ndarray]:
    """Each part's ``k`` combinations of its candidate directions (``candidates``: per part
    [w_dim, N], as rendered) whose measured change is largest on the part against the other
    parts: the top generalized eigenvectors of (E_p E_p^T, sum over q != p of E_q E_q^T), E_q
    [N, M] the candidates' mean change in part q's M measures (``change`` [P, N, P, M], the
    candidates of part p in row p), changes taken as linear in the combination. -> per part
    [w_dim, k], unit-norm columns."""
    out = []
    for j, cand in enumerate(candidates):
        n = cand.shape[1]
        if not 1 <= k <= n:
            raise ValueError(f"k must be between 1 and the {n} candidates, got {k}")
        grams = np.einsum("aqm,bqm->qab", change[j], change[j])     # [P, N, N]
        out.append(most_local(grams[j], grams.sum(0) - grams[j], cand, k))
    return out


def part_probe_directions(subspaces: Sequence[np.ndarray], count: int, seed: int = 0,
                          basis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` latent directions, the parts in turn, each a Gaussian combination of its
    part's subspace columns: (directions [count, w_dim], part index of each [count]). Each has
    unit length, or with ``basis`` (``natural_basis``) unit length in its coordinates: one
    standard deviation of the latent's own spread, whichever part it moves."""
    rng = np.random.default_rng(seed)
    which = np.arange(count) % len(subspaces)
    dirs = np.stack([subspaces[int(j)] @ rng.standard_normal(subspaces[int(j)].shape[1])
                     for j in which])
    return dirs / sd_length(dirs, basis)[:, None], which


def sd_length(directions: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """directions [K, w_dim] -> [K]: each one's length in the coordinates of ``basis``
    (``natural_basis``: in standard deviations of the latent's own spread), or in W if None."""
    coords = directions if basis is None else directions @ np.linalg.pinv(basis).T
    return np.linalg.norm(coords, axis=1)


def direct_profiles(response: np.ndarray, which: np.ndarray, n_parts: int) -> np.ndarray:
    """response [K, C] (each channel's change along each probe), which [K] (each probe's
    part) -> [C, n_parts]: the mean squared response along each part's probes."""
    return np.stack([(response[which == j] ** 2).mean(0) for j in range(n_parts)], 1)


def part_energy_bias(profile: np.ndarray, reference: np.ndarray, rounds: int = 20) -> np.ndarray:
    """profile, reference [C, P] (each channel's energy per part from the probes and from a
    reference, e.g. squared ground-truth sensitivities) -> [P]: how much more each part's
    probes move the channels than the reference, log10, relative to the parts' mean. The model
    is log profile = log reference + a channel's scale + a part's bias, fitted by alternating
    medians, so a few channels off the model do not move it."""
    log_ratio = np.log10(profile + 1e-12) - np.log10(reference + 1e-12)
    bias = np.zeros(log_ratio.shape[1])
    for _ in range(rounds):
        bias = np.median(log_ratio - np.median(log_ratio - bias, 1, keepdims=True), 0)
    return bias - bias.mean()


def share_test(response: np.ndarray, which: np.ndarray, n_parts: int, tau: float,
               resamples: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Is a unit's top part's share of its direct profile above ``tau``, given the probes
    drawn? response [K, C], which [K] -> (share [C, n_parts], p [C]): the share of each part
    in each unit's direct profile, and a one-sided p for its top part's share being above
    ``tau``: the distance of the share from ``tau`` on the logit scale, in units of its
    bootstrap standard deviation (the probes resampled with replacement within each part,
    ``resamples`` times), read off the normal distribution. More probes make the resampled
    shares tighter, so a unit above ``tau`` only gets a smaller p."""
    from scipy.special import logit
    from scipy.stats import norm

    if not 0 < tau < 1:
        raise ValueError(f"tau must be in (0, 1), got {tau}")
    groups = [np.flatnonzero(which == j) for j in range(n_parts)]
    if any(len(g) < 2 for g in groups):
        raise ValueError("every part needs at least 2 probes to resample")
    response = np.asarray(response, dtype=np.float64)

    def shares(picks: Sequence[np.ndarray]) -> np.ndarray:
        rows = np.concatenate(picks)
        profile = direct_profiles(response[rows], which[rows], n_parts)
        total = profile.sum(1, keepdims=True)
        return profile / np.where(total > 0, total, np.inf)

    share = shares(groups)
    top = share.argmax(1)
    rng = np.random.default_rng(seed)
    again = np.stack([shares([rng.choice(g, len(g)) for g in groups])[np.arange(len(top)), top]
                      for _ in range(resamples)])
    eps = 1e-6
    spread = logit(np.clip(again, eps, 1 - eps)).std(0)
    z = (logit(np.clip(share.max(1), eps, 1 - eps)) - logit(tau)) / np.maximum(spread, eps)
    return share, norm.sf(z)


def image_change_basis(changes: torch.Tensor, rtol: float = 1e-3, drop: int = 0,
                       whiten: bool = False) -> torch.Tensor:
    """changes [n, C, H, W] (the image's change along each of n orthonormal latent directions,
    e.g. the columns of its Jacobian, one SD each) -> [r, C, H, W]: the same changes along the
    principal directions of the latent (left singular vectors of the changes, each scaled by its
    singular value), those above ``rtol`` of the largest, less the ``drop`` largest. Any linear
    read-out's root sum of squares over them is its root sum of squares over ``changes`` (less
    the dropped). The generator's largest image changes are its global moves (pose, position,
    scale, lighting); ``drop`` removes them. ``whiten``: unit-norm changes instead, each image
    change the generator can make counting once, however large its latent gain."""
    flat = changes.reshape(len(changes), -1).double()
    u, s, _ = torch.linalg.svd(flat.T, full_matrices=False)
    keep = s > rtol * s[0] if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    keep[:drop] = False
    basis = u[:, keep] if whiten else u[:, keep] * s[keep]
    return basis.T.to(changes.dtype).reshape(-1, *changes.shape[1:])


def part_split_responses(read: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                         changes: torch.Tensor, labels: torch.Tensor, parts: Sequence[int],
                         chunk: int = 64) -> torch.Tensor:
    """The first-order response of each read-out to each part's piece of each image change.
    read: images [B, C, H, W] -> read-outs [B, D]; image [C, H, W]; changes [n, C, H, W];
    labels [H, W] -> [len(parts), n, D]: d/dt read(image + t * change * (labels == part)) at
    t = 0 (a Jacobian-vector product). Over parts that tile the image the pieces add up to the
    response to the whole change. A read-out that ignores a part's pixels gets 0 from it, even
    where the change spreads over the whole image."""
    masks = torch.stack([(labels == q).to(changes.dtype) for q in parts])     # [P, H, W]
    pieces = (changes[None] * masks[:, None, None]).reshape(-1, *changes.shape[1:])

    def along(change: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda x: read(x[None])[0], (image,), (change,))[1]

    out = torch.cat([torch.func.vmap(along)(pieces[s:s + chunk])
                     for s in range(0, len(pieces), chunk)])
    return out.reshape(len(parts), len(changes), -1)


def part_centroids(logits: torch.Tensor, parts: Sequence[int]) -> torch.Tensor:
    """logits [B, num_parts, H, W] (a segmenter's) -> [B, len(parts), 3]: each part's soft
    centroid (x, y, in pixels) and soft area (pixels)."""
    prob = torch.softmax(logits.float(), 1)[:, list(parts)]
    h, w = prob.shape[-2:]
    y, x = torch.meshgrid(torch.arange(h, dtype=prob.dtype), torch.arange(w, dtype=prob.dtype),
                          indexing="ij")
    area = prob.sum((2, 3)).clamp_min(1e-6)
    return torch.stack([(prob * x).sum((2, 3)) / area, (prob * y).sum((2, 3)) / area, area], 2)


def global_move_count(centroids: np.ndarray, velocity: np.ndarray, background: np.ndarray,
                      foreground: np.ndarray, explained: float = 0.9, share: float = 0.75,
                      floor: float = 0.01) -> int:
    """How many of a sample's latent directions are global moves rather than a part's own:
    those along which the parts' centroids move as one similarity transform (translation,
    scaling, rotation about their mean; at least ``explained`` of the centroids' velocity),
    and those whose image change lies mostly on the background (at least ``share`` of its
    pixel energy). centroids [P, 2]; velocity [P, 2, m] (d centroid / d latent); background,
    foreground [m, m] (Gram matrices of the image's Jacobian over the background's and the
    parts' pixels). Both are generalized eigenproblems, each residual term floored at
    ``floor`` of the mean energy per direction, so that directions that barely move count
    for neither."""
    if not (0 < explained < 1 and 0 < share < 1):
        raise ValueError(f"explained and share must be in (0, 1), got {explained}, {share}")
    m = velocity.shape[-1]
    off = centroids - centroids.mean(0)
    similar = np.stack([np.tile([1.0, 0.0], len(off)), np.tile([0.0, 1.0], len(off)),
                        off.reshape(-1), np.stack([-off[:, 1], off[:, 0]], 1).reshape(-1)], 1)
    q = np.linalg.qr(similar)[0]
    v = velocity.reshape(-1, m)
    fit = q.T @ v
    rest = v - q @ fit

    def count(a: np.ndarray, b: np.ndarray, line: float) -> int:
        b = b + floor * np.trace(a + b) / m * np.eye(m)
        return int((eigh(a, b, eigvals_only=True) >= line / (1 - line)).sum())

    return (count(fit.T @ fit, rest.T @ rest, explained)
            + count(background, foreground, share))


def split_profile(image: Callable[[torch.Tensor], torch.Tensor],
                  read: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
                  parts: Sequence[int], background: int, dim: int, rtol: float = 1e-3,
                  drop: int | str = 0, whiten: bool = False,
                  centroids: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  step: float = 0.05) -> tuple[np.ndarray, int]:
    """What each read-out reads of each part at one sample. image: a latent move [dim] -> the
    sample's image [C, H, W]; read: images -> read-outs [B, D]; labels [H, W] -> ([len(parts),
    D], the changes left out): each read-out's response to each part's pixels of the image
    changes of the moves (``image_change_basis`` of the image's Jacobian, less ``drop`` of the
    largest), root sum of squares over the changes. ``drop="auto"``: as many as
    ``global_move_count`` finds, from ``centroids`` (latent moves [B, dim] -> the parts' soft
    centroids [B, len(parts), 2], e.g. ``part_centroids`` of a segmenter's logits; their
    velocity by central differences over ``step`` SDs)."""
    zero = torch.zeros(dim)
    jac = torch.func.jacfwd(image)(zero).detach()                        # [C, H, W, dim]
    if drop == "auto":
        if centroids is None:
            raise ValueError('drop="auto" needs centroids: the parts\' centroids of a move')
        with torch.no_grad():
            moves = step * torch.cat([torch.eye(dim), -torch.eye(dim), zero[None]])
            at = centroids(moves).double()
        velocity = ((at[:dim] - at[dim:2 * dim]) / (2 * step)).permute(1, 2, 0)  # [P, 2, dim]
        flat = jac.reshape(-1, dim).double()
        on_bg = (labels == background).repeat(jac.shape[0], 1, 1).reshape(-1)
        drop = global_move_count(at[-1].numpy(), velocity.numpy(),
                                 (flat[on_bg].T @ flat[on_bg]).numpy(),
                                 (flat[~on_bg].T @ flat[~on_bg]).numpy())
    basis = image_change_basis(jac.permute(3, 0, 1, 2), rtol, int(drop), whiten)
    with torch.no_grad():
        x = image(zero)
    split = part_split_responses(read, x, basis, labels, parts).detach().numpy()
    return np.sqrt((split ** 2).sum(1)), int(drop)
