// The decision agent's fused step (agents.decision.agent.FoldedDecisionModel): one C++ call per env step
// doing the bookkeeping of DecisionAgent.act (returns-to-go, timesteps, the K-window push), the token
// embedding, the backbone's fused step (aaren_rl/ops/fused.h) and the action head. Built with
// aaren_rl.ops.fused.build, which puts fused.h on the include path.
#include <utility>

#include "fused.h"

using aaren_rl::aaren_step_impl;
using aaren_rl::layer_norm;
using aaren_rl::linear;
using aaren_rl::transformer_step_impl;
using at::Tensor;

namespace {

// Decision-agent ends around a step, 9 tensors: embed_t [F, 3 D], embed_b [3 D], time_table [steps, D],
// ln w, ln b, head_t [D, H], head_b, then for Box actions action_mid and action_half [A], for discrete ones
// each component's first action and its number of actions [A] (H = their sum: the one-hot width).
// Step inputs [R, F] (a_{t-1}, R_t, s_t) and their token times [R, 3] -> layer-normed tokens [R 3, D]; times
// past the timestep table share its last row.
template <typename T>
Tensor embed_tokens(const Tensor& inputs, const Tensor& times, const std::vector<Tensor>& ends, double eps) {
  const int64_t d = ends[2].size(1), last = ends[2].size(0) - 1;
  Tensor pre = linear<T>(ends[1], inputs.contiguous(), ends[0]).view({-1, d});
  const int64_t* tp = times.data_ptr<int64_t>();
  const T* table = ends[2].data_ptr<T>();
  T* p = pre.data_ptr<T>();
  for (int64_t r = 0, rows = pre.size(0); r < rows; ++r, p += d)
    for (int64_t i = 0; i < d; ++i) p[i] += table[std::min(tp[r], last) * d + i];
  return layer_norm<T>(pre, ends[3], ends[4], eps);
}

// Backbone outputs [n, D] -> actions in env units [n, A]: Box mid + tanh(head) * half; discrete, per
// component, its first action plus the index of its largest logit (the first of equals, as torch.argmax).
template <typename T>
Tensor action_head(const Tensor& hidden, const std::vector<Tensor>& ends, bool discrete) {
  Tensor a = linear<T>(ends[6], hidden.contiguous(), ends[5]);
  const int64_t k = ends[7].size(0), rows = a.size(0);
  const T *mid = ends[7].data_ptr<T>(), *half = ends[8].data_ptr<T>();
  T* p = a.data_ptr<T>();
  if (!discrete) {
    for (int64_t r = 0; r < rows; ++r, p += k)
      for (int64_t i = 0; i < k; ++i) p[i] = mid[i] + std::tanh(p[i]) * half[i];
    return a;
  }
  const int64_t width = a.size(1);
  Tensor out = at::empty({rows, k}, a.options());
  T* o = out.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r, p += width, o += k) {
    for (int64_t i = 0, offset = 0; i < k; offset += static_cast<int64_t>(half[i]), ++i) {
      const T* logits = p + offset;
      int64_t best = 0;
      for (int64_t j = 1, size = static_cast<int64_t>(half[i]); j < size; ++j)
        if (logits[j] > logits[best]) best = j;
      o[i] = mid[i] + T(best);
    }
  }
  return out;
}

// One decision-agent step's bookkeeping (agents.decision.agent.DecisionAgent.act): R_t = target where a row
// starts, else R_{t-1} - r_{t-1}; t = 0 where it starts, else t_{t-1} + 1; the step inputs [n, F] =
// (a_{t-1}, R_t, s_t) and their token times [n, 3] = (t_{t-1}, t, t).
// a_{t-1} goes in as it is (Box) or as the one-hot of each component's action (discrete: `first` action and
// `sizes` of each component, ends[7] and ends[8]; clipped to the component, as DecisionModel.action_indices).
// reward [n] may be None (no rewards: R_t = R_{t-1}), start [n] bool None (no row starts).
struct AgentStep {
  Tensor inputs, times, returns_to_go, timesteps;
};

