// The CUDA half of skd_ops.h: allocates outputs, takes torch's current stream and device, and
// calls the raw-pointer launchers of skd_cuda.h. The only file that needs torch's CUDA headers,
// so skd/ext.py compiles it only when torch has CUDA (torch.version.cuda) and nvcc is present.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>
#include <type_traits>

#include "skd_cuda.h"
#include "skd_ops.h"

namespace skd {
namespace cuda {
namespace {

// The CUDA type with the layout of each torch scalar type.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename DeviceType<T>::type* dev(const at::Tensor& x) {
  return reinterpret_cast<const typename DeviceType<T>::type*>(x.const_data_ptr<T>());
}

template <typename T>
typename DeviceType<T>::type* dev_mut(const at::Tensor& x) {
  return reinterpret_cast<typename DeviceType<T>::type*>(x.mutable_data_ptr<T>());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "skd_ext: CUDA ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream_of(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

#define SKD_DISPATCH(x, name, ...)                                                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), name, [&] { \
    using stat_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;  \
    __VA_ARGS__                                                                          \
  })

}  // namespace

std::tuple<at::Tensor, at::Tensor> abn_stats(const at::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape sh = shape_of(x);
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor mean = at::empty({sh.C}, x.options().dtype(stat_type));
  at::Tensor var = at::empty_like(mean);
  at::Tensor ws = at::empty({2 * sh.C * abn_partials(sh.B * sh.S)}, mean.options());
  SKD_DISPATCH(x, "skd_abn_stats_cuda", {
    check_launch(abn_stats(dev<scalar_t>(x), sh.B, sh.C, sh.S, mean.mutable_data_ptr<stat_t>(),
                           var.mutable_data_ptr<stat_t>(), ws.mutable_data_ptr<stat_t>(),
                           stream_of(x)),
                 "abn_stats");
  });
  return {mean, var};
}

void abn_forward_(at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                  const at::Tensor& weight, const at::Tensor& bias, int64_t act, double param) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape sh = shape_of(x);
  SKD_DISPATCH(x, "skd_abn_forward_cuda", {
    check_launch(abn_forward(dev_mut<scalar_t>(x), sh.B, sh.C, sh.S, mean.const_data_ptr<stat_t>(),
                             invstd.const_data_ptr<stat_t>(), weight.const_data_ptr<stat_t>(),
                             bias.const_data_ptr<stat_t>(), static_cast<int>(act),
                             static_cast<stat_t>(param), stream_of(x)),
                 "abn_forward");
  });
}

std::tuple<at::Tensor, at::Tensor> abn_backward_reduce(const at::Tensor& z, const at::Tensor& dz,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, int64_t act,
                                                       double param) {
  const c10::cuda::CUDAGuard guard(z.device());
  const Shape sh = shape_of(z);
  at::Tensor sum_dy = at::empty_like(weight);
  at::Tensor sum_dy_xhat = at::empty_like(weight);
  if (sh.B * sh.S == 0) return {sum_dy.zero_(), sum_dy_xhat.zero_()};
  at::Tensor ws = at::empty({2 * sh.C * abn_partials(sh.B * sh.S)}, weight.options());
  SKD_DISPATCH(z, "skd_abn_backward_reduce_cuda", {
    check_launch(abn_backward_reduce(dev<scalar_t>(z), dev<scalar_t>(dz), sh.B, sh.C, sh.S,
                                     weight.const_data_ptr<stat_t>(), bias.const_data_ptr<stat_t>(),
                                     static_cast<int>(act), static_cast<stat_t>(param),
                                     sum_dy.mutable_data_ptr<stat_t>(),
                                     sum_dy_xhat.mutable_data_ptr<stat_t>(),
                                     ws.mutable_data_ptr<stat_t>(), stream_of(z)),
                 "abn_backward_reduce");
  });
  return {sum_dy, sum_dy_xhat};
}

at::Tensor abn_backward_apply(const at::Tensor& z, const at::Tensor& dz, const at::Tensor& invstd,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& mean_dy, const at::Tensor& mean_dy_xhat,
                              int64_t act, double param) {
  const c10::cuda::CUDAGuard guard(z.device());
  const Shape sh = shape_of(z);
  at::Tensor dx = at::empty_like(z);
  if (dx.numel() == 0) return dx;
  SKD_DISPATCH(z, "skd_abn_backward_apply_cuda", {
    check_launch(abn_backward_apply(dev<scalar_t>(z), dev<scalar_t>(dz), dev_mut<scalar_t>(dx),
                                    sh.B, sh.C, sh.S, invstd.const_data_ptr<stat_t>(),
                                    weight.const_data_ptr<stat_t>(), bias.const_data_ptr<stat_t>(),
                                    mean_dy.const_data_ptr<stat_t>(),
                                    mean_dy_xhat.const_data_ptr<stat_t>(), static_cast<int>(act),
                                    static_cast<stat_t>(param), stream_of(z)),
                 "abn_backward_apply");
  });
  return dx;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affinity_forward(const at::Tensor& s,
                                                                const at::Tensor& t, bool grad_s,
                                                                bool grad_t) {
  const c10::cuda::CUDAGuard guard(s.device());
  const int64_t B = s.size(0), N = s.size(1), Cs = s.size(2), Ct = t.size(2);
  at::Tensor gs = grad_s ? at::zeros_like(s) : at::Tensor();
  at::Tensor gt = grad_t ? at::zeros_like(t) : at::Tensor();
  if (B == 0 || N == 0) return {at::zeros({B}, s.options()), gs, gt};
  at::Tensor partial = at::empty({B, affinity_row_tiles(N)}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "skd_affinity_cuda", [&] {
    check_launch(affinity_forward(s.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), B, N,
                                  Cs, Ct, partial.mutable_data_ptr<scalar_t>(),
                                  grad_s ? gs.mutable_data_ptr<scalar_t>() : nullptr,
                                  grad_t ? gt.mutable_data_ptr<scalar_t>() : nullptr,
                                  stream_of(s)),
                 "affinity_forward");
  });
  return {partial.sum(1), gs, gt};
}

}  // namespace cuda
}  // namespace skd
