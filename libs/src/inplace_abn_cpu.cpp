// InPlace-ABN on CPU: statistics, the in-place forward, and the backward from the output.
// Arguments were checked by dispatch.cpp (contiguous, same device, (C,) per-channel tensors in
// the statistics dtype). Sums accumulate in double whatever the input dtype; `omp simd
// reduction` lets the compiler vectorise them without -ffast-math. The activation is a template
// parameter so that the inner loops carry no switch.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <type_traits>

#include <tuple>

#include "skd_ext.h"
#include "skd_ops.h"

namespace skd {
namespace cpu {
namespace {

// Parallel tasks of about this many elements: fewer would drown in scheduling. The loop bodies
// capture by value ([=]) so that GCC sees no aliasing through the closure and vectorises.
constexpr int64_t kGrainElements = 32768;

int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

template <typename scalar_t, typename stat_t>
void stats_kernel(const at::Tensor& x, at::Tensor& mean, at::Tensor& var) {
  const Shape sh = shape_of(x);
  const scalar_t* px = x.const_data_ptr<scalar_t>();
  stat_t* pm = mean.mutable_data_ptr<stat_t>();
  stat_t* pv = var.mutable_data_ptr<stat_t>();
  const double n = static_cast<double>(sh.B * sh.S);
  at::parallel_for(0, sh.C, grain(sh.B * sh.S), [=](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      // Two passes: sum((x - mean)^2) does not cancel the way sum(x^2) - n * mean^2 does.
      double sum = 0.0;
      for (int64_t b = 0; b < sh.B; ++b) {
        const scalar_t* row = px + (b * sh.C + c) * sh.S;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < sh.S; ++s) sum += static_cast<double>(row[s]);
      }
      const double mu = sum / n;
      double m2 = 0.0;
      for (int64_t b = 0; b < sh.B; ++b) {
        const scalar_t* row = px + (b * sh.C + c) * sh.S;
#pragma omp simd reduction(+ : m2)
        for (int64_t s = 0; s < sh.S; ++s) {
          const double d = static_cast<double>(row[s]) - mu;
          m2 += d * d;
        }
      }
      pm[c] = static_cast<stat_t>(mu);
      pv[c] = static_cast<stat_t>(m2 / n);
    }
  });
}

template <typename scalar_t, typename stat_t, Activation act>
void forward_kernel(at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                    const at::Tensor& weight, const at::Tensor& bias, stat_t param) {
  const Shape sh = shape_of(x);
  scalar_t* px = x.mutable_data_ptr<scalar_t>();
  const stat_t* pm = mean.const_data_ptr<stat_t>();
  const stat_t* pi = invstd.const_data_ptr<stat_t>();
  const stat_t* pw = weight.const_data_ptr<stat_t>();
  const stat_t* pb = bias.const_data_ptr<stat_t>();
  // One item per (b, c) plane: the affine map is constant along it.
  at::parallel_for(0, sh.B * sh.C, grain(sh.S), [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % sh.C;
      const stat_t scale = pi[c] * pw[c];
      const stat_t shift = pb[c] - pm[c] * scale;
      scalar_t* row = px + p * sh.S;
#pragma omp simd
      for (int64_t s = 0; s < sh.S; ++s) {
        const stat_t y = static_cast<stat_t>(row[s]) * scale + shift;
        row[s] = static_cast<scalar_t>(activate(y, act, param));
      }
    }
  });
}

template <typename scalar_t, typename stat_t, Activation act>
void backward_reduce_kernel(const at::Tensor& z, const at::Tensor& dz, const at::Tensor& weight,
                            const at::Tensor& bias, stat_t param, at::Tensor& sum_dy,
                            at::Tensor& sum_dy_xhat) {
  const Shape sh = shape_of(z);
  const scalar_t* pz = z.const_data_ptr<scalar_t>();
  const scalar_t* pdz = dz.const_data_ptr<scalar_t>();
  const stat_t* pw = weight.const_data_ptr<stat_t>();
  const stat_t* pb = bias.const_data_ptr<stat_t>();
  stat_t* ps = sum_dy.mutable_data_ptr<stat_t>();
  stat_t* psx = sum_dy_xhat.mutable_data_ptr<stat_t>();
  const stat_t inv_param = stat_t(1) / param;
  at::parallel_for(0, sh.C, grain(sh.B * sh.S), [=](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      // xhat = (y - bias) / weight: the reason weight must be non-zero (see inplace_abn.py).
      const stat_t inv_w = stat_t(1) / pw[c], bc = pb[c];
      // stat_t within a plane (vectorised: several partial sums), double across planes.
      double s_dy = 0.0, s_dy_xhat = 0.0;
      for (int64_t b = 0; b < sh.B; ++b) {
        const int64_t base = (b * sh.C + c) * sh.S;
        stat_t p_dy = 0, p_dy_xhat = 0;
#pragma omp simd reduction(+ : p_dy, p_dy_xhat)
        for (int64_t s = 0; s < sh.S; ++s) {
          const PreActivation<stat_t> r = invert_activation(
              static_cast<stat_t>(pz[base + s]), static_cast<stat_t>(pdz[base + s]), act, param, inv_param);
          p_dy += r.dy;
          p_dy_xhat += r.dy * (r.y - bc) * inv_w;
        }
        s_dy += static_cast<double>(p_dy);
        s_dy_xhat += static_cast<double>(p_dy_xhat);
      }
      ps[c] = static_cast<stat_t>(s_dy);
      psx[c] = static_cast<stat_t>(s_dy_xhat);
    }
  });
}

