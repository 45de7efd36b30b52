// InPlace-ABN CUDA kernels and their launchers (declared in skd_cuda.h).
//
// Per-channel reductions run in two steps: a (C, P) grid where each block reduces a strided
// share of one channel, then one thread per channel combines the P partial results in double.
// The statistics carry (count, mean, m2) rather than sums (see Moments); the backward sums are
// plain sums. The partition is fixed by the sizes, so the results are the same on every run.
#include <algorithm>

#include "skd_cuda.h"
#include "skd_ext.h"

namespace skd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxPartials = 64;
// Grid-stride elementwise kernels: enough blocks to fill any current GPU several times over.
constexpr int64_t kMaxElementwiseBlocks = 8192;

// torch builds CUDA code with __CUDA_NO_HALF_CONVERSIONS__, hence explicit conversions.
template <typename stat_t>
__device__ __forceinline__ stat_t load(float v) { return static_cast<stat_t>(v); }
template <typename stat_t>
__device__ __forceinline__ stat_t load(double v) { return static_cast<stat_t>(v); }
template <typename stat_t>
__device__ __forceinline__ stat_t load(__half v) { return static_cast<stat_t>(__half2float(v)); }
template <typename stat_t>
__device__ __forceinline__ stat_t load(__nv_bfloat16 v) {
  return static_cast<stat_t>(__bfloat162float(v));
}

