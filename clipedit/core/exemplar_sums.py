"""The closed-form edit from sums over exemplar batches: KᵀMK and KᵀMR, accumulated in float64.

Both steps of the closed-form rewrite need only these sums, never all keys at once (DESIGN-NOTES,
"Scaling the solve"): the directions are the top eigenvectors of L⁻¹ (KᵀMK) L⁻ᵀ (C = L Lᵀ) mapped
back by L⁻ᵀ, and Λ solves (Dᵀ KᵀMK D) Λᵀ = Dᵀ KᵀMR. Memory is then flat in the number of exemplars.
While there are fewer keys than key dimensions the weighted keys are kept as well (no more memory
than the d x d sums) and the directions come from their SVD, cheaper than a d x d eigensolve.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from clipedit.core.edits import LayerEdit
from clipedit.core.keys_values import (
    EmptyMaskError,
    Exemplars,
    Spread,
    collect_exemplars,
    collect_exemplars_at,
    collect_kept_keys_at,
)
from clipedit.core.sites import Site
from clipedit.core.subspace import clamp_rank, edit_directions
from clipedit.errors import EditError

log = logging.getLogger(__name__)

EXEMPLAR_BATCH = 32  # exemplar pairs per forward pass when the sums are accumulated


class KeptBatch(Protocol):
    """Images whose site outputs the edit keeps as they are, and the masks of where (e.g. signs at their labels;
    ``clipedit.core.KeepRequest``)."""

    images: torch.Tensor
    mask: torch.Tensor


class ExemplarBatch(Protocol):
    """Anything with attacked/target images and label masks (e.g. ``clipedit.core.EditRequest``)."""

    attacked: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


@dataclass
class ExemplarSums:
    """Weighted sums over the edited locations of all exemplars.

    Attributes:
        keys_gram: KᵀMK, (key_dim, key_dim) float64 on the CPU.
        keys_residuals: KᵀMR with R = V − (K Wᵀ + b), (key_dim, out) float64 on the CPU.
        target_gram: TᵀMT over the target exemplars' keys at the same locations (``keep_targets``; None
            when not accumulated).
        n_keys: edited locations summed over.
        n_exemplars: exemplar pairs summed over.
        weighted_keys: the rows √m_i k_i (float64, CPU) while there are at most ``max_kept_keys``; else None.
        max_kept_keys: how many weighted keys to keep (default: the key dimension).
        exemplar_weight: Σ m_i over the exemplars' edited locations.
        kept_gram: SᵀMS over the keys of images kept as they are (signs, ``keep_reading``; None when not
            accumulated, :meth:`add_kept`).
        kept_weight: Σ m_j over those keys.
        n_kept_keys, n_kept_images: locations and images summed into ``kept_gram``.
    """

    keys_gram: torch.Tensor
    keys_residuals: torch.Tensor
    target_gram: Optional[torch.Tensor] = None
    n_keys: int = 0
    n_exemplars: int = 0
    weighted_keys: Optional[torch.Tensor] = None
    max_kept_keys: int = 0
    exemplar_weight: float = 0.0
    kept_gram: Optional[torch.Tensor] = None
    kept_weight: float = 0.0
    n_kept_keys: int = 0
    n_kept_images: int = 0

    @classmethod
    def zeros(cls, site: Site, with_targets: bool = False) -> ExemplarSums:
        w = site.weight_matrix()
        d, out = w.shape[1], w.shape[0]
        return cls(torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, out, dtype=torch.float64),
                   target_gram=torch.zeros(d, d, dtype=torch.float64) if with_targets else None,
                   weighted_keys=torch.zeros(0, d, dtype=torch.float64), max_kept_keys=d)

    def add(self, site: Site, ex: Exemplars, n_exemplars: int) -> None:
        """Add one batch of collected exemplars."""
        K = ex.keys.to(torch.float64)
        W = site.weight_matrix().detach().to(K.device, torch.float64)
        bias = site.bias
        b = bias.detach().to(K.device, torch.float64) if bias is not None else 0.0
        R = ex.values.to(torch.float64) - (K @ W.T + b)
        m = ex.weights.to(K.device, torch.float64)[:, None]
        KM = K * m
        self.keys_gram += (KM.T @ K).cpu()
        self.keys_residuals += (KM.T @ R).cpu()
        if self.target_gram is not None and ex.target_keys is not None:
            T = ex.target_keys.to(torch.float64)
            self.target_gram += ((T * m).T @ T).cpu()
        self.exemplar_weight += float(m.sum())
        self.n_keys += K.shape[0]
        self.n_exemplars += n_exemplars
        if self.weighted_keys is not None:
            kept = self.n_keys <= self.max_kept_keys
            self.weighted_keys = torch.cat([self.weighted_keys, (K * m.sqrt()).cpu()]) if kept else None

    def add_kept(self, keys: torch.Tensor, weights: torch.Tensor, n_images: int) -> None:
        """Add keys whose outputs stay as they are (their residual is zero: only SᵀMS is needed)."""
        S = keys.to(torch.float64)
        m = weights.to(S.device, torch.float64)[:, None]
        gram = ((S * m).T @ S).cpu()
        self.kept_gram = gram if self.kept_gram is None else self.kept_gram + gram
        self.kept_weight += float(m.sum())
        self.n_kept_keys += S.shape[0]
        self.n_kept_images += n_images


def split_batches(requests: Iterable[ExemplarBatch], batch_size: int = EXEMPLAR_BATCH
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(attacked, target, mask) slices of at most ``batch_size`` pairs from each request in turn."""
    if batch_size < 1:
        raise EditError(f"exemplar batch size must be >= 1, got {batch_size}")
    for req in requests:
        for start in range(0, req.attacked.shape[0], batch_size):
            stop = start + batch_size
            yield req.attacked[start:stop], req.target[start:stop], req.mask[start:stop]


