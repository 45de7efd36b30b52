// Python module of the skd extension: checks the arguments once, then sends each call to the
// CPU implementation or, in builds with SKD_WITH_CUDA, to the CUDA one (cuda_binding.cpp).
// skd/ext.py builds it; skd/nn/inplace_abn.py and skd/nn/affinity.py call it.
// pybind.h (Tensor <-> Python conversions) rather than torch/extension.h: half the compile time.
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <tuple>

#include "skd_ops.h"

namespace py = pybind11;

namespace {

at::ScalarType stat_type_of(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 2, "skd_ext: ", name, " must be (B, C, *), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "skd_ext: ", name,
              " must be floating point, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "skd_ext: ", name, " must be contiguous");
  TORCH_CHECK(x.device().is_cpu() || x.device().is_cuda(), "skd_ext: ", name,
              " on unsupported device ", x.device());
}

void check_same(const at::Tensor& x, const at::Tensor& y, const char* name) {
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() &&
                  y.device() == x.device() && y.is_contiguous(),
              "skd_ext: ", name, " must be contiguous and match the input (", x.sizes(), ", ",
              x.scalar_type(), ", ", x.device(), "), got (", y.sizes(), ", ", y.scalar_type(),
              ", ", y.device(), ")");
}

void check_channel(const at::Tensor& x, const at::Tensor& v, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == x.size(1) && v.scalar_type() == stat_type_of(x) &&
                  v.device() == x.device() && v.is_contiguous(),
              "skd_ext: ", name, " must be a contiguous (", x.size(1), ",) ", stat_type_of(x),
              " tensor on ", x.device(), ", got ", v.sizes(), " ", v.scalar_type(), " on ",
              v.device());
}

void check_activation(int64_t act, double param) {
  TORCH_CHECK(act >= 0 && act <= 2, "skd_ext: unknown activation code ", act);
  TORCH_CHECK(act == 0 || param > 0.0,
              "skd_ext: the activation parameter must be > 0 to be invertible, got ", param);
}

bool on_cuda(const at::Tensor& x) {
#ifdef SKD_WITH_CUDA
  return x.is_cuda();
#else
  TORCH_CHECK(!x.is_cuda(), "skd_ext was built without CUDA kernels; rebuild it with nvcc on PATH",
              " (python libs/build.py) or set SKD_EXT=0");
  return false;
#endif
}

// Each wrapper forwards to skd::cuda:: or skd::cpu::. The CUDA names only exist in CUDA builds.
#ifdef SKD_WITH_CUDA
#define SKD_CALL(x, fn, ...) (on_cuda(x) ? skd::cuda::fn(__VA_ARGS__) : skd::cpu::fn(__VA_ARGS__))
#else
#define SKD_CALL(x, fn, ...) ((void)on_cuda(x), skd::cpu::fn(__VA_ARGS__))
#endif

std::tuple<at::Tensor, at::Tensor> abn_stats(const at::Tensor& x) {
  check_input(x, "x");
  TORCH_CHECK(x.numel() > 0, "skd_ext: abn_stats of an empty tensor");
  return SKD_CALL(x, abn_stats, x);
}

void abn_forward_(at::Tensor x, const at::Tensor& mean, const at::Tensor& invstd,
                  const at::Tensor& weight, const at::Tensor& bias, int64_t act, double param) {
  check_input(x, "x");
  check_channel(x, mean, "mean");
  check_channel(x, invstd, "invstd");
  check_channel(x, weight, "weight");
  check_channel(x, bias, "bias");
  check_activation(act, param);
  if (x.numel() == 0) return;
  SKD_CALL(x, abn_forward_, x, mean, invstd, weight, bias, act, param);
}

std::tuple<at::Tensor, at::Tensor> abn_backward_reduce(const at::Tensor& z, const at::Tensor& dz,
                                                       const at::Tensor& weight,
                                                       const at::Tensor& bias, int64_t act,
                                                       double param) {
  check_input(z, "z");
  check_same(z, dz, "dz");
  check_channel(z, weight, "weight");
  check_channel(z, bias, "bias");
  check_activation(act, param);
  return SKD_CALL(z, abn_backward_reduce, z, dz, weight, bias, act, param);
}

at::Tensor abn_backward_apply(const at::Tensor& z, const at::Tensor& dz, const at::Tensor& invstd,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& mean_dy, const at::Tensor& mean_dy_xhat,
                              int64_t act, double param) {
  check_input(z, "z");
  check_same(z, dz, "dz");
  check_channel(z, invstd, "invstd");
  check_channel(z, weight, "weight");
  check_channel(z, bias, "bias");
  check_channel(z, mean_dy, "mean_dy");
  check_channel(z, mean_dy_xhat, "mean_dy_xhat");
  check_activation(act, param);
  return SKD_CALL(z, abn_backward_apply, z, dz, invstd, weight, bias, mean_dy, mean_dy_xhat, act,
                  param);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> affinity_forward(const at::Tensor& s,
                                                                const at::Tensor& t, bool grad_s,
                                                                bool grad_t) {
  TORCH_CHECK(s.dim() == 3 && t.dim() == 3 && s.size(0) == t.size(0) && s.size(1) == t.size(1),
              "skd_ext: affinity_forward needs s (B, N, Cs) and t (B, N, Ct), got ", s.sizes(),
              " and ", t.sizes());
  TORCH_CHECK((s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble) &&
                  t.scalar_type() == s.scalar_type(),
              "skd_ext: affinity_forward needs float32 or float64 s and t of one dtype, got ",
              s.scalar_type(), " and ", t.scalar_type());
  TORCH_CHECK(s.device() == t.device(), "skd_ext: s on ", s.device(), " but t on ", t.device());
  TORCH_CHECK(s.is_contiguous() && t.is_contiguous(), "skd_ext: s and t must be contiguous");
  return SKD_CALL(s, affinity_forward, s, t, grad_s, grad_t);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "skd C++/CUDA kernels: InPlace-ABN and the pair-wise affinity distance";
#ifdef SKD_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("abn_stats", &abn_stats, "per-channel mean and biased variance of (B, C, *) x",
        py::arg("x"));
  m.def("abn_forward_", &abn_forward_, "x <- act((x - mean) * invstd * weight + bias) in place",
        py::arg("x"), py::arg("mean"), py::arg("invstd"), py::arg("weight"), py::arg("bias"),
        py::arg("act"), py::arg("param"));
  m.def("abn_backward_reduce", &abn_backward_reduce,
        "per-channel sum(dy) and sum(dy * xhat) recovered from the output z and its gradient dz",
        py::arg("z"), py::arg("dz"), py::arg("weight"), py::arg("bias"), py::arg("act"),
        py::arg("param"));
  m.def("abn_backward_apply", &abn_backward_apply, "input gradient of InPlace-ABN",
        py::arg("z"), py::arg("dz"), py::arg("invstd"), py::arg("weight"), py::arg("bias"),
        py::arg("mean_dy"), py::arg("mean_dy_xhat"), py::arg("act"), py::arg("param"));
  m.def("affinity_forward", &affinity_forward,
        "per-image sum_ij (t_i.t_j - s_i.s_j)^2 and optionally its gradients w.r.t. s and t",
        py::arg("s"), py::arg("t"), py::arg("grad_s"), py::arg("grad_t"));
}
