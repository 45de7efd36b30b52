// Launchers of the CUDA kernels (inplace_abn_cuda.cu, affinity_cuda.cu), called by
// cuda_binding.cpp. They take raw device pointers, sizes and a stream, and no torch types, so
// that nvcc compiles the .cu files without torch's CUDA headers. Each returns the launch's
// cudaError_t; the caller turns a failure into a Python exception.
//
// Shapes: x, z, dz, dx are contiguous (B, C, S); per-channel arrays have C entries of stat_t
// (float, or double for double inputs). scalar_t is float, double, __half or __nv_bfloat16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <stdint.h>

namespace skd {
namespace cuda {

// Number of partial results per channel that the per-channel reductions use for `count` = B * S
// elements; they need a workspace of 2 * C * abn_partials(count) stat_t values (abn_stats: the
// mean and m2 of each share, whose count follows from the sizes; abn_backward_reduce: two sums).
int64_t abn_partials(int64_t count);

// mean[c], var[c] (biased) of channel c, in one pass (Welford per thread, Chan's merge across
// threads and blocks), robust to values far from the mean. Needs B * S >= 1.
template <typename scalar_t, typename stat_t>
cudaError_t abn_stats(const scalar_t* x, int64_t B, int64_t C, int64_t S, stat_t* mean,
                      stat_t* var, stat_t* workspace, cudaStream_t stream);

// x <- act((x - mean) * invstd * weight + bias) in place; act is skd::Activation's value.
template <typename scalar_t, typename stat_t>
cudaError_t abn_forward(scalar_t* x, int64_t B, int64_t C, int64_t S, const stat_t* mean,
                        const stat_t* invstd, const stat_t* weight, const stat_t* bias, int act,
                        stat_t param, cudaStream_t stream);

// sum_dy[c] = sum(dy), sum_dy_xhat[c] = sum(dy * xhat), with y and dy recovered from z and dz.
template <typename scalar_t, typename stat_t>
cudaError_t abn_backward_reduce(const scalar_t* z, const scalar_t* dz, int64_t B, int64_t C,
                                int64_t S, const stat_t* weight, const stat_t* bias, int act,
                                stat_t param, stat_t* sum_dy, stat_t* sum_dy_xhat,
                                stat_t* workspace, cudaStream_t stream);

// dx = (dy - mean_dy - xhat * mean_dy_xhat) * weight * invstd.
template <typename scalar_t, typename stat_t>
cudaError_t abn_backward_apply(const scalar_t* z, const scalar_t* dz, scalar_t* dx, int64_t B,
                               int64_t C, int64_t S, const stat_t* invstd, const stat_t* weight,
                               const stat_t* bias, const stat_t* mean_dy,
                               const stat_t* mean_dy_xhat, int act, stat_t param,
                               cudaStream_t stream);

// Row blocks per image of the affinity kernel: `partial` holds B * affinity_row_tiles(N) values.
int64_t affinity_row_tiles(int64_t N);

// partial[b, r] = sum over rows i of block r and all j of (t_i.t_j - s_i.s_j)^2, for s (B, N, Cs)
// and t (B, N, Ct). gs += -4 sum_j d_ij s_j and gt += 4 sum_j d_ij t_j when non-null (they must
// start at zero).
template <typename T>
cudaError_t affinity_forward(const T* s, const T* t, int64_t B, int64_t N, int64_t Cs, int64_t Ct,
                             T* partial, T* gs, T* gt, cudaStream_t stream);

}  // namespace cuda
}  // namespace skd