@torch.no_grad()
def accumulate_exemplar_sums(model: nn.Module, site: Site, requests: Iterable[ExemplarBatch],
                             forward: Optional[Callable] = None, threshold: float = 0.0,
                             batch_size: int = EXEMPLAR_BATCH, max_kept_keys: Optional[int] = None,
                             with_targets: bool = False, spread: Optional[Spread] = None,
                             class_token: str = "off") -> ExemplarSums:
    """KᵀMK and KᵀMR over exemplar pairs, ``batch_size`` pairs per forward pass.

    ``requests`` may be a generator (exemplars rendered on the fly): only one batch is held at a time.
    Batches whose labels cover no location of the site add nothing; it is an error if all do.

    Args:
        max_kept_keys: keep the weighted keys while there are at most this many (default: key dimension).
        with_targets: also sum TᵀMT over the target exemplars' keys (what ``keep_targets`` needs).
        spread: the values are a share of the gap at a later block (:class:`~clipedit.core.keys_values.Spread`).
        class_token: the class token's locations too or alone (:func:`~clipedit.core.keys_values.site_locations`).
    """
    def collect(attacked, target, mask):
        return {site.layer: collect_exemplars(model, site, attacked, target, mask, forward, threshold, spread,
                                              class_token)}

    return _accumulate([site], collect, requests, batch_size, max_kept_keys, with_targets)[site.layer]


@torch.no_grad()
def accumulate_exemplar_sums_at(model: nn.Module, sites: Sequence[Site], requests: Iterable[ExemplarBatch],
                                forward: Optional[Callable] = None, threshold: float = 0.0,
                                batch_size: int = EXEMPLAR_BATCH, with_targets: bool = False,
                                class_token: str = "off") -> dict[str, ExemplarSums]:
    """:func:`accumulate_exemplar_sums` for several sites at once (one traced pass of each batch for all of
    them, :func:`~clipedit.core.keys_values.collect_exemplars_at`), keyed by site name."""
    def collect(attacked, target, mask):
        return collect_exemplars_at(model, sites, attacked, target, mask, forward, threshold, class_token)

    return _accumulate(sites, collect, requests, batch_size, None, with_targets)


