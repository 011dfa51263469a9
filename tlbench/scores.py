"""Transferability scores: how well a frozen source model suits a target task, without training.

LogME and H-score read penultimate-layer features (N x D); LEEP and NCE read the source model's
class probabilities (N x Z) for the target images. Higher is better for all four. Agreement with
the authors' code is kept by tests/test_scores.py against tests/data/score_reference.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

from tlbench import registry
from tlbench.errors import TlbenchError

SCORES_VERSION = 2
"""Version of the score definitions, logged as the run tag `scores.version`; scores of different
versions are not compared. 1 = H-score on the Ledoit-Wolf covariance without the (1 - a) scaling
(unbounded); 2 = H-score is Ibrahim et al.'s H_alpha (bounded by K - 1). LogME, LEEP, NCE unchanged.
"""

EPS = np.finfo(np.float64).eps
# Typically tens to hundreds of iterations. A class with (almost) no linear signal, whose optimum
# is alpha -> infinity, converges slowly and may stop at the cap, within 1e-7 of its limit.
MAX_ITERATIONS = 1000
EVIDENCE_TOLERANCE = 1e-12  # per-sample log evidence change at which the fixed point stops


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): log evidence per sample of a Bayesian linear model on the
    features for each one-hot class target, maximised over (alpha, beta), averaged over classes."""
    f = _features(features)
    targets = _one_hot(_labels(labels, len(f)))
    sigma, coords = _spectrum(f, targets)
    rest = np.maximum(np.sum(targets**2, axis=0) - np.sum(coords**2, axis=0), 0.0)
    return float(np.mean(_max_log_evidence(sigma, coords**2, rest, f.shape)))


def _spectrum(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero eigenvalues of F^T F (squared singular values of F) and each target's coordinates
    on the matching left singular vectors; eigendecomposes the smaller Gram matrix of F."""
    n, d = f.shape
    wide = n <= d
    sigma, vectors = np.linalg.eigh(f @ f.T if wide else f.T @ f)
    keep = sigma > sigma[-1] * max(n, d) * EPS
    if not keep.any():
        raise TlbenchError("features are all zero; check the feature extraction")
    sigma, vectors = sigma[keep], vectors[:, keep]
    if wide:
        return sigma, vectors.T @ targets
    return sigma, (vectors.T @ (f.T @ targets)) / np.sqrt(sigma)[:, None]


def _max_log_evidence(sigma: np.ndarray, coords2: np.ndarray, rest: np.ndarray,
                      shape: tuple[int, int]) -> np.ndarray:
    """Per-class log evidence per sample, maximised by the paper's fixed-point updates.

    sigma (k,): nonzero eigenvalues of F^T F; coords2 (k, K): squared coordinates of each target on
    the left singular vectors; rest (K,): squared norm of each target outside the span of F.
    """
    n, d = shape
    k = len(sigma)
    # Beyond these alpha / beta the evidence equals its limit to machine precision (a class with
    # no linear signal sends alpha to infinity).
    lowest, highest = sigma.min() * EPS, sigma.max() / EPS
    sigma = sigma[:, None]
    alpha = beta = np.ones(coords2.shape[1])
    previous = np.full_like(alpha, -np.inf)
    for _ in range(MAX_ITERATIONS):
        ratio = alpha / beta
        lift, shrink = sigma / (sigma + ratio), ratio / (sigma + ratio)
        # m = (F^T F + ratio I)^-1 F^T y, so m^T m and ||y - F m||^2 in the singular basis of F.
        m_norm2 = np.sum(lift**2 * coords2 / sigma, axis=0)
        residual = np.sum(shrink**2 * coords2, axis=0) + rest
        # log|A|, A = alpha I + beta F^T F: the d - k zero eigenvalues of F^T F give alpha each.
        log_det_a = np.sum(np.log(alpha + beta * sigma), axis=0) + (d - k) * np.log(alpha)
        evidence = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi)
                    - beta * residual - alpha * m_norm2 - log_det_a) / (2 * n)
        active = np.abs(evidence - previous) > EVIDENCE_TOLERANCE
        if not active.any():
            break
        previous = evidence
        gamma = np.sum(lift, axis=0)
        with np.errstate(divide="ignore"):  # m = 0: the target has no component in F's span
            new_alpha = gamma / m_norm2
        new_beta = (n - gamma) / residual
        beta = np.where(active, new_beta, beta)
        alpha = np.where(active, np.clip(new_alpha, beta * lowest, beta * highest), alpha)
    return evidence


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: float | None = None) -> float:
    """H_alpha (Ibrahim et al., 2022): the H-score (Bao et al., 2019) tr(cov_a(f)^-1 (1 - a)
    cov(E[f|y])) on the shrunk covariance cov_a = (1 - a) cov + a mu I, mu = tr(cov) / D; a is
    Ledoit-Wolf's when None (a = 0 is Bao et al.'s). Covariances divide by N: it lies in [0, K - 1].
    """
    f = _features(features)
    codes = _labels(labels, len(f))
    centred = f - f.mean(axis=0)
    cov = centred.T @ centred / len(f)
    mu = np.trace(cov) / f.shape[1]
    if mu == 0:
        raise TlbenchError("features are constant across samples; check the feature extraction")
    a = _ledoit_wolf(centred, cov) if shrinkage is None else _check_shrinkage(shrinkage)
    one_hot = _one_hot(codes)
    counts = one_hot.sum(axis=0)
    # cov(E[f|y]) = R^T R with R's rows sqrt(N_k / N) (class mean - mean).
    root = (one_hot.T @ centred) / np.sqrt(counts * len(f))[:, None]
    regularised = (1 - a) * cov + a * mu * np.eye(f.shape[1])
    try:
        factor = scipy.linalg.cho_factor(regularised)
    except np.linalg.LinAlgError:
        raise TlbenchError(f"feature covariance is singular at shrinkage={a}; leave shrinkage=None "
                           "(Ledoit-Wolf) or pass a value in (0, 1]") from None
    return float((1 - a) * np.sum(root.T * scipy.linalg.cho_solve(factor, root.T)))


def _ledoit_wolf(centred: np.ndarray, cov: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity towards mu I (sklearn.covariance.ledoit_wolf_shrinkage)."""
    n, d = centred.shape
    mu = np.trace(cov) / d
    scatter = (np.sum(np.sum(centred**2, axis=1) ** 2) / n - np.sum(cov**2)) / (n * d)
    distance = np.sum((cov - mu * np.eye(d)) ** 2) / d
    return min(scatter, distance) / distance if distance > 0 else 0.0


