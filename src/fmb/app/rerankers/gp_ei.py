"""``gp_ei``: Protege's Gaussian process (Walmsley et al. 2021 via Astronomaly) ranked by expected
improvement over the best interest seen, with its trade-off 0.5; on a PCA of the embedding, kernel
constant x RBF + white noise, the RBF length starting at the median distance. Its prior mean is the
anomaly percentile times one interest point, so that with few labels the unexplored objects come
in anomaly order."""

from __future__ import annotations

import warnings

import numpy as np

from fmb.app.graph import principal_components
from fmb.app.rerankers.base import Reranker
class GaussianProcessEI(Reranker):
    """Gaussian process on the labels, ranked by expected improvement (see the module doc)."""

    summary = "a Gaussian process on the labels, by expected improvement: looks where interest is uncertain"

    def __init__(self, components: int = 16, tradeoff: float = 0.5, prior: float = 1.0, seed: int = 0):
        self.components, self.tradeoff, self.prior, self.seed = components, tradeoff, prior, seed

    def _scores(self, X, anomaly, prior, labelled, interest):
        from scipy.stats import norm
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        Z = principal_components(X, self.components, self.seed)
        length = _median_distance(Z, self.seed)
        # interest is an integer: its rounding alone has variance 1/12, so the label noise is never below that
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * RBF(length, (length / 100, length * 100))
                  + WhiteKernel(1.0, (1 / 12, 1e1)))
        mean = self.prior * prior  # interest points: the anomaly percentile times `prior`
        process = GaussianProcessRegressor(kernel, normalize_y=False, random_state=self.seed)
        with warnings.catch_warnings():  # a handful of labels often puts a hyper-parameter on its bound
            warnings.simplefilter("ignore", ConvergenceWarning)
            process.fit(Z[labelled], interest - mean[labelled])
        residual, std = process.predict(Z, return_std=True)
        gain = mean + residual - interest.max() - self.tradeoff
        std = np.maximum(std, 1e-12)
        improvement = gain * norm.cdf(gain / std) + std * norm.pdf(gain / std)
        # where the improvement underflows to 0 the prior still orders objects (it is below 1e-12)
        return improvement + 1e-12 * prior



def _median_distance(Z: np.ndarray, seed: int, sample: int = 1000) -> float:
    """The median distance between objects (of a seeded sample): the RBF length scale's usual start."""
    from scipy.spatial.distance import pdist

    rows = np.random.default_rng(seed).permutation(len(Z))[:sample]
    distances = pdist(Z[rows]) if len(rows) > 1 else np.ones(1)
    return float(np.median(distances)) or 1.0