template <typename T>
AgentStep agent_step(const Tensor& obs, const c10::optional<Tensor>& reward, const bool* start,
                     const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                     const std::vector<Tensor>& ends, bool discrete) {
  const int64_t n = obs.size(0), obs_dim = obs.size(1), act_dim = actions.size(1);
  const int64_t act_width = ends[5].size(1), width = act_width + 1 + obs_dim;
  const T *first = ends[7].data_ptr<T>(), *sizes = ends[8].data_ptr<T>();
  AgentStep out{at::empty({n, width}, obs.options()), at::empty({n, 3}, timesteps.options()),
                at::empty_like(returns_to_go), at::empty_like(timesteps)};
  const T *o = obs.data_ptr<T>(), *a = actions.data_ptr<T>(), *g = returns_to_go.data_ptr<T>();
  const T* r = reward ? reward->data_ptr<T>() : nullptr;
  const int64_t* t = timesteps.data_ptr<int64_t>();
  T *in = out.inputs.data_ptr<T>(), *g_new = out.returns_to_go.data_ptr<T>();
  int64_t *times = out.times.data_ptr<int64_t>(), *t_new = out.timesteps.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i, in += width, times += 3) {
    const bool begins = start && start[i];
    g_new[i] = begins ? T(target) : (r ? g[i] - r[i] : g[i]);
    t_new[i] = begins ? 0 : t[i] + 1;
    if (discrete) {
      std::fill(in, in + act_width, T(0));
      for (int64_t j = 0, offset = 0; j < act_dim; offset += static_cast<int64_t>(sizes[j]), ++j) {
        const int64_t top = static_cast<int64_t>(sizes[j]) - 1;
        const int64_t index = static_cast<int64_t>(std::nearbyint(a[i * act_dim + j] - first[j]));
        in[offset + std::min(std::max(index, int64_t(0)), top)] = T(1);
      }
    } else {
      std::copy(a + i * act_dim, a + (i + 1) * act_dim, in);
    }
    in[act_width] = g_new[i];
    std::copy(o + i * obs_dim, o + (i + 1) * obs_dim, in + act_width + 1);
    times[0] = t[i];
    times[1] = times[2] = t_new[i];
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

// Each head's step slope [H] times the token times [n, 3] -> the Aaren score bias [n, H, 3]
// (agents.decision.model.step_score_bias).
template <typename T>
Tensor step_score_bias(const Tensor& slopes, const Tensor& times) {
  const int64_t n = times.size(0), heads = slopes.size(0);
  Tensor bias = at::empty({n, heads, 3}, slopes.options());
  const T* slope = slopes.data_ptr<T>();
  const int64_t* t = times.data_ptr<int64_t>();
  T* b = bias.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < 3; ++j) *b++ = slope[h] * T(t[i * 3 + j]);
  return bias;
}

}  // namespace