def _accumulate(sites: Sequence[Site], collect: Callable, requests: Iterable[ExemplarBatch], batch_size: int,
                max_kept_keys: Optional[int], with_targets: bool) -> dict[str, ExemplarSums]:
    all_sums = {site.layer: ExemplarSums.zeros(site, with_targets) for site in sites}
    if max_kept_keys is not None:
        for sums in all_sums.values():
            sums.max_kept_keys = max_kept_keys
    empty: Optional[EmptyMaskError] = None
    n_exemplars = 0
    where = sites[0].layer if len(sites) == 1 else f"{len(sites)} sites"
    batches = tqdm(split_batches(requests, batch_size), desc=f"exemplar passes ({where})", unit="batch",
                   leave=False, disable=None)  # None: shown on terminals only
    for attacked, target, mask in batches:
        n_exemplars += attacked.shape[0]
        try:
            collected = collect(attacked, target, mask)
        except EmptyMaskError as e:
            empty = e
            continue
        for site in sites:
            all_sums[site.layer].add(site, collected[site.layer], attacked.shape[0])
    if n_exemplars == 0:
        raise EditError("no exemplars given")
    for sums in all_sums.values():
        sums.n_exemplars = n_exemplars
        if sums.n_keys == 0:
            raise empty or EditError("the mask covers no location of the site")
    return all_sums


@torch.no_grad()
def accumulate_kept_sums(model: nn.Module, sites: Sequence[Site], all_sums: dict[str, ExemplarSums],
                         kept: Iterable[KeptBatch], forward: Optional[Callable] = None, threshold: float = 0.0,
                         batch_size: int = EXEMPLAR_BATCH, class_token: str = "off") -> None:
    """Add the keys of ``kept`` images (e.g. signs) at their masks to each site's sums (``add_kept``), one
    traced pass per batch for all sites. Batches whose masks cover no location add nothing; it is an error if
    all do.
    """
    if batch_size < 1:
        raise EditError(f"batch size must be >= 1, got {batch_size}")
    empty: Optional[EmptyMaskError] = None
    n_images = 0
    for batch in kept:
        for start in range(0, batch.images.shape[0], batch_size):
            images, masks = batch.images[start:start + batch_size], batch.mask[start:start + batch_size]
            n_images += images.shape[0]
            try:
                collected = collect_kept_keys_at(model, sites, images, masks, forward, threshold, class_token)
            except EmptyMaskError as e:
                empty = e
                continue
            for site in sites:
                keys, weights = collected[site.layer]
                all_sums[site.layer].add_kept(keys, weights, images.shape[0])
    if n_images == 0:
        raise EditError("no images given to keep (signs)")
    for site in sites:
        if all_sums[site.layer].n_kept_keys == 0:
            raise empty or EditError("the masks of the kept images cover no location of the site")


def directions_from_sums(sums: ExemplarSums, C: torch.Tensor, rank: int) -> torch.Tensor:
    """D = L⁻ᵀ U_r with U_r the top-r eigenvectors of L⁻¹ (KᵀMK) L⁻ᵀ: ``subspace.edit_directions`` from sums.

    Returns:
        (key_dim, r) float64, r = min(rank, n_keys, key_dim).
    """
    if sums.weighted_keys is not None:  # few keys: the SVD of the whitened keys costs less than eigh
        return edit_directions(sums.weighted_keys, C, rank)
    try:
        L = torch.linalg.cholesky(C.to(torch.float64))
    except RuntimeError:
        raise EditError("the key statistics are not positive definite; raise cov_reg") from None
    X = torch.linalg.solve_triangular(L, sums.keys_gram, upper=False)          # L⁻¹ A
    G = torch.linalg.solve_triangular(L, X.T, upper=False)                     # L⁻¹ A L⁻ᵀ
    G = (G + G.T) / 2
    r = clamp_rank(rank, sums.n_keys, G.shape[0])
    _, vectors = torch.linalg.eigh(G)                                          # ascending eigenvalues
    top = vectors[:, -r:].flip(1)
    return torch.linalg.solve_triangular(L.T, top, upper=True)