template <typename scalar_t>
struct Store;
template <>
struct Store<float> {
  __device__ static float from(float v) { return v; }
};
template <>
struct Store<double> {
  __device__ static double from(double v) { return v; }
};
template <>
struct Store<__half> {
  __device__ static __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Store<__nv_bfloat16> {
  __device__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// Sum of a and b over the block, valid in thread 0. kThreads must be a multiple of 32.
template <typename T>
__device__ void block_sum2(T& a, T& b) {
  __shared__ T sa[kThreads / 32], sb[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kThreads / 32 ? sa[lane] : T(0);
    b = lane < kThreads / 32 ? sb[lane] : T(0);
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
  }
}

// Statistics of a set of values: how many (n), their mean, and m2 = sum((v - mean)^2). Updated
// one value at a time (Welford) and merged pairwise (Chan et al.), never as sum(v^2) - n mean^2,
// which in float loses about eps * (|mean| / std)^2 of the variance. Counts stay integers: a
// block's share of a channel can exceed the 2^24 that float represents exactly.
template <typename T>
struct Moments {
  int64_t n;
  T mean, m2;
};

template <typename T>
__device__ __forceinline__ void welford_add(Moments<T>& a, T v) {
  ++a.n;
  const T d = v - a.mean;
  a.mean += d / static_cast<T>(a.n);
  a.m2 += d * (v - a.mean);
}

// a <- a merged with b. An empty b leaves a as it is and an empty a becomes b (its weight
// nb / n is then 1, and a's mean and m2 are 0); two empty sets divide nothing.
template <typename T>
__device__ __forceinline__ void chan_merge(Moments<T>& a, int64_t nb, T mean_b, T m2_b) {
  const int64_t n = a.n + nb;
  const T wb = n > 0 ? static_cast<T>(nb) / static_cast<T>(n) : T(0);
  const T delta = mean_b - a.mean;
  a.mean += delta * wb;
  a.m2 += m2_b + delta * delta * static_cast<T>(a.n) * wb;
  a.n = n;
}

// Merge of every thread's moments over the block, valid in thread 0. A lane whose shuffle
// source is past the warp's end gets its own value back and merges with itself: only lane 0's
// result is used, and it only reads lanes that are in range.
template <typename T>
__device__ void block_moments(Moments<T>& a) {
  __shared__ int64_t sn[kThreads / 32];
  __shared__ T smean[kThreads / 32], sm2[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    const int64_t nb = __shfl_down_sync(0xffffffffu, a.n, off);
    const T mean_b = __shfl_down_sync(0xffffffffu, a.mean, off);
    const T m2_b = __shfl_down_sync(0xffffffffu, a.m2, off);
    chan_merge(a, nb, mean_b, m2_b);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sn[warp] = a.n;
    smean[warp] = a.mean;
    sm2[warp] = a.m2;
  }
  __syncthreads();
  if (warp == 0) {
    const bool real = lane < kThreads / 32;
    a.n = real ? sn[lane] : int64_t(0);
    a.mean = real ? smean[lane] : T(0);
    a.m2 = real ? sm2[lane] : T(0);
    for (int off = 16; off > 0; off >>= 1) {
      const int64_t nb = __shfl_down_sync(0xffffffffu, a.n, off);
      const T mean_b = __shfl_down_sync(0xffffffffu, a.mean, off);
      const T m2_b = __shfl_down_sync(0xffffffffu, a.m2, off);
      chan_merge(a, nb, mean_b, m2_b);
    }
  }
}

// Number of a channel's `count` values that block p of P visits in stats_partial_kernel: thread
// t of block p takes the values e = p * kThreads + t + k * P * kThreads, e < count.
__device__ __forceinline__ int64_t partial_count(int64_t count, int64_t p, int64_t P) {
  const int64_t stride = P * kThreads;
  const int64_t tail = count % stride - p * kThreads;
  return count / stride * kThreads + (tail < 0 ? 0 : (tail < kThreads ? tail : kThreads));
}

// Statistics, step 1: (mean, m2) of v = x - K over block p's share of channel c, K the channel's
// first value, into ws[2 * (c * P + p)] and the next entry; partial_count gives the share's
// count. The float error of Welford and Chan grows about linearly with |mean(v)| / std: the
// shift keeps that ratio small when the mean is large compared with the spread, and a K far
// from the mean (an outlier first value) costs only that linear growth.
template <typename scalar_t, typename stat_t>
__global__ void stats_partial_kernel(const scalar_t* __restrict__ x, int64_t C, int64_t S,
                                     int64_t count, stat_t* __restrict__ ws) {
  const int64_t c = blockIdx.x, p = blockIdx.y, P = gridDim.y;
  const stat_t shift = load<stat_t>(x[c * S]);
  const int64_t first = p * kThreads + threadIdx.x, stride = P * kThreads;
  Moments<stat_t> m{0, stat_t(0), stat_t(0)};
  ChannelWalk walk(first, stride, S);
  for (int64_t e = first; e < count; e += stride, walk.next()) {
    welford_add(m, load<stat_t>(x[walk.offset(c, C)]) - shift);
  }
  block_moments(m);
  if (threadIdx.x == 0) {
    ws[2 * (c * P + p)] = m.mean;
    ws[2 * (c * P + p) + 1] = m.m2;
  }
}

// Statistics, step 2: one thread per channel merges the P shares in double; var is m2 / count,
// the biased variance (inplace_abn.py scales it to the unbiased one for the running estimate).
template <typename scalar_t, typename stat_t>
__global__ void stats_finish_kernel(const scalar_t* __restrict__ x, int64_t C, int64_t S,
                                    int64_t count, int64_t P, const stat_t* __restrict__ ws,
                                    stat_t* __restrict__ mean, stat_t* __restrict__ var) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Moments<double> m{0, 0.0, 0.0};
  for (int64_t p = 0; p < P; ++p) {
    chan_merge(m, partial_count(count, p, P), static_cast<double>(ws[2 * (c * P + p)]),
               static_cast<double>(ws[2 * (c * P + p) + 1]));
  }
  mean[c] = static_cast<stat_t>(static_cast<double>(load<stat_t>(x[c * S])) + m.mean);
  var[c] = static_cast<stat_t>(m.n > 0 ? fmax(m.m2, 0.0) / static_cast<double>(m.n) : 0.0);
}

template <typename scalar_t, typename stat_t>
__global__ void forward_kernel(scalar_t* __restrict__ x, int64_t total, int64_t C, int64_t S,
                               const stat_t* __restrict__ mean, const stat_t* __restrict__ invstd,
                               const stat_t* __restrict__ weight, const stat_t* __restrict__ bias,
                               Activation act, stat_t param) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (FlatWalk w(first, stride, C, S); w.i < total; w.next()) {
    const stat_t scale = invstd[w.c] * weight[w.c];
    const stat_t y = (load<stat_t>(x[w.i]) - mean[w.c]) * scale + bias[w.c];
    x[w.i] = Store<scalar_t>::from(activate(y, act, param));
  }
}

