// The fused (C++) kernels of aaren_rl's backbone steps, CPU, float32/float64, inference: the folded steps
// of aaren_rl/folded.py as one call each. Shared by the core's extension (fused.cpp) and extensions that
// build on a backbone step (aaren_rl.ops.fused.build puts this folder on their include path).
//
// Same arithmetic as the Python steps, in the same order: the matmuls stay torch's (addmm, and the
// Transformer's scaled_dot_product_attention), while the small per-token work between them (layer norms,
// the Aaren state update, GELU, bias adds) runs as plain loops, so a step costs its few matmuls rather
// than the dispatch of about a hundred small operations.
//
// Weights come as one flat list per model, 11 tensors per layer then the final layer norm:
//   Aaren:       ln_1 w, ln_1 b, mix_t, mix_b, proj_t, ln_2 w, ln_2 b, w1_t, b1, w2_t, b2
//   Transformer: ln_1 w, ln_1 b, qkv_t, qkv_b, proj_t, proj_b, ln_2 w, ln_2 b, w1_t, b1, w2_t, b2 (12)
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// MKL's BLAS and VML, as torch's CPU library carries them on Linux x86: called straight, a matmul or an
// erf skips an aten op's dispatch and allocation, which a batch-1 step would pay at each of its 14
// matmuls. Weak, so null where the library lacks them; the aten ops run instead.
#if defined(__linux__)
#define AAREN_RL_WEAK __attribute__((weak))
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) AAREN_RL_WEAK;
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) AAREN_RL_WEAK;
void vmsErf(int, const float*, float*, long long) AAREN_RL_WEAK;
void vmdErf(int, const double*, double*, long long) AAREN_RL_WEAK;
}
#endif

namespace aaren_rl {

using at::Tensor;

template <typename T>
using GemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                        const int*, const T*, const int*, const T*, T*, const int*);
template <typename T>
using ErfFn = void (*)(int, const T*, T*, long long);
// VML's low-accuracy mode (VML_LA: at most 4 ulp off instead of 1): faster, and far inside the step's
// tolerance against the eager model.
constexpr long long kVmlLowAccuracy = 0x1;

template <typename T>
GemmFn<T> mkl_gemm() {
  return nullptr;
}
template <typename T>
ErfFn<T> mkl_erf() {
  return nullptr;
}
#if defined(__linux__)
template <>
inline GemmFn<float> mkl_gemm<float>() {
  return sgemm_;
}
template <>
inline GemmFn<double> mkl_gemm<double>() {
  return dgemm_;
}
template <>
inline ErfFn<float> mkl_erf<float>() {
  return vmsErf;
}
template <>
inline ErfFn<double> mkl_erf<double>() {
  return vmdErf;
}
#endif

// bias + x [m, k] @ w [k, n] for contiguous x and w; bias [n] (added to every row) or [m, n]. The same
// arithmetic as at::addmm, which also copies the bias into the output and calls gemm with beta = 1.
template <typename T>
Tensor linear(const Tensor& bias, const Tensor& x, const Tensor& w) {
  const GemmFn<T> gemm = mkl_gemm<T>();
  const int64_t m = x.size(0), k = x.size(1), n = w.size(1);
  if (!gemm || std::max({m, k, n}) > std::numeric_limits<int>::max()) return at::addmm(bias, x, w);
  Tensor y = at::empty({m, n}, x.options());
  const T* b = bias.data_ptr<T>();
  const int64_t bias_step = bias.dim() == 1 ? 0 : n;
  T* out = y.data_ptr<T>();
  for (int64_t i = 0; i < m; ++i) std::copy(b + i * bias_step, b + i * bias_step + n, out + i * n);
  const int rows = m, inner = k, cols = n;
  const T one = 1;
  // row-major y = x w is column-major y^T = w^T x^T
  gemm("N", "N", &cols, &rows, &inner, &one, w.data_ptr<T>(), &cols, x.data_ptr<T>(), &inner, &one, out, &cols);
  return y;
}

// a * (1 + erf(a)) in place: GELU with its constants folded into the weights (aaren_rl.folded._FeedForward).
template <typename T>
void gelu_folded(Tensor& a) {
  const ErfFn<T> erf = mkl_erf<T>();
  if (!erf || a.numel() > std::numeric_limits<int>::max()) {
    a = a.erf().add_(1).mul_(a);
    return;
  }
  thread_local std::vector<T> e;  // reused: a fresh buffer per call costs an allocation and a memset
  const int64_t n = a.numel();
  if (static_cast<int64_t>(e.size()) < n) e.resize(n);
  T* p = a.data_ptr<T>();
  erf(static_cast<int>(n), p, e.data(), kVmlLowAccuracy);
  for (int64_t i = 0; i < n; ++i) p[i] = (e[i] + T(1)) * p[i];
}

