// The core's fused extension (aaren_rl.ops.fused): the folded backbone steps of fused.h as one C++ call
// each, the scan's training form token by token with its reverse pass (scan_forward, scan_backward), and
// the parameter-version check of aaren_rl.folded.ParameterVersions.
#include <ATen/Parallel.h>

#include <utility>

#include "fused.h"

using aaren_rl::aaren_step_impl;
using aaren_rl::transformer_step_impl;
using at::Tensor;

namespace {

// e^{a - b} for a <= b, 0 where a is -inf (an empty state, a masked score): never the NaN of -inf - -inf.
template <typename T>
T decay(T a, T b) {
  return a == -std::numeric_limits<T>::infinity() ? T(0) : std::exp(a - b);
}

// The scan of aaren_rl/functional.py token by token, one (row, head) at a time: the recurrent step's
// arithmetic, with each token's running max M_k and denominator u_k kept for the reverse pass.
template <typename T>
std::vector<Tensor> scan_forward_impl(const Tensor& s, const Tensor& v, const Tensor& m0, const Tensor& u0,
                                      const Tensor& w0, const bool* resets) {
  const int64_t h = s.size(1), n = s.size(2), d = v.size(3), rows = s.size(0) * h;
  Tensor out = at::empty_like(v), run_max = at::empty_like(s), den = at::empty_like(s);
  Tensor u_end = at::empty_like(u0), w_end = w0.clone();
  const T *sp = s.data_ptr<T>(), *vp = v.data_ptr<T>(), *m0p = m0.data_ptr<T>(), *u0p = u0.data_ptr<T>();
  T *op = out.data_ptr<T>(), *maxp = run_max.data_ptr<T>(), *denp = den.data_ptr<T>();
  T *u_endp = u_end.data_ptr<T>(), *w_endp = w_end.data_ptr<T>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const bool* reset = resets ? resets + row / h * n : nullptr;
      T m = m0p[row], u = u0p[row];
      T* w = w_endp + row * d;  // the running numerator, left as the returned state
      for (int64_t k = 0; k < n; ++k) {
        if (reset && reset[k]) {
          m = -std::numeric_limits<T>::infinity(), u = T(0);
          std::fill(w, w + d, T(0));
        }
        const int64_t t = row * n + k;
        const T mk = std::max(m, sp[t]), keep = decay(m, mk), add = decay(sp[t], mk);
        u = u * keep + add;
        const T inv_u = T(1) / u;
        const T* vk = vp + t * d;
        T* ok = op + t * d;
        for (int64_t i = 0; i < d; ++i) {
          w[i] = w[i] * keep + add * vk[i];
          ok[i] = w[i] * inv_u;
        }
        m = mk, maxp[t] = mk, denp[t] = u;
      }
      u_endp[row] = u;
    }
  });
  return {out, run_max, den, u_end, w_end};
}

// The reverse pass of scan_forward_impl. Going back from the last token, R (per value dimension) and Q
// gather sum_{k >= j} e^{M_j - M_k} g_k / u_k and sum_{k >= j} e^{M_j - M_k} (g_k . out_k) / u_k, starting
// from the returned state's gradients (g_w, -g_u) and cut where a reset starts the next token's sequence;
// then d v_j = e^{s_j - M_j} R_j and d s_j = e^{s_j - M_j} (v_j . R_j - Q_j). The entering state is a
// token of score m0 before the first (unless that token resets): d w0 = e^{m0 - M_0} R_0, d u0 = -e^{m0 -
// M_0} Q_0.
template <typename T>
std::vector<Tensor> scan_backward_impl(const Tensor& g_out, const Tensor& g_u, const Tensor& g_w, const Tensor& s,
                                       const Tensor& v, const Tensor& out, const Tensor& run_max, const Tensor& den,
                                       const Tensor& m0, const bool* resets) {
  const int64_t h = s.size(1), n = s.size(2), d = v.size(3), rows = s.size(0) * h;
  Tensor grad_s = at::empty_like(s), grad_v = at::empty_like(v), grad_u0 = at::empty_like(m0);
  Tensor grad_w0 = g_w.clone();  // R, gathered in place, ends as d w0
  const T *gp = g_out.data_ptr<T>(), *gup = g_u.data_ptr<T>(), *sp = s.data_ptr<T>(), *vp = v.data_ptr<T>();
  const T *op = out.data_ptr<T>(), *maxp = run_max.data_ptr<T>(), *denp = den.data_ptr<T>(), *m0p = m0.data_ptr<T>();
  T *gsp = grad_s.data_ptr<T>(), *gvp = grad_v.data_ptr<T>(), *gu0p = grad_u0.data_ptr<T>();
  T* gw0p = grad_w0.data_ptr<T>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const bool* reset = resets ? resets + row / h * n : nullptr;
      T* r = gw0p + row * d;
      T q = -gup[row], later_max = maxp[row * n + n - 1];
      for (int64_t k = n - 1; k >= 0; --k) {
        const int64_t t = row * n + k;
        const bool cut = reset && k + 1 < n && reset[k + 1];
        const T carry = cut ? T(0) : decay(maxp[t], later_max);
        const T inv_u = T(1) / denp[t];
        const T *gk = gp + t * d, *ok = op + t * d, *vk = vp + t * d;
        T g_dot_out = T(0), v_dot_r = T(0);
        for (int64_t i = 0; i < d; ++i) {
          r[i] = r[i] * carry + gk[i] * inv_u;
          g_dot_out += gk[i] * ok[i];
          v_dot_r += vk[i] * r[i];
        }
        q = q * carry + g_dot_out * inv_u;
        const T weight = decay(sp[t], maxp[t]);
        T* gvk = gvp + t * d;
        for (int64_t i = 0; i < d; ++i) gvk[i] = weight * r[i];
        gsp[t] = weight * (v_dot_r - q);
        later_max = maxp[t];
      }
      const T enter = reset && reset[0] ? T(0) : decay(m0p[row], maxp[row * n]);
      for (int64_t i = 0; i < d; ++i) r[i] *= enter;
      gu0p[row] = -enter * q;
    }
  });
  return {grad_s, grad_v, grad_u0, grad_w0};
}

}  // namespace

