"""EM re-estimation of a sample's class priors from calibrated posteriors (Saerens, Latinne & Decaestecker 2002,
Neural Computation 14:21), batched over bootstrap resamples. Re-exported by :mod:`phenotyping.analysis.differential`.
"""

from __future__ import annotations

import numpy as np


class EMNotConverged(RuntimeError):
    """EM reached its iteration limit before the priors settled."""


#: EM also stops when the log-likelihood is provably within this of its maximum (mean per cell): by concavity
#: ``max f - f(prior) <= max_k g_k - 1`` with ``g`` the gradient. 1e-10 per cell is ~1e-7 in a 1,000-cell sample,
#: far below the 1.92 of a 95 % likelihood interval, so stopping there cannot move a reported value. It ends the
#: slow approach of a prior to 0 (a class absent from the sample), where the change per iteration stays tiny.
EM_LOGLIK_GAP = 1e-10


def em_prior_shift(
    probabilities: np.ndarray,
    training_prior: np.ndarray,
    *,
    tol: float = 1e-8,
    max_iter: int = 20000,
    init: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    strict: bool = True,
) -> tuple[np.ndarray, int]:
    """EM estimate of a sample's class priors from calibrated posteriors (Saerens et al. 2002, eqs. 2.9–2.10).

    Args:
        probabilities: ``(N, K)`` calibrated posteriors under the training prior; each row finite, >= 0, not all 0.
        training_prior: ``(K,)`` class frequencies of the training set the model was calibrated for.
        tol: stop when the largest change of any prior is below this (or the likelihood gap below
            :data:`EM_LOGLIK_GAP`).
        max_iter: iteration limit; reaching it raises (a silent non-converged estimate would be a wrong result).
        init: starting prior (default: ``training_prior``). The log-likelihood is concave in the prior, so the
            start only changes the number of iterations.
        weights: optional ``(N,)`` non-negative cell weights (a bootstrap resample as counts), or ``(B, N)`` to run
            ``B`` weighted problems at once (then ``prior`` is ``(B, K)``). A cell of weight 0 takes no part (its
            adjusted posterior is never formed, so a prior that reaches 0 cannot give 0/0).
        strict: with False, problems still unsettled at ``max_iter`` come back as NaN rows instead of raising.

    Returns:
        ``(prior, iterations)`` with ``prior`` of shape ``(K,)`` (or ``(B, K)``) summing to 1.
    """
    p = np.asarray(probabilities, dtype=float)
    pi = np.asarray(training_prior, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    n, k = p.shape
    if pi.shape != (k,):
        raise ValueError(f"training prior has shape {pi.shape}, expected ({k},)")
    if (pi <= 0).any():
        raise ValueError(f"training prior must be positive for every class, got {pi.tolist()}")
    bad = np.flatnonzero(~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (p.sum(axis=1) <= 0))
    if bad.size:
        raise ValueError(f"probability rows {bad[:10].tolist()} are not finite, non-negative and summing above 0 "
                         f"(first: {p[bad[0]].tolist()}); EM needs each cell's posterior over the model's classes")
    pi = pi / pi.sum()
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=float)
    single = w.ndim == 1 or weights is None
    w = np.atleast_2d(w)  # (B, N)
    if w.shape[1] != n:
        raise ValueError(f"weights have shape {w.shape}, expected (N,) or (B, N) with N={n}")
    start = pi if init is None else np.asarray(init, dtype=float) / np.sum(init)
    prior = np.tile(start, (w.shape[0], 1))  # (B, K)
    ratio = p / pi  # (N, K): posterior / training prior
    w_total = w.sum(axis=1, keepdims=True)  # (B, 1)
    active = np.ones(w.shape[0], dtype=bool)  # problems still iterating
    for it in range(1, max_iter + 1):
        norm = (ratio @ prior[active].T).T  # (b, N): denominator of the adjusted posteriors
        wa = w[active]
        scaled = np.divide(wa, norm, out=np.zeros_like(wa), where=wa > 0)  # (b, N)
        grad = scaled @ ratio / w_total[active]  # (b, K): gradient of the mean log-likelihood
        new = prior[active] * grad  # weighted mean adjusted posterior
        done = (np.max(np.abs(new - prior[active]), axis=1) < tol) | (grad.max(axis=1) - 1 < EM_LOGLIK_GAP)
        prior[active] = new
        active[np.flatnonzero(active)[done]] = False
        if not active.any():
            out = prior / prior.sum(axis=1, keepdims=True)
            return (out[0] if single else out), it
    if strict:
        raise EMNotConverged(f"EM prior estimate did not converge in {max_iter} iterations (tol={tol})")
    prior[active] = np.nan
    out = prior / prior.sum(axis=1, keepdims=True)
    return (out[0] if single else out), max_iter
