"""Users' own LightningModules for the lightning engine's tests (`train.lightning_module`)."""

from __future__ import annotations

import torch.nn.functional as F

from modelyard.training.lightning import FamilyModule


class WithoutSmoothing(FamilyModule):
    """Plain cross-entropy, whatever the recipe's label smoothing."""

    def step(self, batch):
        x, y = batch
        logits = self(self._format(x))
        return F.cross_entropy(logits, y), logits


class FirstThreeClasses(FamilyModule):
    """Breaks the family contract: logits for three classes only."""

    def step(self, batch):
        loss, logits = super().step(batch)
        return loss, logits[:, :3]


class NotAFamilyModule:
    pass
