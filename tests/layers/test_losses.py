import pytest
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


def test_sam_multimask_losses_supervise_the_best_candidate_only():
    from avseg.layers.losses import sam_multimask_losses

    target = torch.zeros(2, 8, 8)
    target[0, 2:6, 2:6] = 1  # frame 0 has an object, frame 1 is empty
    good = (target[0] * 2 - 1) * 20  # agrees with frame 0
    logits = torch.stack([torch.stack([-good, good, torch.zeros(8, 8)]), torch.stack([good, -good, good])])
    iou_pred = torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.2, 0.2]])
    out = sam_multimask_losses(logits, iou_pred, torch.tensor([3.0, -3.0]), target)
    assert out["best"][0].item() == 1  # the agreeing candidate is supervised
    assert out["focal"][0].item() < 1e-6 and out["dice"][0].item() < 1e-6
    # IoU head: candidate IoUs are 0, 1 and 0 (logits 0 count as background); L1 averaged over candidates.
    expected_iou = (abs(0.0 - 0.0) + abs(1.0 - 1.0) + abs(0.5 - 0.0)) / 3
    assert out["iou"][0].item() == pytest.approx(expected_iou)
    # An empty target gets no mask, dice or IoU loss, only the object-score BCE (logit -3 for "absent").
    assert out["focal"][1].item() == 0 and out["dice"][1].item() == 0 and out["iou"][1].item() == 0
    torch.testing.assert_close(
        out["object"],
        F.binary_cross_entropy_with_logits(torch.tensor([3.0, -3.0]), torch.tensor([1.0, 0.0]), reduction="none"),
    )
    single = sam_multimask_losses(logits[:, :1], iou_pred[:, :1], torch.zeros(2), target, supervise_all_iou=False)
    assert single["best"].tolist() == [0, 0] and single["focal"][0].item() > 0.1


def test_squared_dice_loss_matches_the_avsegformer_formula():
    from avseg.layers.losses import squared_dice_loss

    torch.manual_seed(0)
    logits, target = torch.randn(3, 6, 6), (torch.rand(3, 6, 6) > 0.6).float()
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    manual = 1 - 2 * (p * g).sum(1) / ((p * p).sum(1) + 0.001 + (g * g).sum(1) + 0.001)  # F5_Dice_loss, written out
    torch.testing.assert_close(squared_dice_loss(logits, target), manual.mean())
    perfect = (target * 2 - 1) * 50
    assert squared_dice_loss(perfect[:1], target[:1]).item() < 1e-3
    # An empty target scores 1 whatever the prediction: no gradient to learn empty masks from.
    empty = torch.zeros(1, 6, 6)
    x = torch.randn(1, 6, 6, requires_grad=True)
    loss = squared_dice_loss(x, empty)
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and x.grad.abs().max().item() == 0
