// Templated helpers shared by the CPU (inplace_abn_cpu.cpp, affinity_cpu.cpp) and CUDA
// (inplace_abn_cuda.cu, affinity_cuda.cu) kernels of the skd extension.
//
// Deliberately free of torch headers: nvcc compiles the .cu files against this header alone,
// which is what lets libs/check_cuda.sh compile-check them on a machine whose torch has no
// CUDA headers.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SKD_HD __host__ __device__ __forceinline__
#else
#define SKD_HD inline
#endif

namespace skd {

// Must match skd/nn/inplace_abn.py:_ACTIVATIONS.
enum class Activation : int { Identity = 0, LeakyRelu = 1, Elu = 2 };

SKD_HD float skd_exp(float v) { return expf(v); }
SKD_HD double skd_exp(double v) { return exp(v); }
SKD_HD float skd_log1p(float v) { return log1pf(v); }
SKD_HD double skd_log1p(double v) { return log1p(v); }
// The value next to -1 towards 0: -1 + 2^-24 in float, -1 + 2^-53 in double.
SKD_HD float skd_above_minus_one(float) { return -1.0f + 5.9604644775390625e-8f; }
SKD_HD double skd_above_minus_one(double) { return -1.0 + 1.1102230246251565e-16; }

// z = act(y). `param` is leaky ReLU's negative slope or ELU's alpha; both must be > 0 so that
// the activation is invertible (the Python layer checks this).
template <typename T>
SKD_HD T activate(T y, Activation act, T param) {
  switch (act) {
    case Activation::LeakyRelu:
      return y >= T(0) ? y : y * param;
    case Activation::Elu:
      return y >= T(0) ? y : param * (skd_exp(y) - T(1));
    default:
      return y;
  }
}

// What InPlace-ABN's backward recovers from the saved output z and its gradient dz: the
// pre-activation y = act^-1(z) and dy = dz * act'(y). Both activations keep the sign, so z < 0
// exactly when y < 0, and act'(y) can be written in terms of z (ELU: alpha * e^y = z + alpha).
// inv_param = 1 / param, hoisted out of the loops: a multiply is much cheaper than a divide.
template <typename T>
struct PreActivation {
  T y;
  T dy;
};

// ELU saturates: where alpha * e^y is below the rounding of z, z = -alpha (or just below, for a
// half output and an alpha that half cannot hold), log1p would give y = -inf or NaN, and the
// gradients NaN (dy = 0 times xhat = -inf). So z / alpha is clamped to the value next to -1:
// y is then finite, about where T saturates, and dy = 0.
// Written as selects rather than an if-block so that CPU compilers vectorise the loops.
template <typename T>
SKD_HD PreActivation<T> invert_activation(T z, T dz, Activation act, T param, T inv_param) {
  const bool negative = z < T(0);
  switch (act) {
    case Activation::LeakyRelu:
      return {negative ? z * inv_param : z, negative ? dz * param : dz};
    case Activation::Elu: {
      const T lo = skd_above_minus_one(T(0)), u = z * inv_param;
      return {negative ? skd_log1p(u > lo ? u : lo) : z, negative ? dz * (z + param) : dz};
    }
    default:
      return {z, dz};
  }
}

// Walks the elements of one channel of a contiguous (B, C, S) tensor with a fixed stride,
// keeping (b, s) without a division per step: element e of the channel is (b, s) = (e / S, e % S)
// and sits at offset (b * C + c) * S + s.
struct ChannelWalk {
  int64_t b, s, db, ds, S;
  SKD_HD ChannelWalk(int64_t first, int64_t stride, int64_t S_) : S(S_) {
    b = first / S;
    s = first % S;
    db = stride / S;
    ds = stride % S;
  }
  SKD_HD int64_t offset(int64_t c, int64_t C) const { return (b * C + c) * S + s; }
  SKD_HD void next() {
    b += db;
    s += ds;
    if (s >= S) {
      s -= S;
      ++b;
    }
  }
};

// Walks a contiguous (B, C, S) tensor in flat order with a fixed stride, keeping the channel of
// the current element without a division per step.
struct FlatWalk {
  int64_t i, c, s, di, dc, ds, C, S;
  SKD_HD FlatWalk(int64_t first, int64_t stride, int64_t C_, int64_t S_) : i(first), C(C_), S(S_) {
    s = first % S;
    c = (first / S) % C;
    di = stride;
    ds = stride % S;
    dc = (stride / S) % C;
  }
  SKD_HD void next() {
    i += di;
    s += ds;
    int64_t carry = 0;
    if (s >= S) {
      s -= S;
      carry = 1;
    }
    c += dc + carry;  // < 2C, since dc + carry <= C
    if (c >= C) c -= C;
  }
};

}  // namespace skd
