"""`label_smoothed_cross_entropy` against a line-by-line port of OFA's criterion (spec §4.1)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ofa.tasks.losses import label_smoothed_cross_entropy

PAD = 1


def reference_loss(logits, target, eps, conf=None, masks=None, crange=None, drop_ratio=0.0, drop_after=0,
                   update=0):
    """OFA `adjust_label_smoothed_cross_entropy` in fairseq's order: mask logits, log_softmax * conf,
    flatten, drop pad, smooth over the allowed set, drop the worst tokens."""
    logits = logits.clone()
    if masks is not None:
        logits.masked_fill_(~masks, -math.inf)
    if crange is not None:
        logits[:, :, 4:crange[0]] = -math.inf
        logits[:, :, crange[1]:] = -math.inf
    c = conf[:, None, None] if conf is not None else 1
    lprobs = (F.log_softmax(logits, -1) * c).reshape(-1, logits.size(-1))
    tgt = target.reshape(-1)
    keep = tgt != PAD
    m = masks.reshape(-1, masks.size(-1))[keep] if masks is not None else None
    lprobs, tgt = lprobs[keep], tgt[keep]
    nll = -lprobs.gather(-1, tgt[:, None]).squeeze(-1)
    if m is not None:
        smooth = -lprobs.masked_fill(~m, 0).sum(-1)
        eps_i = eps / (m.sum(1) - 1 + 1e-6)
    elif crange is not None:
        allowed = [0, 1, 2, 3] + list(range(*crange))
        smooth = -lprobs[:, allowed].sum(-1)
        eps_i = eps / (len(allowed) - 1 + 1e-6)
    else:
        smooth = -lprobs.sum(-1)
        eps_i = eps / (lprobs.size(-1) - 1)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
    if drop_ratio > 0 and update > drop_after:
        loss, idx = torch.topk(loss, k=int(loss.shape[0] * (1 - drop_ratio)), largest=False)
        nll = nll[idx]
    return loss.sum(), nll.sum(), loss.numel()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 20, generator=g)
    target = torch.randint(4, 20, (3, 5), generator=g)
    target[0, 3:] = PAD
    target[2, 4:] = PAD
    return logits, target


def check(out, ref) -> None:
    assert out.loss.item() == pytest.approx(ref[0].item(), rel=1e-5)
    assert out.nll_loss.item() == pytest.approx(ref[1].item(), rel=1e-5)
    assert out.ntokens == ref[2]


def test_plain_matches_reference_and_ntokens(batch) -> None:
    logits, target = batch
    out = label_smoothed_cross_entropy(logits, target, epsilon=0.1, pad=PAD)
    check(out, reference_loss(logits, target, 0.1))
    assert out.ntokens == int(target.ne(PAD).sum())


def test_no_smoothing_is_cross_entropy(batch) -> None:
    logits, target = batch
    out = label_smoothed_cross_entropy(logits, target, epsilon=0.0, pad=PAD)
    ce = F.cross_entropy(logits.view(-1, 20), target.view(-1), ignore_index=PAD, reduction="sum")
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-5)


def test_conf_weights_samples(batch) -> None:
    logits, target = batch
    conf = torch.tensor([1.0, 0.5, 2.0])
    check(label_smoothed_cross_entropy(logits, target, 0.1, PAD, conf=conf), reference_loss(logits, target, 0.1, conf))
    zero = label_smoothed_cross_entropy(logits, target, 0.1, PAD, conf=torch.tensor([0.0, 1.0, 1.0]))
    only = label_smoothed_cross_entropy(logits[1:], target[1:], 0.1, PAD)
    assert zero.loss.item() == pytest.approx(only.loss.item(), rel=1e-5)


def test_constraint_masks_restrict_logits_and_smoothing(batch) -> None:
    logits, target = batch
    masks = torch.rand(3, 5, 20, generator=torch.Generator().manual_seed(1)) > 0.5
    masks.scatter_(-1, target[..., None], True)  # the target is always allowed
    out = label_smoothed_cross_entropy(logits, target, 0.1, PAD, constraint_masks=masks)
    check(out, reference_loss(logits, target, 0.1, masks=masks))
    free = label_smoothed_cross_entropy(logits, target, 0.1, PAD)
    assert out.nll_loss < free.nll_loss  # renormalising over fewer tokens raises the target's probability


def test_all_false_rows_at_pad_positions_keep_gradients_finite(batch) -> None:
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    masks = torch.ones(3, 5, 20, dtype=torch.bool)
    masks[target == PAD] = False  # e.g. prompt/pad positions of a closed-set task
    out = label_smoothed_cross_entropy(logits, target, 0.1, PAD, constraint_masks=masks)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[target == PAD] == 0).all()


def test_constraint_range(batch) -> None:
    logits, target = batch
    target = target.clamp(max=14)
    target[0, 3:] = PAD
    out = label_smoothed_cross_entropy(logits, target, 0.1, PAD, constraint_range=(8, 15))
    check(out, reference_loss(logits, target.clamp(min=0), 0.1, crange=(8, 15)))


def test_drop_worst_keeps_the_best_tokens_after_warmup(batch) -> None:
    logits, target = batch
    n = int(target.ne(PAD).sum())
    before = label_smoothed_cross_entropy(logits, target, 0.1, PAD, drop_worst_ratio=0.2, drop_worst_after=10,
                                          update_num=10)
    after = label_smoothed_cross_entropy(logits, target, 0.1, PAD, drop_worst_ratio=0.2, drop_worst_after=10,
                                         update_num=11)
    assert before.ntokens == n and after.ntokens == int(n * 0.8)
    check(after, reference_loss(logits, target, 0.1, drop_ratio=0.2, drop_after=10, update=11))
    assert after.loss < before.loss


def test_ignore_prefix(batch) -> None:
    logits, target = batch
    out = label_smoothed_cross_entropy(logits, target, 0.1, PAD, ignore_prefix_size=2)
    check(out, reference_loss(logits[:, 2:], target[:, 2:], 0.1))


def test_encouraging_loss_on_a_hand_computed_case() -> None:
    """Two tokens, V=2, no smoothing: p(target) = 0.5 and 0.9. LS-CE = -log .5 - log .9; the bonus is
    log(1 - .5) below log_end=0.75 and the line (.9 - .75)/(.75 - 1) + log(.25) above it."""
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    logits, target = probs.log()[None], torch.tensor([[0, 1]])
    out = label_smoothed_cross_entropy(logits, target, epsilon=0.0, pad=-1, encouraging_log_end=0.75)
    ce = -math.log(0.5) - math.log(0.9)
    bonus = math.log(0.5) + ((0.9 - 0.75) / (0.75 - 1) + math.log(0.25))
    assert out.loss.item() == pytest.approx(ce + bonus, abs=1e-5)
    assert out.nll_loss.item() == pytest.approx(ce, abs=1e-5) and out.ntokens == 2


def test_encouraging_loss_smooths_the_bonus_over_the_vocabulary() -> None:
    """eps = 0.2, V = 2, log_end = 1 (pure log(1-p)): bonus = 0.8 * b[y] + 0.2 / 2 * (b[0] + b[1])."""
    probs = torch.tensor([[0.3, 0.7]])
    out = label_smoothed_cross_entropy(probs.log()[None], torch.tensor([[1]]), epsilon=0.2, pad=-1,
                                       encouraging_log_end=1.0)
    plain = label_smoothed_cross_entropy(probs.log()[None], torch.tensor([[1]]), epsilon=0.2, pad=-1)
    b0, b1 = math.log(0.7), math.log(0.3)
    assert (out.loss - plain.loss).item() == pytest.approx(0.8 * b1 + 0.1 * (b0 + b1), abs=1e-5)


def test_drop_best_keeps_the_worst_tokens() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.8, 0.2]])
    out = label_smoothed_cross_entropy(probs.log()[None], torch.tensor([[0, 1, 1]]), epsilon=0.0, pad=-1,
                                       drop_best_ratio=0.3, update_num=1)
    assert out.ntokens == 2 and out.loss.item() == pytest.approx(-math.log(0.5) - math.log(0.2), abs=1e-5)


def test_bin_sigma_is_cross_entropy_against_a_gaussian_over_the_bins() -> None:
    """Bins are ids [10, 30) of V = 40; no smoothing. A bin target at 20 with sigma 1.5 is scored against
    exp(-d^2 / (2 * 1.5^2)) for |d| <= 5 (3 sigma, rounded up), normalised; a target outside the bins keeps
    its one-hot NLL, and the reported NLL is the one-hot one everywhere."""
    logits = torch.randn(1, 2, 40, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[20, 5]])
    out = label_smoothed_cross_entropy(logits, target, epsilon=0.0, pad=-1, bin_range=(10, 30), bin_sigma=1.5)
    lp = F.log_softmax(logits[0], -1)
    d = torch.arange(-5, 6)
    w = torch.exp(-0.5 * (d / 1.5) ** 2)
    w = w / w.sum()
    expected = -(w * lp[0, 15:26]).sum() - lp[1, 5]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.nll_loss.item() == pytest.approx((-lp[0, 20] - lp[1, 5]).item(), rel=1e-5)


def test_bin_sigma_prefers_a_near_miss_to_a_far_one_and_stops_at_the_last_bin() -> None:
    """One-hot CE scores a neighbouring bin as wrong as a distant one; the Gaussian target does not. A target
    on the first bin spreads only over the bins (none of its weight lands on ids below the range)."""
    def loss(peak: int, target: int, sigma: float) -> float:
        logits = torch.zeros(1, 1, 40)
        logits[0, 0, peak] = 8.0
        return label_smoothed_cross_entropy(logits, torch.tensor([[target]]), epsilon=0.1, pad=-1,
                                            bin_range=(10, 30), bin_sigma=sigma).loss.item()

    assert loss(21, 20, 0.0) == pytest.approx(loss(28, 20, 0.0))  # OFA: a near miss is no better
    assert loss(21, 20, 2.0) < loss(28, 20, 2.0) - 1
    assert loss(11, 10, 2.0) < loss(9, 10, 2.0) - 1  # id 9 is not a bin: no credit across the range's edge


def test_bin_sigma_leaves_out_bins_a_constraint_masks() -> None:
    """Under a constraint mask the Gaussian covers only the allowed bins (a masked neighbour's -inf log-prob
    would make the loss infinite): the same loss as the Gaussian renormalised over the allowed ids by hand."""
    logits = torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(1))
    masks = torch.ones(1, 1, 40, dtype=torch.bool)
    masks[0, 0, 21] = False
    out = label_smoothed_cross_entropy(logits, torch.tensor([[20]]), epsilon=0.0, pad=-1, constraint_masks=masks,
                                       bin_range=(10, 30), bin_sigma=1.0)
    lp = F.log_softmax(logits[0, 0].masked_fill(~masks[0, 0], -math.inf), -1)
    ids = [i for i in range(17, 24) if i != 21]
    w = torch.tensor([math.exp(-0.5 * (i - 20) ** 2) for i in ids])
    assert math.isfinite(out.loss.item())
    assert out.loss.item() == pytest.approx(-(w / w.sum() * lp[ids]).sum().item(), rel=1e-5)
