"""The k cross-fitting copies of a gradient-trained detector trained as one batched model
(`fmb.detect.base.stack_folds`, `FoldBatches`): the stacked model computes each copy exactly, its
flows learn what independently trained ones learn, each fold's objects stay out of its own model,
and training stops on the held-out loss."""

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from fmb.detect.base import FoldBatches, stack_folds, unstack_folds
from fmb.detect.density import CrossFitted, fold_of
from fmb.detect.methods.flow import FlowDetector
from fmb.detect.mismatch import ContrastiveMismatch, _Critic

FLOW = dict(hidden=32, batch_size=256, min_steps=300, max_steps=300, lr=3e-3)


def test_a_stacked_model_computes_every_fold_exactly_and_unstacks_into_them():
    flows = [FlowDetector(hidden=16, transforms=3)._new_flow(5, seed) for seed in range(3)]
    x = torch.randn(3, 40, 5)
    stacked = stack_folds(flows)
    with torch.no_grad():
        torch.testing.assert_close(stacked().log_prob(x), torch.stack([f().log_prob(xf) for f, xf in zip(flows, x)]))

    critics = [_Critic(4, 3, 16, 8) for _ in range(3)]
    image, spectrum = torch.randn(3, 50, 4), torch.randn(3, 50, 3)
    targets = torch.arange(50)
    by_hand = []
    for critic, i, s in zip(critics, image, spectrum):
        logits = critic.embed_image(i) @ critic.embed_spectrum(s).T * critic.log_temperature.exp()
        by_hand.append((F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2)
    torch.testing.assert_close(stack_folds(critics).loss(image, spectrum), torch.stack(by_hand))

    with torch.no_grad():
        for p in stacked.parameters():
            p.add_(torch.arange(3.0).view(-1, *[1] * (p.dim() - 1)))  # fold f shifted by f
    unstack_folds(stacked, flows)
    assert all(torch.equal(flows[f].get_parameter(name), p[f]) for name, p in stacked.named_parameters() for f in range(3))


def test_fold_batches_draw_each_fold_from_its_own_training_objects_only():
    folds = np.arange(300) % 3
    batches = FoldBatches(folds[None, :] != np.arange(3)[:, None], torch.Generator().manual_seed(0))
    drawn = torch.cat([batches.next(64) for _ in range(20)], dim=1)  # several epochs
    for fold in range(3):
        assert not np.isin(drawn[fold].numpy(), np.flatnonzero(folds == fold)).any()
        assert not np.isin(drawn[fold].numpy(), batches.held[fold].numpy()).any()  # held-out stays out
        assert np.isin(batches.held[fold].numpy(), np.flatnonzero(folds != fold)).all()
    assert len(set(batches.next(batches.n_train)[0].tolist())) == batches.n_train  # an epoch without repeats


def test_batched_flows_learn_what_independently_trained_flows_learn():
    """A correlated Gaussian: each fold's flow, trained in the batch or alone on the same objects,
    reaches the true entropy on fresh objects within a few hundredths of a nat."""
    rng = np.random.default_rng(0)
    d = 4
    mixing = rng.normal(size=(d, d))
    covariance = mixing @ mixing.T
    x = (rng.normal(size=(2000, d)) @ mixing.T).astype(np.float32)
    fresh = (rng.normal(size=(5000, d)) @ mixing.T).astype(np.float32)
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * covariance)[1]
    ids = np.arange(len(x))
    small = FLOW | dict(hidden=16, transforms=3, batch_size=128)
    batched = CrossFitted(partial(FlowDetector, **small), n_folds=3, seed=0).fit(x, ids)
    alone = [FlowDetector(**small, seed=fold).fit(x[batched.fit_folds != fold]) for fold in range(3)]
    nll_batched = np.array([det.score(fresh).mean() for det in batched.detectors])
    nll_alone = np.array([det.score(fresh).mean() for det in alone])
    assert np.abs(nll_batched - entropy).max() < 0.1, (nll_batched, entropy)
    assert np.abs(nll_batched - nll_alone).max() < 0.05, (nll_batched, nll_alone)


def _fold0_apart(n=1500, d=4, seed=0):
    """Ids, their folds (3, as CrossFitted draws them), and a flag for fold 0's objects."""
    ids = np.arange(50_000, 50_000 + n)
    folds = fold_of(ids, 3, seed)
    return ids, folds == 0, np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_each_fold_of_the_batched_flow_never_learns_its_own_objects():
    """Fold 0's objects form a cluster of their own: the flow of fold 0 (which must not see them)
    finds them far less likely than the flow of fold 1 (which trained on them). Drawing batches
    from every object instead of each fold's own would make both flows learn the cluster."""
    ids, own, x = _fold0_apart()
    x[own, 0] += 8.0
    crossfit = CrossFitted(partial(FlowDetector, **FLOW), n_folds=3, seed=0).fit(x, ids)
    by_own_fold = crossfit.score(x, ids)[own]
    by_other_fold = crossfit.detectors[1].score(x[own])
    assert np.median(by_own_fold) > np.median(by_other_fold) + 10, (np.median(by_own_fold), np.median(by_other_fold))


def test_each_fold_of_the_batched_critic_never_learns_its_own_pairs():
    """Fold 0's pairs follow another relation (spectrum = -image, elsewhere spectrum = image): the
    critic of fold 0 calls them mismatched, the critic of fold 1 (which trained on them) does not."""
    ids, own, image = _fold0_apart(n=2000)
    spectrum = np.where(own[:, None], -image, image) + 0.05 * np.random.default_rng(1).normal(size=image.shape)
    pair = np.hstack([image, spectrum]).astype(np.float32)
    crossfit = CrossFitted(partial(ContrastiveMismatch, 4, hidden=32, dim=8, max_steps=400), n_folds=3,
                           seed=0).fit(pair, ids)
    by_own_fold = crossfit.score(pair, ids)
    by_other_fold = crossfit.detectors[1].score(pair[own])
    assert np.median(by_own_fold[own]) > np.median(by_other_fold) + 2, (np.median(by_own_fold[own]),
                                                                        np.median(by_other_fold))
    assert np.median(by_own_fold[own]) > np.quantile(by_own_fold[~own], 0.9)


def test_batched_flows_stop_on_their_held_out_loss():
    """Few objects and a long budget: each fold's held-out NLL stops improving long before it."""
    ids, _, x = _fold0_apart(n=150)
    crossfit = CrossFitted(partial(FlowDetector, hidden=64, batch_size=64, min_steps=3000, max_steps=3000, lr=3e-3,
                                   check_every=20, patience=3), n_folds=3, seed=0).fit(x, ids)
    assert all(det.steps_trained_ < 1000 for det in crossfit.detectors), [d.steps_trained_ for d in crossfit.detectors]
