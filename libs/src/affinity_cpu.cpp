// Pair-wise affinity distance on CPU, tile by tile: per image sum_ij (t_i.t_j - s_i.s_j)^2 and,
// in the same pass, its gradients. Only one kTile x kTile block of the graph difference exists
// at a time per thread, never the N x N graphs. Arguments were checked by dispatch.cpp.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <tuple>

#include "skd_ops.h"

namespace skd {
namespace cpu {
namespace {

// Rows and columns of a graph block: big enough for BLAS to run near peak, small enough
// (64 KiB in float32) to stay in cache.
constexpr int64_t kTile = 128;

template <typename scalar_t>
double sum_of_squares(const at::Tensor& d) {
  const scalar_t* p = d.const_data_ptr<scalar_t>();
  double acc = 0.0;
  for (int64_t k = 0, n = d.numel(); k < n; ++k) acc += static_cast<double>(p[k]) * p[k];
  return acc;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> affinity_forward(const at::Tensor& s,
                                                                const at::Tensor& t, bool grad_s,
                                                                bool grad_t) {
  const int64_t B = s.size(0), N = s.size(1);
  const int64_t row_tiles = (N + kTile - 1) / kTile;
  // One partial sum per (image, row block), added up in a fixed order below: the loss does
  // not depend on how the threads were scheduled.
  at::Tensor partial = at::zeros({B, row_tiles}, s.options().dtype(at::kDouble));
  at::Tensor gs = grad_s ? at::zeros_like(s) : at::Tensor();
  at::Tensor gt = grad_t ? at::zeros_like(t) : at::Tensor();
  double* pp = partial.mutable_data_ptr<double>();

  at::parallel_for(0, B * row_tiles, 1, [&](int64_t q0, int64_t q1) {
    // The tile products are plain ATen matmuls; they must not record autograd history even
    // when s or t require grad (this runs on worker threads, outside Python's no_grad).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / row_tiles, i0 = (q % row_tiles) * kTile;
      const int64_t ti = std::min(kTile, N - i0);
      const at::Tensor s_i = s[b].narrow(0, i0, ti), t_i = t[b].narrow(0, i0, ti);
      double acc = 0.0;
      for (int64_t j0 = 0; j0 < N; j0 += kTile) {
        const int64_t tj = std::min(kTile, N - j0);
        const at::Tensor s_j = s[b].narrow(0, j0, tj), t_j = t[b].narrow(0, j0, tj);
        // d = T_i T_j^T - S_i S_j^T, a (ti, tj) block of the graph difference.
        const at::Tensor d = at::addmm(at::mm(t_i, t_j.t()), s_i, s_j.t(), 1, -1);
        AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "skd_affinity_cpu",
                                   [&] { acc += sum_of_squares<scalar_t>(d); });
        // The graphs are symmetric, so d/ds_i of sum_ij d_ij^2 is -4 sum_j d_ij s_j.
        if (grad_s) gs[b].narrow(0, i0, ti).addmm_(d, s_j, 1, -4);
        if (grad_t) gt[b].narrow(0, i0, ti).addmm_(d, t_j, 1, 4);
      }
      pp[q] = acc;
    }
  });
  return {partial.sum(1).to(s.scalar_type()), gs, gt};
}

}  // namespace cpu
}  // namespace skd
