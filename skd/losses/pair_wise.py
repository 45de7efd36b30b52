"""Pair-wise distillation (the paper's pa term): match the teacher's node-similarity graph.

Three exact implementations of the same value: "naive" builds both N x N graphs (the original);
"gram" never does, using ||S S^T - T T^T||_F^2 = ||S^T S||_F^2 + ||T^T T||_F^2 - 2 ||S^T T||_F^2
in float64; "ext" calls the fused kernel `skd.nn.affinity.affinity_distance`. "auto" picks by
the rule in `choose_impl`, measured by scripts/benchmark_losses.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skd.losses.common import check_same_grid
from skd.nn.affinity import affinity_distance

PAIR_WISE_IMPLS = ("auto", "naive", "gram", "ext")
POOLS = ("max", "avg")

# choose_impl's rule: "gram" once N > max(GRAM_MIN_NODES[device], GRAM_FACTOR * W), with
# W = (Cs^2 + Cs*Ct + Ct^2) / (Cs + Ct) the gram path's float64 work per node over the naive
# path's float32 work per node pair. The constants come from scripts/benchmark_losses.py; the
# measurements behind them are in docs/benchmarks.md ("Pair-wise: how auto chooses").
GRAM_FACTOR = 1.4
GRAM_MIN_NODES = {"cpu": 0, "cuda": 1536}


def node_kernel(h: int, w: int, pool_scale: float = 0.5, node_size: int | None = None) -> tuple[int, int]:
    """Pooling kernel (= stride) for an (H, W) map: (beta, beta) with node_size beta, else
    (int(H*s), int(W*s)) with s = pool_scale, at least 1 (the original crashed below one pixel)."""
    if node_size is not None:
        return node_size, node_size
    return max(1, int(h * pool_scale)), max(1, int(w * pool_scale))


def check_pair_wise_options(pool_scale: float, node_size: int | None, pool: str, impl: str) -> None:
    if not 0.0 < pool_scale <= 1.0:
        raise ValueError(f"--pool-scale {pool_scale}: must be in (0, 1] (the original uses 0.5)")
    if node_size is not None and node_size < 1:
        raise ValueError(f"pair_wise_loss: node_size={node_size} must be >= 1 feature pixel")
    if pool not in POOLS:
        raise ValueError(f"pair_wise_loss: pool={pool!r}; expected one of {POOLS}")
    if impl not in PAIR_WISE_IMPLS:
        raise ValueError(f"pair_wise_loss: impl={impl!r}; expected one of {PAIR_WISE_IMPLS}")


def _contiguous_grad(grad: Tensor | None) -> Tensor | None:
    return None if grad is None else grad.contiguous()


def pool_nodes(feat: Tensor, kernel: tuple[int, int], pool: str = "max") -> Tensor:
    """Pool `feat` (B, C, H, W) with kernel = stride = `kernel`, ceil mode, no padding.

    Returns the nodes (B, N, C), N = ceil(H / kh) * ceil(W / kw), row-major over the pooled map.
    With pool="avg" a window cut by the border averages only the pixels inside it.
    """
    if kernel == (1, 1):  # one node per pixel: a view, no copy of a possibly large map
        pooled = feat
    elif pool == "max":
        pooled = F.max_pool2d(feat, kernel, stride=kernel, padding=0, ceil_mode=True)
    else:
        pooled = F.avg_pool2d(feat, kernel, stride=kernel, padding=0, ceil_mode=True)
    maps = pooled.flatten(2)  # a fresh view per call, so the hook below does not pile up
    if maps.requires_grad:
        # The graph's gradient comes back node-major, (B, N, C) contiguous; max_pool2d's backward
        # (and the layers below) run ~4x slower on that layout than on the map's own.
        maps.register_hook(_contiguous_grad)
    return maps.transpose(1, 2)


def normalise_nodes(nodes: Tensor) -> Tensor:
    """nodes / (||nodes||_2 + 1e-8) along the last dim, the norm detached as in the original.

    Detaching the norm is the original's (perhaps accidental) choice and changes the gradient:
    it keeps the component along the node's own direction that a true unit-norm map removes.
    """
    norm = torch.linalg.vector_norm(nodes, dim=-1, keepdim=True).detach()
    return nodes / (norm + 1e-8)


def graph_distance_naive(s: Tensor, t: Tensor) -> Tensor:
    """Per-image sum_{i,j} (t_i.t_j - s_i.s_j)^2 from the N x N graphs; s (B,N,Cs), t (B,N,Ct) -> (B,)."""
    sim_s = torch.bmm(s, s.transpose(1, 2))
    sim_t = torch.bmm(t, t.transpose(1, 2))
    return (sim_t - sim_s).square().sum(dim=(1, 2))


# Nodes per float64 chunk in the gram path: this many float64 values (16 MiB on CPU, 32 MiB on
# CUDA) of student and teacher nodes together, so that no float64 or normalised copy of a large
# node map is ever held. On CUDA, where each chunk costs ~20 kernel launches, a map of up to
# _ONE_CHUNK_VALUES (64 MiB in float64; 8 x 4096 nodes x 128 + 128 channels) is taken whole
# (docs/benchmarks.md, "Pair-wise: how auto chooses").
_CHUNK_VALUES = {"cpu": 2**21, "cuda": 2**22}
_ONE_CHUNK_VALUES = {"cpu": 2**21, "cuda": 2**23}


def _chunk_nodes(device: torch.device, batch: int, channels: int, nodes: int) -> int:
    """Nodes per chunk of the gram path for `channels` = Cs + Ct (devices other than CPU as CUDA)."""
    kind = device.type if device.type in _CHUNK_VALUES else "cuda"
    if batch * channels * nodes <= _ONE_CHUNK_VALUES[kind]:
        return nodes
    return max(1, _CHUNK_VALUES[kind] // (batch * channels))


class _GramDistance(torch.autograd.Function):
    """Per-image ||S S^T - T T^T||_F^2 from raw nodes, normalised chunk by chunk in float64.

    Works on the nodes as channels-first (B, C, N) views (the feature map's own layout, so a
    full-resolution map is never transposed or copied whole). Forward accumulates the channel
    Grams S^T S, T^T T, S^T T over chunks of nodes and keeps the (B, 1, N) inverse norms;
    backward re-normalises each chunk and writes
        dL/dnode_i = 4 (S^T S s_i - S^T T t_i) / (||node_i|| + 1e-8)
    (the norm held constant, as in the original) straight into the gradient.
    """

    @staticmethod
    def forward(ctx, s_nodes: Tensor, t_nodes: Tensor) -> Tensor:
        xs, xt = s_nodes.transpose(1, 2), t_nodes.transpose(1, 2)  # (B, C, N) views
        b, cs, n = xs.shape
        ct = xt.shape[1]
        ss = xs.new_zeros((b, cs, cs), dtype=torch.float64)
        tt = xs.new_zeros((b, ct, ct), dtype=torch.float64)
        st = xs.new_zeros((b, cs, ct), dtype=torch.float64)
        inv_s = xs.new_empty((b, 1, n), dtype=torch.float64)
        inv_t = xs.new_empty((b, 1, n), dtype=torch.float64)
        chunk = _chunk_nodes(xs.device, b, cs + ct, n)
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            # copy=True: the chunks are normalised in place, and float64 inputs must stay intact
            s = xs[:, :, part].to(torch.float64, copy=True)
            t = xt[:, :, part].to(torch.float64, copy=True)
            norm_s = torch.linalg.vector_norm(s, dim=1, keepdim=True).add_(1e-8)
            norm_t = torch.linalg.vector_norm(t, dim=1, keepdim=True).add_(1e-8)
            s.mul_(torch.reciprocal(norm_s, out=inv_s[:, :, part]))
            t.mul_(torch.reciprocal(norm_t, out=inv_t[:, :, part]))
            ss.baddbmm_(s, s.transpose(1, 2))
            tt.baddbmm_(t, t.transpose(1, 2))
            st.baddbmm_(s, t.transpose(1, 2))
        ctx.save_for_backward(s_nodes, t_nodes, ss, st, inv_s, inv_t)
        ctx.chunk = chunk
        # The three terms are each about N^2 and cancel when the student is close to the
        # teacher; float64 keeps the difference to ~1e-16 * N^2 where float32 would lose it.
        return ss.square().sum(dim=(1, 2)) + tt.square().sum(dim=(1, 2)) - 2.0 * st.square().sum(dim=(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        s_nodes, t_nodes, ss, st, inv_s, inv_t = ctx.saved_tensors
        xs, xt = s_nodes.transpose(1, 2), t_nodes.transpose(1, 2)
        grad = torch.empty(xs.shape, dtype=xs.dtype, device=xs.device)  # (B, Cs, N), contiguous
        grad_scale = inv_s * (4.0 * grad_out.double().view(-1, 1, 1))
        # backward() may be called inside an autocast region, which would put the bmm in half.
        with torch.autocast(device_type=xs.device.type, enabled=False):
            for start in range(0, xs.shape[2], ctx.chunk):
                part = slice(start, start + ctx.chunk)
                s = xs[:, :, part].to(torch.float64, copy=True).mul_(inv_s[:, :, part])
                t = xt[:, :, part].to(torch.float64, copy=True).mul_(inv_t[:, :, part])
                g = torch.bmm(ss, s).baddbmm_(st, t, alpha=-1.0).mul_(grad_scale[:, :, part])
                grad[:, :, part].copy_(g)
        return grad.transpose(1, 2), None


def graph_distance_gram(s_nodes: Tensor, t_nodes: Tensor) -> Tensor:
    """Same value as `graph_distance_naive(normalise_nodes(s), normalise_nodes(t))`, never N x N.

    Takes the RAW nodes s (B, N, Cs), t (B, N, Ct) and normalises them itself (norm detached),
    using ||S S^T - T T^T||_F^2 = ||S^T S||_F^2 + ||T^T T||_F^2 - 2 ||S^T T||_F^2 in float64:
    memory O(C^2) plus one chunk of nodes, work O(N C^2) instead of O(N^2 C). Differentiable
    w.r.t. s (once). Returns (B,) float64.
    """
    return _GramDistance.apply(s_nodes, t_nodes.detach())


def choose_impl(num_nodes: int, student_channels: int, teacher_channels: int, device: torch.device) -> str:
    """The faster exact implementation for this size: "naive" for small graphs, else "gram".

    gram when N > max(GRAM_MIN_NODES[device type], GRAM_FACTOR * (Cs^2 + Cs*Ct + Ct^2) / (Cs + Ct))
    (see GRAM_FACTOR for the measurements behind it); devices other than CPU use the CUDA floor.
    "ext" is never chosen: whether it is compiled is known only after a build, so ask for it.
    """
    cs, ct = student_channels, teacher_channels
    floor = GRAM_MIN_NODES.get(torch.device(device).type, GRAM_MIN_NODES["cuda"])
    return "gram" if num_nodes > max(floor, GRAM_FACTOR * (cs * cs + cs * ct + ct * ct) / (cs + ct)) else "naive"


def pair_wise_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    pool_scale: float = 0.5,
    node_size: int | None = None,
    pool: str = "max",
    impl: str = "auto",
) -> Tensor:
    """Pair-wise (structured) distillation between the node-similarity graphs.

        nodes   = pool(feat) with kernel = stride = (int(H*s), int(W*s)) (s = pool_scale) or
                  (beta, beta) (beta = node_size, which wins when given), ceil mode, no padding
        x_i     = node_i / (||node_i||_2 + 1e-8), the norm detached
        a_ij    = x_i . x_j                       (an N x N graph per image)
        loss    = sum_b sum_{i,j} (a^T_ij - a^S_ij)^2 / N^2 / B

    `student_feat` (B, Cs, H, W) and `teacher_feat` (B, Ct, H, W): channel counts may differ
    (only the graphs are compared); the teacher is detached. A 65x65 map with s = 0.5 gives a
    kernel of 32 and 3x3 = 9 nodes. Computed in float32 (float64 for float64 inputs) with
    autocast off. `impl` chooses how ("naive", "gram", "ext", or "auto" = `choose_impl`); all
    give the same value up to rounding. Returns a scalar, a batch mean.
    """
    check_pair_wise_options(pool_scale, node_size, pool, impl)
    check_same_grid(student_feat, teacher_feat, "pair_wise_loss")
    batch, _, h, w = teacher_feat.shape
    kernel = node_kernel(h, w, pool_scale, node_size)
    compute_dtype = torch.float64 if student_feat.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=student_feat.device.type, enabled=False):
        s = pool_nodes(student_feat.to(compute_dtype), kernel, pool)
        t = pool_nodes(teacher_feat.detach().to(compute_dtype), kernel, pool)
        num_nodes = s.shape[1]
        if impl == "auto":
            impl = choose_impl(num_nodes, s.shape[2], t.shape[2], s.device)
        if impl == "ext":  # the compiled kernels, or their PyTorch twin where none are built
            s, t = normalise_nodes(s.float()), normalise_nodes(t.float())
            per_image = affinity_distance(s.contiguous(), t.contiguous())
        elif impl == "gram":
            per_image = graph_distance_gram(s, t)  # normalises chunk by chunk itself
        else:
            per_image = graph_distance_naive(normalise_nodes(s), normalise_nodes(t))
        loss = per_image.sum() / (num_nodes * num_nodes) / batch
    return loss.to(compute_dtype)
