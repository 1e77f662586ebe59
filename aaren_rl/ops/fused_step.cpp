// The folded acting steps of aaren_rl/step.py as one C++ call each (CPU, float32/float64, inference),
// and the scan's training form token by token with its reverse pass (scan_forward, scan_backward).
//
// Same arithmetic as the Python steps, in the same order: the matmuls stay torch's (addmm, and the
// Transformer's scaled_dot_product_attention), while the small per-token work between them (layer norms,
// the Aaren state update, GELU, bias adds) runs as plain loops, so a step costs its few matmuls rather
// than the dispatch of about a hundred small operations.
//
// Weights come as one flat list per model, 11 tensors per layer then the final layer norm:
//   Aaren:       ln_1 w, ln_1 b, mix_t, mix_b, proj_t, ln_2 w, ln_2 b, w1_t, b1, w2_t, b2
//   Transformer: ln_1 w, ln_1 b, qkv_t, qkv_b, proj_t, proj_b, ln_2 w, ln_2 b, w1_t, b1, w2_t, b2 (12)
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

using at::Tensor;

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

namespace {

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
GemmFn<float> mkl_gemm<float>() {
  return sgemm_;
}
template <>
GemmFn<double> mkl_gemm<double>() {
  return dgemm_;
}
template <>
ErfFn<float> mkl_erf<float>() {
  return vmsErf;
}
template <>
ErfFn<double> mkl_erf<double>() {
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

// a * (1 + erf(a)) in place: GELU with its constants folded into the weights (aaren_rl.step._FeedForward).
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

// x + FFN(LN(x)) with GELU's 1/sqrt(2) folded into w1_t, b1 and w2_t (aaren_rl.step._FeedForward).
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

// One folded Aaren block (aaren_rl.step._AarenLayer): returns the block output at every token (or the
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

// Decision-agent ends around a step, 9 tensors: embed_t [F, 3 D], embed_b [3 D], time_table [steps, D],
// ln w, ln b, head_t [D, A], head_b, action_mid, action_half.
// Step inputs [R, F] (a_{t-1}, R_t, s_t) and their token times [R, 3] -> layer-normed tokens [R 3, D].
template <typename T>
Tensor embed_tokens(const Tensor& inputs, const Tensor& times, const std::vector<Tensor>& ends, double eps) {
  const int64_t d = ends[2].size(1);
  Tensor pre = linear<T>(ends[1], inputs.contiguous(), ends[0]).view({-1, d});
  const int64_t* tp = times.data_ptr<int64_t>();
  const T* table = ends[2].data_ptr<T>();
  T* p = pre.data_ptr<T>();
  for (int64_t r = 0, rows = pre.size(0); r < rows; ++r, p += d)
    for (int64_t i = 0; i < d; ++i) p[i] += table[tp[r] * d + i];
  return layer_norm<T>(pre, ends[3], ends[4], eps);
}

// Backbone outputs [n, D] -> actions in env units: mid + tanh(head) * half.
template <typename T>
Tensor action_head(const Tensor& hidden, const std::vector<Tensor>& ends) {
  Tensor a = linear<T>(ends[6], hidden.contiguous(), ends[5]);
  const int64_t k = a.size(1);
  const T *mid = ends[7].data_ptr<T>(), *half = ends[8].data_ptr<T>();
  T* p = a.data_ptr<T>();
  for (int64_t r = 0, rows = a.size(0); r < rows; ++r, p += k)
    for (int64_t i = 0; i < k; ++i) p[i] = mid[i] + std::tanh(p[i]) * half[i];
  return a;
}

// One decision-agent step's bookkeeping (agents.decision.agent.DecisionAgent.act): R_t = target where a row
// starts, else R_{t-1} - r_{t-1}; t = 0 where it starts, else t_{t-1} + 1; the step inputs [n, F] =
// (a_{t-1}, R_t, s_t) and their token times [n, 3] = (t_{t-1}, t, t) clamped to the timestep table.
// reward [n] may be None (no rewards: R_t = R_{t-1}), start [n] bool None (no row starts).
struct AgentStep {
  Tensor inputs, times, returns_to_go, timesteps;
};

template <typename T>
AgentStep agent_step(const Tensor& obs, const c10::optional<Tensor>& reward, const bool* start,
                     const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                     int64_t table_rows) {
  const int64_t n = obs.size(0), obs_dim = obs.size(1), act_dim = actions.size(1);
  const int64_t width = act_dim + 1 + obs_dim;
  AgentStep out{at::empty({n, width}, obs.options()), at::empty({n, 3}, timesteps.options()),
                at::empty_like(returns_to_go), at::empty_like(timesteps)};
  const T *o = obs.data_ptr<T>(), *a = actions.data_ptr<T>(), *g = returns_to_go.data_ptr<T>();
  const T* r = reward ? reward->data_ptr<T>() : nullptr;
  const int64_t* t = timesteps.data_ptr<int64_t>();
  T *in = out.inputs.data_ptr<T>(), *g_new = out.returns_to_go.data_ptr<T>();
  int64_t *times = out.times.data_ptr<int64_t>(), *t_new = out.timesteps.data_ptr<int64_t>();
  const int64_t last = table_rows - 1;
  for (int64_t i = 0; i < n; ++i, in += width, times += 3) {
    const bool begins = start && start[i];
    g_new[i] = begins ? T(target) : (r ? g[i] - r[i] : g[i]);
    t_new[i] = begins ? 0 : t[i] + 1;
    std::copy(a + i * act_dim, a + (i + 1) * act_dim, in);
    in[act_dim] = g_new[i];
    std::copy(o + i * obs_dim, o + (i + 1) * obs_dim, in + act_dim + 1);
    times[0] = std::min(t[i], last);
    times[1] = times[2] = std::min(t_new[i], last);
  }
  return out;
}

// A window of step inputs [n, K, F] and times [n, K, 3] with `length` [n] real entries after one more
// step (agents.decision.agent.StepWindow.push): rows that start begin empty, a full row drops its oldest step.
// Returns the new inputs, times and length.
template <typename T>
std::vector<Tensor> push_window(const Tensor& inputs, const Tensor& times, const Tensor& length,
                                const AgentStep& step, const bool* start) {
  const int64_t n = inputs.size(0), k = inputs.size(1), width = inputs.size(2);
  Tensor new_inputs = at::empty_like(inputs), new_times = at::empty_like(times), new_length = at::empty_like(length);
  const T *src = inputs.data_ptr<T>(), *step_in = step.inputs.data_ptr<T>();
  const int64_t *src_t = times.data_ptr<int64_t>(), *step_t = step.times.data_ptr<int64_t>();
  const int64_t* len = length.data_ptr<int64_t>();
  T* dst = new_inputs.data_ptr<T>();
  int64_t *dst_t = new_times.data_ptr<int64_t>(), *len_new = new_length.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t used = start && start[i] ? 0 : len[i], drop = used == k ? 1 : 0, slot = used - drop;
    const T* row = src + i * k * width;
    const int64_t* row_t = src_t + i * k * 3;
    std::copy(row + drop * width, row + k * width, dst + i * k * width);  // a full row drops step 0
    std::copy(row_t + drop * 3, row_t + k * 3, dst_t + i * k * 3);
    std::copy(step_in + i * width, step_in + (i + 1) * width, dst + (i * k + slot) * width);
    std::copy(step_t + i * 3, step_t + (i + 1) * 3, dst_t + (i * k + slot) * 3);
    len_new[i] = slot + 1;
  }
  return {new_inputs, new_times, new_length};
}

// Whether every observation and reward (contiguous) is a finite number: `act`'s boundary check, here a
// loop over a few numbers where from Python it is a numpy call made with caches the step has just
// emptied (docs/design.md, acting).
template <typename T>
bool all_finite(const Tensor& obs, const c10::optional<Tensor>& reward) {
  const auto finite = [](const Tensor& t) {
    const T* p = t.data_ptr<T>();
    return std::all_of(p, p + t.numel(), [](T v) { return std::isfinite(v); });
  };
  return finite(obs) && (!reward || finite(*reward));
}

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

// One recurrent decision-agent step, bookkeeping included: observations [n, S], rewards [n] or None,
// starts [n] bool or None, the agent state's returns-to-go [n], timesteps [n] long, last actions [n, A]
// and Aaren state m, u, w -> actions [n, A], the new returns-to-go, timesteps, m, u and w; nothing where
// an observation or reward is not finite. masks [2, 1, 3, 4]: the score masks of rows that continue and
// rows that start.
std::vector<Tensor> aaren_act(const Tensor& obs, const c10::optional<Tensor>& reward,
                              const c10::optional<Tensor>& start, const Tensor& returns_to_go,
                              const Tensor& timesteps, const Tensor& actions, double target, const Tensor& m,
                              const Tensor& u, const Tensor& w, const Tensor& masks,
                              const std::vector<Tensor>& weights, const std::vector<Tensor>& ends, double eps) {
  c10::InferenceMode inference;  // an agent step never needs gradients: skip autograd's dispatch
  const bool* starts = start ? start->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "aaren_act", [&] {
    const Tensor observations = obs.contiguous();
    if (!all_finite<scalar_t>(observations, reward)) return std::vector<Tensor>{};  // the caller names it
    AgentStep step = agent_step<scalar_t>(observations, reward, starts, returns_to_go, timesteps, actions,
                                          target, ends[2].size(0));
    Tensor tokens = embed_tokens<scalar_t>(step.inputs, step.times, ends, eps);
    Tensor mask = starts ? masks : masks.narrow(0, 0, 1);  // without starts every row continues
    auto out = aaren_step_impl<scalar_t>(tokens, m, u, w, mask, starts, c10::nullopt, obs.size(0), weights, eps);
    return std::vector<Tensor>{action_head<scalar_t>(out[0], ends), step.returns_to_go, step.timesteps, out[1],
                               out[2], out[3]};
  });
}