constexpr int64_t kAarenWeights = 11;
// Below this many elements a plain layer norm loop beats a torch kernel's dispatch; above it torch's
// vectorised kernel wins (the Transformer's windows), so each side of a comparison gets the faster one.
constexpr int64_t kLoopElements = 4096;
constexpr int64_t kTransformerWeights = 12;

// y = (x - mean) / sqrt(var + eps) * w + b over the last dimension of contiguous rows.
template <typename T>
Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  if (x.numel() > kLoopElements) return at::layer_norm(x, {x.size(-1)}, w, b, eps);
  Tensor y = at::empty_like(x);
  const int64_t d = x.size(-1), rows = x.numel() / d;
  const T *src = x.data_ptr<T>(), *wp = w.data_ptr<T>(), *bp = b.data_ptr<T>();
  T* dst = y.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r, src += d, dst += d) {
    double mean = 0, var = 0;  // accumulated in double, as torch's layer norm accumulates widely too
    for (int64_t i = 0; i < d; ++i) mean += src[i];
    mean /= d;
    for (int64_t i = 0; i < d; ++i) var += (src[i] - mean) * (src[i] - mean);
    const double inv = 1 / std::sqrt(var / d + eps);
    for (int64_t i = 0; i < d; ++i) dst[i] = T((src[i] - mean) * inv) * wp[i] + bp[i];
  }
  return y;
}

// x += b, b broadcast over the rows of contiguous x.
template <typename T>
void add_rows(Tensor& x, const Tensor& b) {
  const int64_t d = x.size(-1), rows = x.numel() / d;
  T* p = x.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r, p += d)
    for (int64_t i = 0; i < d; ++i) p[i] += bp[i];
}

// x + FFN(LN(x)) with GELU's 1/sqrt(2) folded into w1_t, b1 and w2_t (aaren_rl.folded._FeedForward).
template <typename T>
Tensor feed_forward(const Tensor& x, const Tensor* w, double eps) {
  Tensor a = linear<T>(w[3], layer_norm<T>(x, w[0], w[1], eps), w[2]);
  gelu_folded<T>(a);
  Tensor y = linear<T>(x, a, w[4]);
  add_rows<T>(y, w[5]);
  return y;
}

// Inputs of one Aaren layer's attention: mixed [n T, H dz + H] (per head dz value columns, the last a
// constant 1, then one score per head), state m [n, H] and z [n, H, dz], optional additive mask
// [n or 1, 1, T, T + 1] (or [2, 1, T, T + 1] picked per sequence by `starts` [n] bool) and score bias
// [n or 1, H, T].
template <typename T>
struct AarenAttention {
  const T *mixed, *m, *z, *mask, *bias;
  const bool* starts;
  int64_t n, t, heads, dz, mask_rows, bias_rows;

  int64_t mask_row(int64_t s) const { return starts ? starts[s] : (mask_rows == 1 ? 0 : s); }

  // Attention of query position q of sequence s, head h, over the state and tokens 0..q: writes the
  // normalised output (dz values) to out and returns the running max; num receives the numerator.
  T attend(int64_t s, int64_t h, int64_t q, T* num, T* out) const {
    const int64_t cols = heads * dz + heads;
    const T* row_mask = mask ? mask + (mask_row(s) * t + q) * (t + 1) : nullptr;
    const T* row_bias = bias ? bias + ((bias_rows == 1 ? 0 : s) * heads + h) * t : nullptr;
    std::vector<T> logits(q + 2);
    logits[0] = m[s * heads + h] + (row_mask ? row_mask[0] : T(0));
    T top = logits[0];
    for (int64_t j = 0; j <= q; ++j) {
      T logit = mixed[(s * t + j) * cols + heads * dz + h];
      if (row_bias) logit += row_bias[j];
      if (row_mask) logit += row_mask[j + 1];
      logits[j + 1] = logit;
      top = std::max(top, logit);
    }
    const T* state = z + (s * heads + h) * dz;
    T weight = std::exp(logits[0] - top);
    for (int64_t k = 0; k < dz; ++k) num[k] = weight * state[k];
    for (int64_t j = 0; j <= q; ++j) {
      weight = std::exp(logits[j + 1] - top);
      const T* value = mixed + (s * t + j) * cols + h * dz;
      for (int64_t k = 0; k < dz; ++k) num[k] += weight * value[k];
    }
    for (int64_t k = 0; k < dz; ++k) out[k] = num[k] / num[dz - 1];
    return top;
  }
};