template <typename scalar_t, typename stat_t>
__global__ void backward_partial_kernel(const scalar_t* __restrict__ z,
                                        const scalar_t* __restrict__ dz, int64_t C, int64_t S,
                                        int64_t count, const stat_t* __restrict__ weight,
                                        const stat_t* __restrict__ bias, Activation act,
                                        stat_t param, stat_t* __restrict__ ws) {
  const int64_t c = blockIdx.x, p = blockIdx.y, P = gridDim.y;
  // xhat = (y - bias) / weight: the reason weight must be non-zero (see inplace_abn.py).
  const stat_t inv_w = stat_t(1) / weight[c], b = bias[c], inv_param = stat_t(1) / param;
  const int64_t first = p * kThreads + threadIdx.x, stride = P * kThreads;
  stat_t s_dy = 0, s_dy_xhat = 0;
  ChannelWalk walk(first, stride, S);
  for (int64_t e = first; e < count; e += stride, walk.next()) {
    const int64_t o = walk.offset(c, C);
    const PreActivation<stat_t> r =
        invert_activation(load<stat_t>(z[o]), load<stat_t>(dz[o]), act, param, inv_param);
    s_dy += r.dy;
    s_dy_xhat += r.dy * (r.y - b) * inv_w;
  }
  block_sum2(s_dy, s_dy_xhat);
  if (threadIdx.x == 0) {
    ws[2 * (c * P + p)] = s_dy;
    ws[2 * (c * P + p) + 1] = s_dy_xhat;
  }
}

template <typename stat_t>
__global__ void backward_finish_kernel(int64_t C, int64_t P, const stat_t* __restrict__ ws,
                                       stat_t* __restrict__ sum_dy,
                                       stat_t* __restrict__ sum_dy_xhat) {
  const int64_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double a = 0.0, b = 0.0;
  for (int64_t p = 0; p < P; ++p) {
    a += static_cast<double>(ws[2 * (c * P + p)]);
    b += static_cast<double>(ws[2 * (c * P + p) + 1]);
  }
  sum_dy[c] = static_cast<stat_t>(a);
  sum_dy_xhat[c] = static_cast<stat_t>(b);
}

template <typename scalar_t, typename stat_t>
__global__ void backward_apply_kernel(const scalar_t* __restrict__ z,
                                      const scalar_t* __restrict__ dz, scalar_t* __restrict__ dx,
                                      int64_t total, int64_t C, int64_t S,
                                      const stat_t* __restrict__ invstd,
                                      const stat_t* __restrict__ weight,
                                      const stat_t* __restrict__ bias,
                                      const stat_t* __restrict__ mean_dy,
                                      const stat_t* __restrict__ mean_dy_xhat, Activation act,
                                      stat_t param) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const stat_t inv_param = stat_t(1) / param;
  for (FlatWalk w(first, stride, C, S); w.i < total; w.next()) {
    const int64_t c = w.c;
    const PreActivation<stat_t> r =
        invert_activation(load<stat_t>(z[w.i]), load<stat_t>(dz[w.i]), act, param, inv_param);
    const stat_t xhat = (r.y - bias[c]) / weight[c];
    const stat_t g = r.dy - mean_dy[c] - xhat * mean_dy_xhat[c];
    dx[w.i] = Store<scalar_t>::from(g * weight[c] * invstd[c]);
  }
}

unsigned int elementwise_blocks(int64_t total) {
  return static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxElementwiseBlocks)));
}

}  // namespace

int64_t abn_partials(int64_t count) {
  // About 8 elements per thread before a block's share is worth splitting further.
  const int64_t per_block = 8 * kThreads;
  return std::max<int64_t>(1, std::min<int64_t>(kMaxPartials, (count + per_block - 1) / per_block));
}

