"""Run by ``test_distributed.py`` under torchrun: the toy model (dropout, a conv frozen in epoch 0 and unfrozen in
epoch 1, so DDP is re-wrapped mid-run) trained by the Trainer directly; prints one JSON summary line per rank."""

import json
import os
import sys
from dataclasses import asdict

import torch

from avseg.train.config import OptimConfig, TrainConfig
from avseg.train.trainer import Trainer
from tests.toy_model import ToyDataset, mean_iou_evaluator, toy_model

if __name__ == "__main__":
    out, resume = sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "--resume"
    torch.manual_seed(0)
    model = toy_model(dropout=0.3, freeze_conv_epochs=1)
    cfg = TrainConfig(
        seed=0,
        max_steps=6,
        batch_size=2,
        grad_accum_steps=2,
        optim=OptimConfig(lr=0.05),
        log_every=1,
        checkpoint_every=2,
        val_every=3,
        keep_last=10,
        progress_bar=False,
    )
    val = ToyDataset(4, split="val", seed=1)
    summary = Trainer(model, ToyDataset(16), cfg, out, val_dataset=val, evaluator=mean_iou_evaluator).fit(resume=resume)
    if summary.param_digests and int(os.environ.get("RANK", "0")) == 0:
        print("SUMMARY " + json.dumps(asdict(summary)))