// One folded Aaren block (aaren_rl.folded._AarenLayer): returns the block output at every token (or the
// newest only when `last`) and writes the state after the newest token into m_out, z_out.
template <typename T>
Tensor aaren_layer(Tensor x, const Tensor* w, const Tensor& m, const Tensor& z,
                   const c10::optional<Tensor>& mask, const bool* starts, const c10::optional<Tensor>& bias,
                   int64_t n, bool last, double eps, Tensor& m_out, Tensor& z_out) {
  const int64_t t = x.size(0) / n, heads = m.size(1), dz = z.size(2), d = x.size(1);
  Tensor mixed = linear<T>(w[3], layer_norm<T>(x, w[0], w[1], eps), w[2]);
  const int64_t first = last ? t - 1 : 0, queries = t - first;
  AarenAttention<T> att{mixed.data_ptr<T>(), m.data_ptr<T>(), z.data_ptr<T>(),
                        mask ? mask->data_ptr<T>() : nullptr, bias ? bias->data_ptr<T>() : nullptr,
                        starts, n, t, heads, dz, mask ? mask->size(0) : 0, bias ? bias->size(0) : 0};
  Tensor out = at::empty({n * queries, heads * dz}, x.options());
  T *o = out.data_ptr<T>(), *mo = m_out.data_ptr<T>(), *zo = z_out.data_ptr<T>();
  std::vector<T> num(dz);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t q = first; q < t; ++q)
      for (int64_t h = 0; h < heads; ++h) {
        const T top = att.attend(s, h, q, num.data(), o + (s * queries + q - first) * heads * dz + h * dz);
        if (q == t - 1) {
          mo[s * heads + h] = top;
          std::copy(num.begin(), num.end(), zo + (s * heads + h) * dz);
        }
      }
  if (last && t > 1) x = x.view({n, t, d}).select(1, t - 1).contiguous();
  return feed_forward<T>(linear<T>(x, out, w[4]), w + 5, eps);
}

// The state m [L, n, H], u [L, n, H], w [L, n, H, Dh] -> the output and the new m, u, w (u and w views
// of one [L, n, H, Dh + 1] tensor).
template <typename T>
std::vector<Tensor> aaren_step_impl(const Tensor& x, const Tensor& m, const Tensor& u, const Tensor& w_state,
                                    const c10::optional<Tensor>& mask, const bool* starts,
                                    const c10::optional<Tensor>& bias, int64_t n, const std::vector<Tensor>& w,
                                    double eps) {
  const int64_t layers = m.size(0);
  Tensor z = at::cat({w_state, u.unsqueeze(-1)}, -1), m_in = m.contiguous();
  Tensor m_new = at::empty_like(m_in), z_new = at::empty_like(z), h = x;
  for (int64_t i = 0; i < layers; ++i) {
    Tensor m_i = m_new.select(0, i), z_i = z_new.select(0, i);
    h = aaren_layer<T>(h, &w[i * kAarenWeights], m_in.select(0, i), z.select(0, i), mask, starts, bias, n,
                       i == layers - 1, eps, m_i, z_i);
  }
  const int64_t f = layers * kAarenWeights, dz = z.size(-1);
  return {layer_norm<T>(h, w[f], w[f + 1], eps), m_new, z_new.select(-1, dz - 1), z_new.narrow(-1, 0, dz - 1)};
}

template <typename T>
Tensor transformer_layer(Tensor x, const Tensor* w, int64_t n, int64_t heads,
                         const c10::optional<Tensor>& read, double eps) {
  const int64_t t = x.size(0) / n, d = x.size(1);
  Tensor qkv = linear<T>(w[3], layer_norm<T>(x, w[0], w[1], eps), w[2]).view({n, t, 3, heads, -1});
  auto parts = qkv.permute({2, 0, 3, 1, 4}).unbind(0);  // [n, H, T, Dh] each
  Tensor y;
  if (!read) {
    y = at::scaled_dot_product_attention(parts[0], parts[1], parts[2], {}, 0.0, true);
  } else {
    Tensor rows = at::arange(n, read->options());
    Tensor q = parts[0].index({rows, at::indexing::Slice(), *read}).unsqueeze(2);
    Tensor visible = at::arange(t, read->options()).le(read->unsqueeze(1));
    y = at::scaled_dot_product_attention(q, parts[1], parts[2], visible.view({n, 1, 1, t}));
    x = x.view({n, t, d}).index({rows, *read});
  }
  Tensor h = linear<T>(x.contiguous(), y.transpose(1, 2).reshape({x.size(0), d}).contiguous(), w[4]);
  add_rows<T>(h, w[5]);
  return feed_forward<T>(h, w + 6, eps);
}

template <typename T>
Tensor transformer_step_impl(const Tensor& x, const Tensor& read, int64_t n, int64_t heads,
                             const std::vector<Tensor>& w, double eps) {
  const int64_t layers = (static_cast<int64_t>(w.size()) - 2) / kTransformerWeights;
  Tensor h = x;
  for (int64_t i = 0; i < layers; ++i)
    h = transformer_layer<T>(h, &w[i * kTransformerWeights], n, heads,
                             i == layers - 1 ? c10::optional<Tensor>(read) : c10::nullopt, eps);
  const int64_t f = layers * kTransformerWeights;
  return layer_norm<T>(h, w[f], w[f + 1], eps);
}

}  // namespace aaren_rl