template <typename scalar_t, typename stat_t, Activation act>
void backward_apply_kernel(const at::Tensor& z, const at::Tensor& dz, const at::Tensor& invstd,
                           const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& mean_dy, const at::Tensor& mean_dy_xhat,
                           stat_t param, at::Tensor& dx) {
  const Shape sh = shape_of(z);
  const scalar_t* pz = z.const_data_ptr<scalar_t>();
  const scalar_t* pdz = dz.const_data_ptr<scalar_t>();
  scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
  const stat_t* pi = invstd.const_data_ptr<stat_t>();
  const stat_t* pw = weight.const_data_ptr<stat_t>();
  const stat_t* pb = bias.const_data_ptr<stat_t>();
  const stat_t* pm = mean_dy.const_data_ptr<stat_t>();
  const stat_t* pmx = mean_dy_xhat.const_data_ptr<stat_t>();
  const stat_t inv_param = stat_t(1) / param;
  at::parallel_for(0, sh.B * sh.C, grain(sh.S), [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c = p % sh.C;
      const stat_t inv_w = stat_t(1) / pw[c], bc = pb[c], mc = pm[c], mxc = pmx[c];
      const stat_t gain = pw[c] * pi[c];
      const int64_t base = p * sh.S;
#pragma omp simd
      for (int64_t s = 0; s < sh.S; ++s) {
        const PreActivation<stat_t> r = invert_activation(
            static_cast<stat_t>(pz[base + s]), static_cast<stat_t>(pdz[base + s]), act, param, inv_param);
        const stat_t xhat = (r.y - bc) * inv_w;
        pdx[base + s] = static_cast<scalar_t>((r.dy - mc - xhat * mxc) * gain);
      }
    }
  });
}

// Calls body with the activation as a compile-time constant `kAct`.
#define SKD_DISPATCH_ACTIVATION(act, ...)                                  \
  [&] {                                                                    \
    switch (static_cast<Activation>(act)) {                                \
      case Activation::LeakyRelu: {                                        \
        constexpr Activation kAct = Activation::LeakyRelu;                 \
        return __VA_ARGS__();                                              \
      }                                                                    \
      case Activation::Elu: {                                              \
        constexpr Activation kAct = Activation::Elu;                       \
        return __VA_ARGS__();                                              \
      }                                                                    \
      default: {                                                           \
        constexpr Activation kAct = Activation::Identity;                  \
        return __VA_ARGS__();                                              \
      }                                                                    \
    }                                                                      \
  }()

}  // namespace

std::tuple<at::Tensor, at::Tensor> abn_stats(const at::Tensor& x) {
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({x.size(1)}, x.options().dtype(stat_type));
  at::Tensor var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "skd_abn_stats", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    stats_kernel<scalar_t, stat_t>(x, mean, var);
  });
  return {mean, var};
}

void abn_forward_(at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                  const at::Tensor& weight, const at::Tensor& bias, int64_t act, double param) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "skd_abn_forward", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    SKD_DISPATCH_ACTIVATION(act, [&] {
      forward_kernel<scalar_t, stat_t, kAct>(x, mean, invstd, weight, bias,
                                             static_cast<stat_t>(param));
    });
  });
}

std::tuple<at::Tensor, at::Tensor> abn_backward_reduce(const at::Tensor& z, const at::Tensor& dz,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, int64_t act,
                                                       double param) {
  at::Tensor sum_dy = at::empty_like(weight);
  at::Tensor sum_dy_xhat = at::empty_like(weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "skd_abn_backward_reduce", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    SKD_DISPATCH_ACTIVATION(act, [&] {
      backward_reduce_kernel<scalar_t, stat_t, kAct>(z, dz, weight, bias,
                                                     static_cast<stat_t>(param), sum_dy, sum_dy_xhat);
    });
  });
  return {sum_dy, sum_dy_xhat};
}

at::Tensor abn_backward_apply(const at::Tensor& z, const at::Tensor& dz, const at::Tensor& invstd,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& mean_dy, const at::Tensor& mean_dy_xhat,
                              int64_t act, double param) {
  at::Tensor dx = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "skd_abn_backward_apply", [&] {
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    SKD_DISPATCH_ACTIVATION(act, [&] {
      backward_apply_kernel<scalar_t, stat_t, kAct>(z, dz, invstd, weight, bias, mean_dy,
                                                    mean_dy_xhat, static_cast<stat_t>(param), dx);
    });
  });
  return dx;
}

}  // namespace cpu
}  // namespace skd
