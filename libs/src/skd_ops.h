// Tensor-level entry points of the skd extension, one set per device. dispatch.cpp picks the
// set from the input's device; skd/nn/inplace_abn.py and skd/nn/affinity.py document the maths.
//
// Conventions shared by both sets:
//   * InPlace-ABN inputs are contiguous (B, C, *) tensors, seen as (B, C, S) with S the product
//     of the trailing sizes (S = 1 for (B, C)).
//   * Per-channel tensors (mean, var, invstd, weight, bias, the backward sums) are (C,) in the
//     "statistics dtype": float64 for float64 inputs, float32 for float32, float16 and bfloat16.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace skd {

// An InPlace-ABN input (B, C, *) seen as (B, C, S), S the product of the trailing sizes.
struct Shape {
  int64_t B, C, S;
};

inline Shape shape_of(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t S = B * C == 0 ? 0 : x.numel() / (B * C);
  return {B, C, S};
}

#define SKD_DECLARE_OPS                                                                          \
  /* Per-channel mean and biased variance of x. */                                              \
  std::tuple<at::Tensor, at::Tensor> abn_stats(const at::Tensor& x);                            \
  /* x <- act((x - mean) * invstd * weight + bias), in place. */                                \
  void abn_forward_(at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,           \
                    const at::Tensor& weight, const at::Tensor& bias, int64_t act, double param); \
  /* Per-channel sum(dy) and sum(dy * xhat), with y, dy recovered from the output z and dz. */ \
  std::tuple<at::Tensor, at::Tensor> abn_backward_reduce(                                       \
      const at::Tensor& z, const at::Tensor& dz, const at::Tensor& weight,                      \
      const at::Tensor& bias, int64_t act, double param);                                       \
  /* dx = (dy - mean_dy - xhat * mean_dy_xhat) * weight * invstd (the means are 0 in eval). */ \
  at::Tensor abn_backward_apply(const at::Tensor& z, const at::Tensor& dz,                      \
                                const at::Tensor& invstd, const at::Tensor& weight,             \
                                const at::Tensor& bias, const at::Tensor& mean_dy,              \
                                const at::Tensor& mean_dy_xhat, int64_t act, double param);     \
  /* Per-image sum_ij (t_i.t_j - s_i.s_j)^2 for s (B, N, Cs), t (B, N, Ct), and when asked the \
     gradients of that sum: -4 sum_j d_ij s_j and +4 sum_j d_ij t_j (undefined otherwise). */   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> affinity_forward(                              \
      const at::Tensor& s, const at::Tensor& t, bool grad_s, bool grad_t);

namespace cpu {
SKD_DECLARE_OPS
}  // namespace cpu

// Implemented in cuda_binding.cpp, which is compiled only when torch and nvcc have CUDA.
namespace cuda {
SKD_DECLARE_OPS
}  // namespace cuda

#undef SKD_DECLARE_OPS

}  // namespace skd
