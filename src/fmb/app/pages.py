"""Pages of a ranked list and the discovery curve.

A page of a re-ranked list (`page_positions`) ends with its random slice, drawn from the list below
the page, so the labelling loop does not only confirm what it has learnt.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmb.errors import FmbError

DEFAULT_PAGE_SIZE = 10
#: The share of every page drawn at random from what is not shown yet, so the loop does not only
#: confirm what it has learnt.
DEFAULT_RANDOM_FRACTION = 0.1


def slice_sizes(page_size: int = DEFAULT_PAGE_SIZE, fraction: float = DEFAULT_RANDOM_FRACTION) -> tuple[int, int]:
    """(ranked, random) objects on a page: round(fraction * page_size) random ones, at least 1 when
    fraction > 0 and at most page_size - 1 (every page moves down the ranking)."""
    if page_size < 1 or not 0 <= fraction <= 1:
        raise FmbError(f"pages need a size of at least 1 and a random fraction in 0..1, got {page_size}, {fraction}")
    drawn = min(max(1, round(fraction * page_size)), page_size - 1) if fraction > 0 else 0
    return page_size - drawn, drawn


def page_count(count: int, page_size: int = DEFAULT_PAGE_SIZE, fraction: float = DEFAULT_RANDOM_FRACTION) -> int:
    """How many pages a ranked list of `count` objects makes (at least 1)."""
    return max(1, -(-count // slice_sizes(page_size, fraction)[0]))


def page_positions(count: int, page: int, page_size: int = DEFAULT_PAGE_SIZE,
                   fraction: float = DEFAULT_RANDOM_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Page `page` of a ranked list of `count` objects, as positions in the list, and which of them
    were drawn at random: the page's share of the ranking in order (`slice_sizes`), then its random
    slice, drawn without replacement from the rest of the list below the page by a generator keyed by
    (seed, page). A page depends on nothing but its number: it costs O(page_size) whatever the list's
    length. An object drawn at random on one page is shown again at its own rank further down."""
    ranked, drawn = slice_sizes(page_size, fraction)
    start, end = min(page * ranked, count), min((page + 1) * ranked, count)
    below = count - end
    picked = np.random.default_rng([seed, page]).choice(below, size=min(drawn, below), replace=False) if below else []
    positions = np.concatenate([np.arange(start, end), end + np.sort(np.asarray(picked, dtype=np.int64))])
    return positions.astype(np.int64), np.arange(len(positions)) >= end - start


def discovery_curve(shown_ids_in_order, interest_by_id, threshold: int = 4) -> np.ndarray:
    """How many of the first 1, 2, ... N objects shown have an interest of at least `threshold`
    (objects without a label count as not interesting)."""
    interest = pd.Series(interest_by_id, dtype="float64")
    values = interest.reindex(pd.Index(list(shown_ids_in_order))).to_numpy()
    return np.cumsum(np.nan_to_num(values, nan=-np.inf) >= threshold)
