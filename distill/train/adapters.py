"""The SDAKD feature adapter: a trainable two-layer MLP (1x1 convolutions) from the student's last backbone map
(C·channels wide) to the teacher's (channels wide), so L_MLP can compare maps of different widths.

Only the generator gets one: the paper found no gain from feature KD on the discriminator.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureMLP(nn.Module):
    def __init__(self, student_channels: int, teacher_channels: int, hidden_channels: int | None = None):
        super().__init__()
        hidden = hidden_channels or teacher_channels
        self.fc1 = nn.Conv2d(student_channels, hidden, 1)
        self.act = nn.LeakyReLU(0.2)
        self.fc2 = nn.Conv2d(hidden, teacher_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
