"""Acquisition heuristics on probability vectors whose scores are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import acquisition as acq
from core.diversity import kcenter_greedy, select_diverse

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_entropy_hand_values():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert acq.entropy(p) == pytest.approx([LN2, 0.0])
    four = np.array([[0.25] * 4, [0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # uniform over 4: ln 4; half/half: ln 2; one-hot: 0 (0 log 0 = 0, no NaN)
    assert acq.entropy(four) == pytest.approx([LN4, LN2, 0.0])
    assert acq.normalised_entropy(four) == pytest.approx([1.0, 0.5, 0.0])


def test_margin_and_least_confidence_hand_values():
    p = np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    # margin uncertainty 1 - (p1 - p2): 1 - 0.3, 1 - 0, 1 - 1
    assert acq.margin(p) == pytest.approx([0.7, 1.0, 0.0])
    # least confidence (1 - pmax) * K/(K-1) with K=3: 0.4*1.5, 0.6*1.5, 0
    assert acq.least_confidence(p) == pytest.approx([0.6, 0.9, 0.0])
    # the three measures disagree on order in general; here all agree row 1 > row 0 > row 2
    for fn in (acq.normalised_entropy, acq.margin, acq.least_confidence):
        s = fn(p)
        assert s[1] > s[0] > s[2]


def test_margin_differs_from_entropy():
    # A: two classes tied, rest empty. B: spread thinly. Margin says A; entropy says B.
    a = [0.45, 0.45, 0.10, 0.0]
    b = [0.40, 0.20, 0.20, 0.20]
    p = np.array([a, b])
    assert acq.margin(p)[0] > acq.margin(p)[1]
    assert acq.entropy(p)[1] > acq.entropy(p)[0]


def test_bald_hand_values():
    # Two passes, each certain, disagreeing: H(mean)=ln 2, mean H=0 -> I = ln 2 (-> 0.5 of ln 4).
    disagree = np.array([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]]])
    assert acq.bald(disagree) == pytest.approx([LN2 / LN4])
    # Two identical unsure passes: all uncertainty is noise, I = 0.
    agree = np.array([[[0.25] * 4], [[0.25] * 4]])
    assert acq.bald(agree) == pytest.approx([0.0], abs=1e-12)
    # Three passes one-hot on three different classes of K=3: I = ln 3 / ln 3 = 1
    three = np.eye(3)[:, None, :]
    assert acq.bald(three) == pytest.approx([1.0])
    # Mixed: passes [0.5,0.5] and [1,0]: H(mean=[.75,.25]) - (ln2 + 0)/2
    mixed = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) - LN2 / 2
    assert acq.bald(mixed) == pytest.approx([expected / LN2])


def test_combine_mean_max_and_weights():
    per = {"color": np.array([0.2, 0.8]), "orientation": np.array([0.6, 0.1])}
    assert acq.combine_mean(per) == pytest.approx([0.4, 0.45])
    assert acq.combine_max(per) == pytest.approx([0.6, 0.8])
    # "focus on orientation": weight 2 -> (0.2 + 2*0.6)/3, (0.8 + 2*0.1)/3; order flips
    w = {"orientation": 2.0}
    assert acq.combine_mean(per, w) == pytest.approx([1.4 / 3, 1.0 / 3])
    # max with weights rescaled to largest 1: color*0.5 vs orientation*1
    assert acq.combine_max(per, w) == pytest.approx([0.6, 0.4])
    # weight 0 ignores the head entirely
    assert acq.combine_mean(per, {"color": 0.0}) == pytest.approx([0.6, 0.1])
    with pytest.raises(ValueError, match="unknown attributes"):
        acq.combine_mean(per, {"colour": 1.0})
    with pytest.raises(ValueError, match="positive"):
        acq.combine_mean(per, {"color": 0.0, "orientation": 0.0})


def test_parse_weights():
    assert acq.parse_weights("color=1,type=1,orientation=2") == {
        "color": 1.0, "type": 1.0, "orientation": 2.0}
    assert acq.parse_weights("") is None
    for bad in ("color", "color=x", "color=-1"):
        with pytest.raises(ValueError):
            acq.parse_weights(bad)


def test_class_rarity_and_balance():
    # counts 3, 1, 0 over K=3 classes, total 4: (4+3)/(3*(n+1)) = 7/12, 7/6, 7/3
    r = acq.class_rarity({"car": 3, "bus": 1}, ["car", "bus", "tram"])
    assert r == pytest.approx([7 / 12, 7 / 6, 7 / 3])
    assert acq.class_rarity({"a": 5, "b": 5}, ["a", "b"]) == pytest.approx([1.0, 1.0])
    probs = {"type": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])}
    er = acq.expected_rarity(probs, {"type": r})
    assert er == pytest.approx([7 / 12, 7 / 3, 0.5 * 7 / 12 + 0.5 * 7 / 6])
    # equal uncertainty: the predicted-rare image moves to the top
    balanced = acq.apply_balance(np.array([0.5, 0.5, 0.5]), er)
    assert int(np.argmax(balanced)) == 1
    assert acq.apply_balance(np.array([0.5, 0.2]), np.array([1.0, 9.0]), 0.0) == pytest.approx([0.5, 0.2])


def test_strategy_scores_through_the_one_scoring_path():
    probs = {"color": np.array([[0.5, 0.5], [0.9, 0.1]]),
             "type": np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])}
    per = acq.uncertainty_per_head(probs)               # what pool scoring stores
    assert set(per) == {"entropy", "margin", "least_confidence"}   # no BALD without MC samples

    def score(name, table=per):
        return acq.strategy_scores(acq.get_strategy(name), table)

    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / LN2
    assert score("entropy") == pytest.approx([(1.0 + 0.0) / 2, (h09 + 1.0) / 2])
    assert score("entropy-max") == pytest.approx([1.0, 1.0])
    assert score("margin") == pytest.approx([(1.0 + 0.0) / 2, (0.2 + 1.0) / 2])
    with pytest.raises(ValueError, match="MC-dropout"):
        score("bald")                                     # missing, never zeros
    with pytest.raises(ValueError, match="unknown strategy"):
        acq.get_strategy("nope")
    with pytest.raises(ValueError, match="does not rank"):
        score("typiclust")
    mc = {"color": np.array([[[1.0, 0.0]], [[0.0, 1.0]]])}
    with_mc = acq.uncertainty_per_head({"color": np.array([[0.5, 0.5]])}, mc)
    assert score("bald", with_mc) == pytest.approx([1.0])
    # kinds: which strategies need a trained model
    assert {n for n, s in acq.STRATEGIES.items() if not s.needs_model} == {
        "auto", "random", "typiclust", "probcover"}


def test_kcenter_picks_spread_out_points():
    rng = np.random.default_rng(0)
    # three tight clusters far apart, 20 near-duplicates each
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.01, (20, 2)) for c in centres])
    picks = kcenter_greedy(x, 3, first=0)
    assert sorted(p // 20 for p in picks) == [0, 1, 2]
    # with existing centres covering cluster 0 and 1, the first pick is in cluster 2
    assert kcenter_greedy(x, 1, existing=centres[:2])[0] // 20 == 2


@pytest.mark.parametrize("method", ["kcenter", "kmeans"])
def test_select_diverse_avoids_near_duplicates(method):
    rng = np.random.default_rng(1)
    # 30 near-identical frames with the highest scores, plus 10 scattered, slightly less sure
    dup = np.array([5.0, 5.0]) + rng.normal(0, 0.001, (30, 2))
    spread = rng.uniform(-20, 20, (10, 2))
    emb = np.concatenate([dup, spread])
    scores = np.concatenate([np.full(30, 0.9) + rng.uniform(0, 0.01, 30), np.full(10, 0.8)])
    top = np.argsort(-scores)[:5]
    assert all(i < 30 for i in top)                     # plain top-k: all duplicates
    picked = select_diverse(scores, emb, 5, method=method, pool_factor=8, normalise=False)
    assert len(set(picked.tolist())) == 5
    assert sum(i < 30 for i in picked) <= 2              # at most a couple from the clump
    assert list(scores[picked]) == sorted(scores[picked], reverse=True)


def test_stochastic_batch_is_reproducible_and_favours_high_scores():
    rng = np.random.default_rng(0)
    scores = rng.random(500)
    for mode in ("power", "softmax", "softrank"):
        a = acq.stochastic_batch(scores, 50, mode=mode, beta=1.0, seed=7)
        b = acq.stochastic_batch(scores, 50, mode=mode, beta=1.0, seed=7)
        c = acq.stochastic_batch(scores, 50, mode=mode, beta=1.0, seed=8)
        assert a.tolist() == b.tolist(), mode                  # same seed, same batch
        assert a.tolist() != c.tolist(), mode
        assert len(set(a.tolist())) == 50                      # without replacement
        assert scores[a].mean() > scores.mean(), mode          # biased towards high scores
    top = acq.stochastic_batch(scores, 10, mode="topk")
    assert top.tolist() == np.argsort(-scores)[:10].tolist()
    # beta -> large approaches top-k; a zero score is drawn only after every positive one
    sharp = acq.stochastic_batch(scores, 10, mode="power", beta=200.0, seed=0)
    assert set(sharp.tolist()) == set(top.tolist())
    z = np.array([0.0, 0.5, 0.0, 0.2])
    assert set(acq.stochastic_batch(z, 2, mode="power", seed=3).tolist()) == {1, 3}
    with pytest.raises(ValueError, match="sampling"):
        acq.stochastic_batch(scores, 3, mode="gumbel")


def test_power_sampling_matches_its_distribution():
    # p ∝ s: the first draw of a batch of 1 lands on index 1 three times as often as index 0
    s = np.array([1.0, 3.0])
    firsts = [int(acq.stochastic_batch(s, 1, mode="power", seed=i)[0]) for i in range(4000)]
    assert np.mean(firsts) == pytest.approx(0.75, abs=0.03)


def test_core_set_counts_labelled_images_as_centres():
    # Sener & Savarese: the labelled set are centres already, so a batch of 2 goes to the two
    # regions no labelled image covers, even though the covered region is the biggest
    rng = np.random.default_rng(2)
    regions = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (n, 2)) for c, n in zip(regions, (40, 10, 10, 10))])
    region = np.repeat(np.arange(4), (40, 10, 10, 10))
    labelled = regions[[0, 3]]
    scores = np.ones(len(x))
    picked = select_diverse(scores, x, 2, method="kcenter", pool_factor=100, existing=labelled,
                            normalise=False)
    assert sorted(region[picked].tolist()) == [1, 2]
    without = select_diverse(scores, x, 2, method="kcenter", pool_factor=100, normalise=False)
    assert 0 in region[without].tolist()          # with no centres, the first pick is region 0