// One recurrent decision-agent step, bookkeeping included: observations [n, S], rewards [n] or None,
// starts [n] bool or None, the agent state's returns-to-go [n], timesteps [n] long, last actions [n, A]
// and Aaren state m, u, w -> actions [n, A], the new returns-to-go, timesteps, m, u and w; nothing where
// an observation or reward is not finite. masks [2, 1, 3, 4]: the score masks of rows that continue and
// rows that start; slopes [H] or None: the model's step slopes, added to the scores times each token's time.
std::vector<Tensor> aaren_act(const Tensor& obs, const c10::optional<Tensor>& reward,
                              const c10::optional<Tensor>& start, const Tensor& returns_to_go,
                              const Tensor& timesteps, const Tensor& actions, double target, const Tensor& m,
                              const Tensor& u, const Tensor& w, const Tensor& masks,
                              const c10::optional<Tensor>& slopes, const std::vector<Tensor>& weights,
                              const std::vector<Tensor>& ends, double eps, bool discrete) {
  c10::InferenceMode inference;  // an agent step never needs gradients: skip autograd's dispatch
  const bool* starts = start ? start->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "aaren_act", [&] {
    const Tensor observations = obs.contiguous();
    if (!all_finite<scalar_t>(observations, reward)) return std::vector<Tensor>{};  // the caller names it
    AgentStep step = agent_step<scalar_t>(observations, reward, starts, returns_to_go, timesteps, actions,
                                          target, ends, discrete);
    Tensor tokens = embed_tokens<scalar_t>(step.inputs, step.times, ends, eps);
    Tensor mask = starts ? masks : masks.narrow(0, 0, 1);  // without starts every row continues
    c10::optional<Tensor> bias;
    if (slopes) bias = step_score_bias<scalar_t>(*slopes, step.times);
    auto out = aaren_step_impl<scalar_t>(tokens, m, u, w, mask, starts, bias, obs.size(0), weights, eps);
    return std::vector<Tensor>{action_head<scalar_t>(out[0], ends, discrete), step.returns_to_go, step.timesteps,
                               out[1], out[2], out[3]};
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
                               const std::vector<Tensor>& weights, const std::vector<Tensor>& ends, double eps,
                               bool discrete) {
  c10::InferenceMode inference;  // an agent step never needs gradients: skip autograd's dispatch
  const bool* starts = start ? start->data_ptr<bool>() : nullptr;
  return AT_DISPATCH_FLOATING_TYPES(obs.scalar_type(), "window_act", [&] {
    const Tensor observations = obs.contiguous();
    if (!all_finite<scalar_t>(observations, reward)) return std::vector<Tensor>{};  // the caller names it
    AgentStep step = agent_step<scalar_t>(observations, reward, starts, returns_to_go, timesteps, actions,
                                          target, ends, discrete);
    auto window = push_window<scalar_t>(inputs, times, length, step, starts);
    const int64_t n = inputs.size(0), k = inputs.size(1);
    Tensor tokens = embed_tokens<scalar_t>(window[0].view({n * k, -1}), window[1].view({n * k, 3}), ends, eps);
    tokens = tokens.view({n, 3 * k, -1}).narrow(1, 1, 3 * k - 1).reshape({n * (3 * k - 1), -1});
    Tensor read = window[2] * 3 - 2;  // s_t of each row, among the tokens from R_1 on (a_0 is left out)
    Tensor hidden = transformer_step_impl<scalar_t>(tokens, read, n, heads, weights, eps);
    return std::vector<Tensor>{action_head<scalar_t>(hidden, ends, discrete), step.returns_to_go, step.timesteps,
                               window[0], window[1], window[2]};
  });
}

// A decision agent's folded weights bound once, for `aaren_act` or `window_act`: turning Python lists of
// some 40 tensors into vectors on every call would cost a batch-1 step more than some of its matmuls.
// discrete: the actions are Discrete or MultiDiscrete (see the ends above).
struct AarenAgent {
  AarenAgent(std::vector<Tensor> weights, std::vector<Tensor> ends, Tensor masks, c10::optional<Tensor> slopes,
             double eps, bool discrete)
      : weights(std::move(weights)),
        ends(std::move(ends)),
        masks(std::move(masks)),
        slopes(std::move(slopes)),
        eps(eps),
        discrete(discrete) {}
  std::vector<Tensor> act(const Tensor& obs, const c10::optional<Tensor>& reward, const c10::optional<Tensor>& start,
                          const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                          const Tensor& m, const Tensor& u, const Tensor& w) const {
    return aaren_act(obs, reward, start, returns_to_go, timesteps, actions, target, m, u, w, masks, slopes, weights,
                     ends, eps, discrete);
  }
  std::vector<Tensor> weights, ends;
  Tensor masks;
  c10::optional<Tensor> slopes;
  double eps;
  bool discrete;
};

struct WindowAgent {
  WindowAgent(std::vector<Tensor> weights, std::vector<Tensor> ends, int64_t heads, double eps, bool discrete)
      : weights(std::move(weights)), ends(std::move(ends)), heads(heads), eps(eps), discrete(discrete) {}
  std::vector<Tensor> act(const Tensor& obs, const c10::optional<Tensor>& reward, const c10::optional<Tensor>& start,
                          const Tensor& returns_to_go, const Tensor& timesteps, const Tensor& actions, double target,
                          const Tensor& inputs, const Tensor& times, const Tensor& length) const {
    return window_act(obs, reward, start, returns_to_go, timesteps, actions, target, inputs, times, length, heads,
                      weights, ends, eps, discrete);
  }
  std::vector<Tensor> weights, ends;
  int64_t heads;
  double eps;
  bool discrete;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  pybind11::class_<AarenAgent>(module, "AarenAgent")
      .def(pybind11::init<std::vector<Tensor>, std::vector<Tensor>, Tensor, c10::optional<Tensor>, double, bool>())
      .def("act", &AarenAgent::act, "One recurrent decision-agent step, bookkeeping included");
  pybind11::class_<WindowAgent>(module, "WindowAgent")
      .def(pybind11::init<std::vector<Tensor>, std::vector<Tensor>, int64_t, double, bool>())
      .def("act", &WindowAgent::act, "One window decision-agent step, bookkeeping included");
}
