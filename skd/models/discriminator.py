"""The holistic-distillation discriminator: a SAGAN-style critic over segmentation logits.

Read by the distillation step (Wasserstein or hinge loss on teacher vs student logits).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class SelfAttention(nn.Module):
    """SAGAN self-attention: (B, C, H, W) -> (B, C, H, W).

    out = gamma * V softmax(Q^T K)^T + x over the N = H*W positions, with Q, K 1x1 convs to
    C/8 channels, V a 1x1 conv to C, and gamma a learned scalar starting at 0, so the block is
    the identity at initialisation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, C/8, N)
        k = self.key(x).flatten(2)  # (B, C/8, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        # attention[b, i, j]: how much position i attends to position j (rows sum to 1).
        attention = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, N, N)
        out = torch.bmm(v, attention.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class Discriminator(nn.Module):
    """Critic over class-score maps: (B, in_channels, H, W) -> (B, 1, h, w).

    BatchNorm2d on the input, then spectral-normalised 4x4 stride-2 convs with LeakyReLU(0.1)
    to ndf, 2ndf, 4ndf channels, self-attention, a fourth such conv to 8ndf, self-attention,
    and a plain 4x4 conv to one score without padding. A 64x64 or 65x65 input (the logits of a
    512 crop) gives one score per image; larger inputs give a map of scores.
    """

    def __init__(self, in_channels: int = 19, ndf: int = 64) -> None:
        super().__init__()
        self.preprocess = nn.BatchNorm2d(in_channels)
        self.conv1 = self._down(in_channels, ndf)
        self.conv2 = self._down(ndf, ndf * 2)
        self.conv3 = self._down(ndf * 2, ndf * 4)
        self.attn1 = SelfAttention(ndf * 4)
        self.conv4 = self._down(ndf * 4, ndf * 8)
        self.attn2 = SelfAttention(ndf * 8)
        self.last = nn.Conv2d(ndf * 8, 1, 4)

    @staticmethod
    def _down(in_ch: int, out_ch: int) -> nn.Sequential:
        return nn.Sequential(spectral_norm(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        x = self.conv3(self.conv2(self.conv1(x)))
        x = self.attn2(self.conv4(self.attn1(x)))
        return self.last(x)
