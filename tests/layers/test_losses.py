import torch
import torch.nn.functional as F

from avseg.layers.losses import sigmoid_focal_loss, soft_dice_loss


def test_soft_dice_loss_perfect_empty_and_disjoint():
    target = torch.zeros(2, 4, 4)
    target[0, :2] = 1
    confident = (target * 2 - 1) * 50  # logits agreeing with the target
    assert soft_dice_loss(confident, target).item() < 1e-6 + 1 / 9  # empty frame: p≈0 → loss ≈ 0
    wrong = -confident
    assert soft_dice_loss(wrong, target).item() > 0.9


def test_sigmoid_focal_matches_manual_formula_and_reduces_to_bce():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 5, 5), (torch.rand(3, 5, 5) > 0.5).float()
    p = logits.sigmoid()
    p_t = torch.where(target > 0, p, 1 - p)
    a_t = torch.where(target > 0, torch.tensor(0.25), torch.tensor(0.75))
    manual = (-a_t * (1 - p_t) ** 2 * p_t.log()).mean()
    torch.testing.assert_close(sigmoid_focal_loss(logits, target), manual)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, alpha=-1, gamma=0.0), bce)
