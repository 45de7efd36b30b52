// Pair-wise affinity distance on CUDA (launcher declared in skd_cuda.h).
//
// One block per (row block of kTile nodes, image). It walks the column blocks; for each it builds
// the kTile x kTile block d = T_I T_J^T - S_I S_J^T of the graph difference in shared memory from
// shared-memory tiles of the node features, adds sum(d^2) to its partial loss, and adds
// -4 d S_J (and 4 d T_J) to the gradient rows of its row block, which no other block writes.
// Nothing of size N x N ever exists.
#include <algorithm>

#include "skd_cuda.h"

namespace skd {
namespace cuda {
namespace {

constexpr int kTile = 32;     // nodes per row / column block
constexpr int kChunk = 32;    // feature channels per shared-memory tile
constexpr int kThreads = 256; // 8 warps; thread (ty, tx) owns rows ty + 8q, q < 4, column tx
constexpr int kRowsPerThread = kTile / (kThreads / kTile);
constexpr int64_t kMaxGridY = 65535;

// acc[q] += sign * sum_k X[i0 + ty + 8q, k] * X[j0 + tx, k] over the C channels of X (N, C).
template <typename T>
__device__ void accumulate_products(const T* __restrict__ X, int64_t N, int64_t C, int64_t i0,
                                    int64_t j0, T sign, T (&rows)[kTile][kChunk + 1],
                                    T (&cols)[kTile][kChunk + 1], T (&acc)[kRowsPerThread]) {
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  for (int64_t k0 = 0; k0 < C; k0 += kChunk) {
    for (int idx = threadIdx.x; idx < kTile * kChunk; idx += kThreads) {
      const int r = idx / kChunk, k = idx % kChunk;
      const bool k_in = k0 + k < C;
      rows[r][k] = (i0 + r < N && k_in) ? X[(i0 + r) * C + k0 + k] : T(0);
      cols[r][k] = (j0 + r < N && k_in) ? X[(j0 + r) * C + k0 + k] : T(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kChunk; ++k) {
      const T col = cols[tx][k];
#pragma unroll
      for (int q = 0; q < kRowsPerThread; ++q) acc[q] += sign * rows[ty + 8 * q][k] * col;
    }
    __syncthreads();
  }
}

// G[i0 + i, :] += scale * sum_j d[i][j] X[j0 + j, :] for the rows i of the block that exist.
template <typename T>
__device__ void accumulate_gradient(const T* __restrict__ X, T* __restrict__ G, int64_t N, int64_t C,
                                    int64_t i0, int64_t j0, T scale, const T (&d)[kTile][kTile + 1],
                                    T (&cols)[kTile][kChunk + 1]) {
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    for (int idx = threadIdx.x; idx < kTile * kChunk; idx += kThreads) {
      const int j = idx / kChunk, k = idx % kChunk;
      cols[j][k] = (j0 + j < N && c0 + k < C) ? X[(j0 + j) * C + c0 + k] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) {
      const int i = ty + 8 * q;
      T out = 0;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) out += d[i][j] * cols[j][tx];
      if (i0 + i < N && c0 + tx < C) G[(i0 + i) * C + c0 + tx] += scale * out;
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
affinity_kernel(const T* __restrict__ s, const T* __restrict__ t, int64_t N, int64_t Cs, int64_t Ct,
                T* __restrict__ partial, T* __restrict__ gs, T* __restrict__ gt) {
  __shared__ T rows[kTile][kChunk + 1];
  __shared__ T cols[kTile][kChunk + 1];
  __shared__ T d[kTile][kTile + 1];
  __shared__ T warp_sums[kThreads / 32];

  const int64_t b = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const T* sb = s + b * N * Cs;
  const T* tb = t + b * N * Ct;
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  T loss = 0;

  for (int64_t j0 = 0; j0 < N; j0 += kTile) {
    T acc[kRowsPerThread] = {};
    accumulate_products(tb, N, Ct, i0, j0, T(1), rows, cols, acc);
    accumulate_products(sb, N, Cs, i0, j0, T(-1), rows, cols, acc);
    // Rows or columns past N were loaded as zeros, so their d is exactly 0.
#pragma unroll
    for (int q = 0; q < kRowsPerThread; ++q) {
      d[ty + 8 * q][tx] = acc[q];
      loss += acc[q] * acc[q];
    }
    __syncthreads();
    if (gs != nullptr) accumulate_gradient(sb, gs + b * N * Cs, N, Cs, i0, j0, T(-4), d, cols);
    if (gt != nullptr) accumulate_gradient(tb, gt + b * N * Ct, N, Ct, i0, j0, T(4), d, cols);
    __syncthreads();  // d is rewritten by the next column block
  }

  for (int off = 16; off > 0; off >>= 1) loss += __shfl_down_sync(0xffffffffu, loss, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = loss;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partial[b * gridDim.x + blockIdx.x] = total;
  }
}

}  // namespace

int64_t affinity_row_tiles(int64_t N) { return (N + kTile - 1) / kTile; }

template <typename T>
cudaError_t affinity_forward(const T* s, const T* t, int64_t B, int64_t N, int64_t Cs, int64_t Ct,
                             T* partial, T* gs, T* gt, cudaStream_t stream) {
  const int64_t tiles = affinity_row_tiles(N);
  // The images go in gridDim.y, which is at most 65535: larger batches take several launches.
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridY) {
    const dim3 grid(static_cast<unsigned int>(tiles),
                    static_cast<unsigned int>(std::min(B - b0, kMaxGridY)));
    affinity_kernel<T><<<grid, kThreads, 0, stream>>>(
        s + b0 * N * Cs, t + b0 * N * Ct, N, Cs, Ct, partial + b0 * tiles,
        gs == nullptr ? nullptr : gs + b0 * N * Cs, gt == nullptr ? nullptr : gt + b0 * N * Ct);
  }
  return cudaGetLastError();
}

template cudaError_t affinity_forward<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                             int64_t, float*, float*, float*, cudaStream_t);
template cudaError_t affinity_forward<double>(const double*, const double*, int64_t, int64_t,
                                              int64_t, int64_t, double*, double*, double*,
                                              cudaStream_t);

}  // namespace cuda
}  // namespace skd
