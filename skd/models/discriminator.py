"""The holistic-distillation discriminator: a SAGAN-style critic over segmentation logits.

Read by the distillation step (Wasserstein or hinge loss on teacher vs student logits).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def _l2_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / (torch.linalg.vector_norm(x) + eps)


class SpectralNorm(nn.Module):
    """Spectral normalisation as the original SKD code does it (networks/spectral.py, lines 10-35).

    A parametrization of a weight W (out, ...) viewed as a matrix (out, rest): each forward in
    training mode runs one power iteration in the original's order, v = l2(W^T u), then
    u = l2(W v), with l2(x) = x / (||x|| + 1e-12), and returns W / sigma, sigma = u . W v (u and v
    constants, so the gradient reaches W through both W and sigma). u and v start as normalised
    N(0, 1) draws with no warm-up iterations. torch.nn.utils.parametrizations.spectral_norm
    differs in three ways: it updates u before v, runs 15 iterations at construction, and
    normalises with max(||x||, eps). The buffers are named like torch's (`_u`, `_v`), so the
    state-dict keys are the same.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        rows = weight.shape[0]
        cols = weight[0].numel()
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.register_buffer("_u", _l2_normalise(weight.new_empty(rows).normal_(0, 1), eps))
        self.register_buffer("_v", _l2_normalise(weight.new_empty(cols).normal_(0, 1), eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    self._v.copy_(_l2_normalise(matrix.t().mv(self._u), self.eps))
                    self._u.copy_(_l2_normalise(matrix.mv(self._v), self.eps))
        # Clones: the buffers change in the next forward, which must not alter this graph.
        u, v = self._u.clone(), self._v.clone()
        return weight / torch.dot(u, matrix.mv(v))


def spectral_norm(module: nn.Module) -> nn.Module:
    """`module` with its `weight` spectrally normalised the original's way (SpectralNorm)."""
    # unsafe=True skips registration's consistency forward, which would run a first power
    # iteration: the original starts training from the raw N(0, 1) draws.
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight.detach()), unsafe=True)
    return module


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