def kept_scale(sums: ExemplarSums, keep_reading: float) -> float:
    """The factor on SᵀMS for ``keep_reading`` β: β x (exemplars' total mask weight / kept keys' total), so
    that β = 1 weighs the kept images as much as the exemplars, however many of each there are."""
    if sums.kept_gram is None or sums.kept_weight <= 0:
        raise EditError("keep_reading needs the keys of the signs to keep, which these sums lack")
    return keep_reading * sums.exemplar_weight / sums.kept_weight


def solve_closed_form_from_sums(sums: ExemplarSums, D: torch.Tensor, keep_targets: float = 0.0,
                                keep_reading: float = 0.0) -> torch.Tensor:
    """Λ from the normal equations (Dᵀ (KᵀMK + β TᵀMT + β' s SᵀMS) D) Λᵀ = Dᵀ KᵀMR, i.e. the least squares
    min Σ_i m_i ‖(W + Λ Dᵀ) k_i + b − v_i‖² + β Σ_i m_i ‖Λ Dᵀ t_i‖² + β' s Σ_j m_j ‖Λ Dᵀ s_j‖²
    (β = ``keep_targets``: the target keys T fitted to their current outputs; β' = ``keep_reading``: the
    kept keys S, e.g. signs, fitted to theirs, s = :func:`kept_scale`'s normalisation). One keep term:
    each weight adds its gram to it; at 0 a term is left out entirely.

    Returns:
        Λ, (out, r) float64.
    """
    D = D.to(torch.float64)
    gram_keys = sums.keys_gram
    if keep_targets > 0:
        if sums.target_gram is None:
            raise EditError("keep_targets needs the target keys' sums, which these sums lack")
        gram_keys = gram_keys + keep_targets * sums.target_gram
    if keep_reading > 0:
        gram_keys = gram_keys + kept_scale(sums, keep_reading) * sums.kept_gram
    gram = D.T @ gram_keys @ D
    rhs = D.T @ sums.keys_residuals
    lam_t = torch.linalg.lstsq(gram, rhs, driver="gelsd").solution
    return lam_t.T.contiguous()


def closed_form_edit(site: Site, sums: ExemplarSums, C: torch.Tensor, rank: int, keep_targets: float = 0.0,
                     meta: Optional[dict] = None, directions: Optional[torch.Tensor] = None,
                     keep_reading: float = 0.0) -> LayerEdit:
    """The closed-form edit of ``site`` from exemplar sums: the one solver of every closed-form path (a
    defense, each site of a multi-site edit, ``'*'``, every candidate of the sweep, the bench).

    Args:
        C: the regularised key statistics of the site.
        rank: r of the update (clamped to the exemplar keys).
        keep_targets: β of :func:`solve_closed_form_from_sums`.
        meta: stored with the edit (``n_keys`` and ``n_exemplars`` are added; with ``keep_reading``, ``reading``:
            β, the signs and keys kept and the scale on their gram).
        directions: D computed already (e.g. the first r of a larger rank's, which are the top-r
            directions); default: :func:`directions_from_sums`.
    """
    D = directions if directions is not None else directions_from_sums(sums, C, rank)
    lam = solve_closed_form_from_sums(sums, D, keep_targets, keep_reading)
    extra = {"reading": {"keep_reading": keep_reading, "n_signs": sums.n_kept_images, "n_keys": sums.n_kept_keys,
                         "scale": kept_scale(sums, keep_reading)}} if keep_reading > 0 else {}
    return LayerEdit.create(site.layer, lam, D, site.weight,
                            {**(meta or {}), "n_keys": sums.n_keys, "n_exemplars": sums.n_exemplars, **extra})