template <typename scalar_t, typename stat_t>
cudaError_t abn_stats(const scalar_t* x, int64_t B, int64_t C, int64_t S, stat_t* mean,
                      stat_t* var, stat_t* workspace, cudaStream_t stream) {
  const int64_t count = B * S, P = abn_partials(count);
  stats_partial_kernel<scalar_t, stat_t><<<dim3(C, P), kThreads, 0, stream>>>(x, C, S, count, workspace);
  const unsigned int blocks = static_cast<unsigned int>((C + kThreads - 1) / kThreads);
  stats_finish_kernel<scalar_t, stat_t><<<blocks, kThreads, 0, stream>>>(x, C, S, count, P, workspace, mean, var);
  return cudaGetLastError();
}

template <typename scalar_t, typename stat_t>
cudaError_t abn_forward(scalar_t* x, int64_t B, int64_t C, int64_t S, const stat_t* mean,
                        const stat_t* invstd, const stat_t* weight, const stat_t* bias, int act,
                        stat_t param, cudaStream_t stream) {
  const int64_t total = B * C * S;
  forward_kernel<scalar_t, stat_t><<<elementwise_blocks(total), kThreads, 0, stream>>>(
      x, total, C, S, mean, invstd, weight, bias, static_cast<Activation>(act), param);
  return cudaGetLastError();
}

template <typename scalar_t, typename stat_t>
cudaError_t abn_backward_reduce(const scalar_t* z, const scalar_t* dz, int64_t B, int64_t C,
                                int64_t S, const stat_t* weight, const stat_t* bias, int act,
                                stat_t param, stat_t* sum_dy, stat_t* sum_dy_xhat,
                                stat_t* workspace, cudaStream_t stream) {
  const int64_t count = B * S, P = abn_partials(count);
  backward_partial_kernel<scalar_t, stat_t><<<dim3(C, P), kThreads, 0, stream>>>(
      z, dz, C, S, count, weight, bias, static_cast<Activation>(act), param, workspace);
  const unsigned int blocks = static_cast<unsigned int>((C + kThreads - 1) / kThreads);
  backward_finish_kernel<stat_t><<<blocks, kThreads, 0, stream>>>(C, P, workspace, sum_dy, sum_dy_xhat);
  return cudaGetLastError();
}

template <typename scalar_t, typename stat_t>
cudaError_t abn_backward_apply(const scalar_t* z, const scalar_t* dz, scalar_t* dx, int64_t B,
                               int64_t C, int64_t S, const stat_t* invstd, const stat_t* weight,
                               const stat_t* bias, const stat_t* mean_dy,
                               const stat_t* mean_dy_xhat, int act, stat_t param,
                               cudaStream_t stream) {
  const int64_t total = B * C * S;
  backward_apply_kernel<scalar_t, stat_t><<<elementwise_blocks(total), kThreads, 0, stream>>>(
      z, dz, dx, total, C, S, invstd, weight, bias, mean_dy, mean_dy_xhat,
      static_cast<Activation>(act), param);
  return cudaGetLastError();
}

#define SKD_INSTANTIATE(scalar_t, stat_t)                                                        \
  template cudaError_t abn_stats<scalar_t, stat_t>(const scalar_t*, int64_t, int64_t, int64_t,   \
                                                   stat_t*, stat_t*, stat_t*, cudaStream_t);     \
  template cudaError_t abn_forward<scalar_t, stat_t>(scalar_t*, int64_t, int64_t, int64_t,       \
                                                     const stat_t*, const stat_t*, const stat_t*, \
                                                     const stat_t*, int, stat_t, cudaStream_t);  \
  template cudaError_t abn_backward_reduce<scalar_t, stat_t>(                                    \
      const scalar_t*, const scalar_t*, int64_t, int64_t, int64_t, const stat_t*, const stat_t*, \
      int, stat_t, stat_t*, stat_t*, stat_t*, cudaStream_t);                                     \
  template cudaError_t abn_backward_apply<scalar_t, stat_t>(                                     \
      const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, int64_t, const stat_t*,     \
      const stat_t*, const stat_t*, const stat_t*, const stat_t*, int, stat_t, cudaStream_t);

SKD_INSTANTIATE(float, float)
SKD_INSTANTIATE(double, double)
SKD_INSTANTIATE(__half, float)
SKD_INSTANTIATE(__nv_bfloat16, float)
#undef SKD_INSTANTIATE

}  // namespace cuda
}  // namespace skd