def _check_shrinkage(shrinkage: float) -> float:
    """The shrinkage intensity, which must lie in [0, 1]."""
    if not 0 <= shrinkage <= 1:
        raise TlbenchError(f"shrinkage={shrinkage} is outside [0, 1]; pass a value in [0, 1] or "
                           "None for Ledoit-Wolf")
    return float(shrinkage)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al., ICML 2020): mean log-likelihood of the labels under the empirical
    predictor sum_z P(y|z) theta(x)_z, with P(y|z) from the joint P(y, z) = mean theta_z [y]."""
    theta = _probabilities(source_probs)
    one_hot = _one_hot(_labels(labels, len(theta)))
    joint = one_hot.T @ theta / len(theta)
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    return float(np.mean(np.log(np.sum(theta * (one_hot @ conditional), axis=1))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al., ICCV 2019): -H(Y|Z), Z the source model's hard predictions."""
    targets = _labels(labels, np.size(source_labels))
    source = _labels(source_labels, len(targets), "source_labels", min_classes=1)
    joint = _one_hot(source).T @ _one_hot(targets) / len(targets)
    conditional = joint / joint.sum(axis=1, keepdims=True)
    seen = joint > 0
    return float(np.sum(joint[seen] * np.log(conditional[seen])))


def _nce_of_probs(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE of the source model's most probable class."""
    return nce(_probabilities(source_probs).argmax(axis=1), labels)


@dataclass(frozen=True)
class Score:
    """A transferability score and the source-model output it reads."""

    fn: Callable[[np.ndarray, np.ndarray], float]
    reads: Literal["features", "source_probs"]


registry.SCORES.register("logme", Score(logme, "features"))
registry.SCORES.register("hscore", Score(hscore, "features"))
registry.SCORES.register("leep", Score(leep, "source_probs"))
registry.SCORES.register("nce", Score(_nce_of_probs, "source_probs"))


def score_names() -> list[str]:
    """Every registered score, in registration order (as rank and the report list them)."""
    return registry.SCORES.in_order()


def names_reading(reads: str) -> list[str]:
    """The registered scores that read this input ("features" or "source_probs")."""
    return [name for name in score_names() if registry.SCORES[name].reads == reads]


def transferability(labels: np.ndarray, features: np.ndarray | None = None,
                    source_probs: np.ndarray | None = None) -> dict[str, float]:
    """Every registered score whose input is given, by name."""
    inputs = {"features": features, "source_probs": source_probs}
    if features is None and source_probs is None:
        raise TlbenchError("no input to score; pass features and/or source_probs")
    chosen = {name: registry.SCORES[name] for name in score_names()}
    return {name: score.fn(inputs[score.reads], labels) for name, score in chosen.items()
            if inputs[score.reads] is not None}


def _features(features: np.ndarray) -> np.ndarray:
    """The features as a finite float64 N x D array."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise TlbenchError(f"features has shape {f.shape}; pass a 2-D array of N >= 2 samples x D "
                           "features")
    if not np.isfinite(f).all():
        raise TlbenchError("features contain NaN or inf; check the feature extraction")
    return f


def _probabilities(source_probs: np.ndarray) -> np.ndarray:
    """Source class probabilities as a float64 N x Z array whose rows sum to 1."""
    p = np.asarray(source_probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < 2:
        raise TlbenchError(f"source_probs has shape {p.shape}; pass a 2-D array of N >= 2 samples "
                           "x Z source-class probabilities")
    sums = p.sum(axis=1)
    bad = ~np.isfinite(sums) | (np.abs(sums - 1) > 1e-3) | (p < 0).any(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise TlbenchError(f"source_probs row {row} is not a probability vector (sums to "
                           f"{sums[row]:.4g}); pass softmax probabilities, not logits")
    return p


def _labels(labels: np.ndarray, n: int, name: str = "labels", min_classes: int = 2) -> np.ndarray:
    """Integer labels for N samples recoded as class indices 0..K-1, K >= min_classes."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise TlbenchError(f"{name} has shape {y.shape}; pass one label per sample, shape ({n},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise TlbenchError(f"{name} has dtype {y.dtype}; pass integer class indices")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < min_classes:
        raise TlbenchError(f"{name} hold {len(classes)} class; scoring needs at least "
                           f"{min_classes} distinct classes")
    return codes


def _one_hot(codes: np.ndarray) -> np.ndarray:
    """N x K float indicator matrix of class indices 0..K-1."""
    return (codes[:, None] == np.arange(codes.max() + 1)).astype(np.float64)