// x [n T, D] new tokens; m, u, w the state; mask [n|1, 1, T, T + 1] or None; score bias [n|1, H, T]
// or None. Returns the output at the newest token [n, D] and the new m, u, w.
std::vector<Tensor> aaren_step(const Tensor& x, const Tensor& m, const Tensor& u, const Tensor& w,
                               const c10::optional<Tensor>& mask, const c10::optional<Tensor>& bias,
                               int64_t n, const std::vector<Tensor>& weights, double eps) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "aaren_step", [&] {
    return aaren_step_impl<scalar_t>(x, m, u, w, mask, nullptr, bias, n, weights, eps);
  });
}

// x [n T, D] from an empty cache; read [n] long. Returns the output at position read[b] of each row.
Tensor transformer_step(const Tensor& x, const Tensor& read, int64_t n, int64_t heads,
                        const std::vector<Tensor>& weights, double eps) {
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "transformer_step", [&] {
    return transformer_step_impl<scalar_t>(x, read, n, heads, weights, eps);
  });
}

// The Aaren scan's training form as one sequential pass (aaren_rl.functional._FusedScan): scores s
// [B, H, N], values v [B, H, N, Dh], entering state m0, u0 [B, H] and w0 [B, H, Dh], resets [B, N] bool or
// None; all contiguous, of one dtype. Returns out [B, H, N, Dh], each token's running max and denominator
// [B, H, N] (for the reverse pass), and the returned state's u [B, H] and w [B, H, Dh].
std::vector<Tensor> scan_forward(const Tensor& s, const Tensor& v, const Tensor& m0, const Tensor& u0,
                                 const Tensor& w0, const c10::optional<Tensor>& resets) {
  const bool* reset = resets ? resets->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "scan_forward", [&] {
    return scan_forward_impl<scalar_t>(s, v, m0, u0, w0, reset);
  });
}

// Gradients of scan_forward's outputs (g_out [B, H, N, Dh], the returned u's g_u [B, H] and w's g_w
// [B, H, Dh]) -> gradients of s, v, u0 and w0.
std::vector<Tensor> scan_backward(const Tensor& g_out, const Tensor& g_u, const Tensor& g_w, const Tensor& s,
                                  const Tensor& v, const Tensor& out, const Tensor& run_max, const Tensor& den,
                                  const Tensor& m0, const c10::optional<Tensor>& resets) {
  const bool* reset = resets ? resets->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "scan_backward", [&] {
    return scan_backward_impl<scalar_t>(g_out, g_u, g_w, s, v, out, run_max, den, m0, reset);
  });
}

// Whether any of these tensors was changed in place or given other storage since this was made
// (aaren_rl.folded.ParameterVersions): one call, where reading two attributes of each from Python is not.
class Versions {
 public:
  explicit Versions(std::vector<Tensor> tensors) : tensors_(std::move(tensors)) {
    for (const Tensor& t : tensors_) seen_.emplace_back(t._version(), t.data_ptr());
  }
  bool changed() const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (tensors_[i]._version() != seen_[i].first || tensors_[i].data_ptr() != seen_[i].second) return true;
    return false;
  }

 private:
  std::vector<Tensor> tensors_;
  std::vector<std::pair<int64_t, const void*>> seen_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("aaren_step", &aaren_step, "One folded Aaren acting step");
  module.def("transformer_step", &transformer_step, "One folded Transformer window step");
  module.def("scan_forward", &scan_forward, "The Aaren scan, token by token (training form)");
  module.def("scan_backward", &scan_backward, "The reverse pass of scan_forward");
  pybind11::class_<Versions>(module, "Versions")
      .def(pybind11::init<std::vector<Tensor>>())
      .def("changed", &Versions::changed, "Whether any tensor changed since this was made");
}