// One window decision-agent step, bookkeeping included: as `aaren_act` up to the target, then the window's
// step inputs [n, K, F], times [n, K, 3] and length [n] -> actions [n, A], the new returns-to-go and
// timesteps, and the window after this step (inputs, times, length), read at each row's newest s_t;
// nothing where an observation or reward is not finite.
std::vector<Tensor> window_act(const Tensor& obs, const c10::optional<Tensor>& reward,
                               const c10::optional<Tensor>& start, const Tensor& returns_to_go,
                               const Tensor& timesteps, const Tensor& actions, double target,
                               const Tensor& inputs, const Tensor& times, const Tensor& length, int64_t heads,
                               const std::vector<Tensor>& weights, const std::vector<Tensor>& ends, double eps) {
  c10::InferenceMode inference;  // an agent step never needs gradients: skip autograd's dispatch
  const bool* starts = start ? start->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "window_act", [&] {
    const Tensor observations = obs.contiguous();
    if (!all_finite<scalar_t>(observations, reward)) return std::vector<Tensor>{};  // the caller names it
    AgentStep step = agent_step<scalar_t>(observations, reward, starts, returns_to_go, timesteps, actions,
                                          target, ends[2].size(0));
    auto window = push_window<scalar_t>(inputs, times, length, step, starts);
    const int64_t n = inputs.size(0), k = inputs.size(1);
    Tensor tokens = embed_tokens<scalar_t>(window[0].view({n * k, -1}), window[1].view({n * k, 3}), ends, eps);
    tokens = tokens.view({n, 3 * k, -1}).narrow(1, 1, 3 * k - 1).reshape({n * (3 * k - 1), -1});
    Tensor read = window[2] * 3 - 2;  // s_t of each row, among the tokens from R_1 on (a_0 is left out)
    Tensor hidden = transformer_step_impl<scalar_t>(tokens, read, n, heads, weights, eps);
    return std::vector<Tensor>{action_head<scalar_t>(hidden, ends), step.returns_to_go, step.timesteps,
                               window[0], window[1], window[2]};
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

// A decision agent's folded weights bound once, for `aaren_act` or `window_act`: turning Python lists of
// some 40 tensors into vectors on every call would cost a batch-1 step more than some of its matmuls.
struct AarenAgent {
  AarenAgent(std::vector<Tensor> weights, std::vector<Tensor> ends, Tensor masks, double eps)
      : weights(std::move(weights)), ends(std::move(ends)), masks(std::move(masks)), eps(eps) {}
  std::vector<Tensor> act(const Tensor& obs, const c10::optional<Tensor>& reward, const c10::optional<Tensor>& start,
                          const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                          const Tensor& m, const Tensor& u, const Tensor& w) const {
    return aaren_act(obs, reward, start, returns_to_go, timesteps, actions, target, m, u, w, masks, weights, ends, eps);
  }
  std::vector<Tensor> weights, ends;
  Tensor masks;
  double eps;
};

struct WindowAgent {
  WindowAgent(std::vector<Tensor> weights, std::vector<Tensor> ends, int64_t heads, double eps)
      : weights(std::move(weights)), ends(std::move(ends)), heads(heads), eps(eps) {}
  std::vector<Tensor> act(const Tensor& obs, const c10::optional<Tensor>& reward, const c10::optional<Tensor>& start,
                          const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                          const Tensor& inputs, const Tensor& times, const Tensor& length) const {
    return window_act(obs, reward, start, returns_to_go, timesteps, actions, target, inputs, times, length, heads,
                      weights, ends, eps);
  }
  std::vector<Tensor> weights, ends;
  int64_t heads;
  double eps;
};

// Whether any of these tensors was changed in place or given other storage since this was made
// (aaren_rl.step.ParameterVersions): one call, where reading two attributes of each from Python is not.
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
  pybind11::class_<AarenAgent>(module, "AarenAgent")
      .def(pybind11::init<std::vector<Tensor>, std::vector<Tensor>, Tensor, double>())
      .def("act", &AarenAgent::act, "One recurrent decision-agent step, bookkeeping included");
  pybind11::class_<WindowAgent>(module, "WindowAgent")
      .def(pybind11::init<std::vector<Tensor>, std::vector<Tensor>, int64_t, double>())
      .def("act", &WindowAgent::act, "One window decision-agent step, bookkeeping included");
  pybind11::class_<Versions>(module, "Versions")
      .def(pybind11::init<std::vector<Tensor>>())
      .def("changed", &Versions::changed, "Whether any tensor changed since this was made");
}
