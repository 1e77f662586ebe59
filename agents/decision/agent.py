"""Acting with a trained `DecisionModel`, batched over environments.

`DecisionAgent.act(observations, state, episode_start, rewards) -> (actions, state)` is the one
entry point the evaluation loop uses (and what an SB3-style `predict` wraps): the state is passed
in and out, rows whose `episode_start` is set begin a new episode (return-to-go = target,
timestep 0, empty memory), and `rewards` are the rewards the previous actions earned
(R_t = R_{t-1} - r_{t-1}).

Two ways to act; unless told, a model acts as its training batches trained it
(`DecisionModelConfig.acting`: windows from an empty context -> "window", anything else -> "recurrent"):
- "recurrent" (Aaren; the LSTM and the Transformer after whole episodes): per env step the new tokens [a_{t-1}, R_t, s_t] go
  through the backbone once with the carried state; at an episode's first step only [R_1, s_1]. This is
  exactly the training sequence R_1 s_1 a_1 R_2 ..., so the chosen action equals the parallel
  forward's prediction. Rows that start a new episode forget their memory and their a_{t-1} token
  inside the same call. Aaren's and the LSTM's states are constant in size; with the Transformer
  backbone the state is its KV cache over the whole episode (it grows every step; after K-window training
  it attends further back than the Transformer trained on: then a speed baseline only).
- "window" (the Transformer and the LSTM after K-windows, the reference DT way): every step re-runs the last K
  timesteps (right-padded, so causality keeps the padding out) and reads the prediction at the last one.

Both run on the model folded for acting (`FoldedDecisionModel` over `aaren_rl.folded`): the three new
tokens of a step are one embedding matmul (observation normalisation, return scale and action scaling
folded in), the Aaren step is the folded recurrent step, the Transformer's window forward the folded
causal forward. Where it can, a whole step runs fused: one C++ call (`fused_agent.cpp`, built on first
use by `aaren_rl.ops.fused.build`) doing the same bookkeeping, embedding, backbone step and action head.
The other pairings (the Transformer acting recurrent, Aaren acting on windows, the LSTM either way) have
no folded or fused backbone step: the embeddings and head are folded and the backbone's own forward runs
(for the LSTM, one `nn.LSTM` call).
Inputs are checked once per call, here. `DecisionAgent(..., eager=True)` acts through the model's own
modules instead: the reference that the folded path is tested and benchmarked against.

Discrete and MultiDiscrete agents return integer actions, each component's most likely one; the previous
action enters the step as the one-hot of its components, so the fold and the fused step embed it with the
same matmul. `DecisionAgent(..., sample=True)` draws the actions from the head's softmax instead (seeded),
on the folded path from Python.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aaren_rl import AarenBackbone, AarenState, KVCache, LSTMState, TransformerBackbone
from aaren_rl.folded import FoldedAarenBackbone, FoldedTransformerBackbone, ParameterVersions
from aaren_rl.ops import fused
from agents.decision.model import ACTING, DecisionModel, discrete_actions, step_score_bias

#: The largest |target return| an agent acts towards: returns-to-go are float32 while acting, whose
#: integers are exact only up to 2**24; beyond it R_t = R_{t-1} - r_{t-1} loses rewards of order 1.
MAX_TARGET_RETURN = float(2**24)
#: How to choose a target return, for every error message about one.
TARGET_RETURN_FIX = (
    "give a finite target return of the order of the task's episode returns (e.g. the dataset's best one)"
)


#: The agent's fused step: bookkeeping, embedding, the backbone's fused step (`aaren_rl/ops/fused.h`)
#: and the action head in one C++ call.
FUSED_SOURCE = Path(__file__).with_name("fused_agent.cpp")
FUSED_NAME = "aaren_rl_fused_agent"


def fused_agent_module() -> ModuleType | None:
    """The extension of `fused_agent.cpp`, or None where the backbone's fused module is not available
    (switched off, or no compiler: warned there) or this one cannot be built."""
    return _build_fused_agent() if fused.fused_module() is not None else None


@functools.cache
def _build_fused_agent() -> ModuleType | None:
    return fused.build(FUSED_NAME, [FUSED_SOURCE], "the decision agent's step runs in Python")


def target_return_problem(value: float) -> str | None:
    """What makes `value` unusable as a target return (e.g. "nan is not a finite number"); None if usable.
    The one check behind DecisionAgent, the config's eval.targets and the scripts' --target."""
    if not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if abs(value) > MAX_TARGET_RETURN:
        return f"{value:g} is beyond ±{MAX_TARGET_RETURN:,.0f}, where float32 returns-to-go lose the rewards"
    return None


@dataclass(frozen=True)
class Window:
    """The last K timesteps of each row (left-aligned; `length` real entries, the rest stale): the
    eager window's memory."""

    returns_to_go: Tensor  # [n, K]
    observations: Tensor  # [n, K, obs_dim]
    actions: Tensor  # [n, K, act_dim]
    timesteps: Tensor  # [n, K]
    length: Tensor  # [n] long

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values())

    def with_last_action(self, actions: Tensor) -> Window:
        """The same window with `actions` [n, act_dim] as each row's newest step's action."""
        acts = self.actions.clone()
        acts[torch.arange(len(acts), device=acts.device), self.length - 1] = actions
        return replace(self, actions=acts)


@dataclass(frozen=True)
class StepWindow:
    """The last K step inputs of each row (left-aligned; `length` real entries, the rest stale): the
    folded window's memory. Step j holds a_{j-1}, R_j, s_j and the timesteps of those three tokens."""

    inputs: Tensor  # [n, K, act_dim + 1 + obs_dim]
    times: Tensor  # [n, K, 3] long
    length: Tensor  # [n] long

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values())

    def push(self, inputs: Tensor, times: Tensor, start: Tensor) -> StepWindow:
        """The window after one more step (rows where `start` is set begin empty)."""
        k = self.inputs.shape[1]
        length = torch.where(start, 0, self.length)
        full = (length == k)[:, None, None]
        fields = [torch.where(full, f.roll(-1, 1), f) for f in (self.inputs, self.times)]
        slot = length.clamp(max=k - 1)
        rows = torch.arange(len(slot), device=slot.device)
        fields[0][rows, slot] = inputs
        fields[1][rows, slot] = times
        return StepWindow(*fields, slot + 1)


#: A backbone's state, carried when acting "recurrent".
RecurrentMemory = AarenState | KVCache | LSTMState
#: What an `AgentState` remembers of its rows' episodes.
Memory = RecurrentMemory | StepWindow | Window


@dataclass(frozen=True)
class AgentState:
    """Per-env acting state: return-to-go, timestep and last action of the current step, plus memory
    (the backbone's `AarenState`, `KVCache` or `LSTMState` when acting "recurrent", a `StepWindow` (eager:
    `Window`) when acting "window")."""

    returns_to_go: Tensor  # [n]
    timesteps: Tensor  # [n] long
    actions: Tensor  # [n, act_dim] the actions chosen at `timesteps` (env units)
    memory: Memory

    @property
    def num_envs(self) -> int:
        return self.returns_to_go.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held per batch: constant for the recurrent agent, K steps for the window agent."""
        own = sum(t.numel() * t.element_size() for t in (self.returns_to_go, self.timesteps, self.actions))
        return own + self.memory.nbytes


class FoldedDecisionModel:
    """A `DecisionModel`'s embeddings and action head folded for acting, with its backbone's folded step.

    `tokens(inputs, times)` embeds step inputs [..., action_input_dim + 1 + obs_dim] (a_{t-1}, R_t, s_t)
    into the tokens [a_{t-1}, R_t, s_t] [..., 3, D] with one matmul: the action scaling to [-1, 1], the
    return scale and the observation normalisation are folded into its weights. a_{t-1} is a Box action in
    env units (unlike `DecisionModel.unit_actions` not clipped: the agent's own actions are in bounds), or
    the one-hot of a discrete action's components (`action_inputs`), whose table is the matmul's weight.
    generator: discrete actions are drawn from the head's softmax with it (none: the most likely); such a
    fold binds no fused step, which is greedy.
    """

    def __init__(self, model: DecisionModel, acting: str, generator: torch.Generator | None = None):
        c, dtype = model.config, model.state_mean.dtype
        low, high = model.action_low.to(dtype), model.action_high.to(dtype)
        w_a, w_r, w_s = (
            m.weight.detach() for m in (model.embed_action, model.embed_return, model.embed_state)
        )
        d, a = c.embed_dim, model.action_input_dim
        weight = torch.zeros(3 * d, a + 1 + c.obs_dim, dtype=dtype, device=low.device)
        if model.discrete:  # one-hot @ table: each component's row, summed
            weight[:d, :a] = w_a.t()
            action_b = torch.zeros(d, dtype=dtype, device=low.device)
        else:
            action_scale = 2 / (high - low)  # unit = a * scale - (low * scale + 1)
            weight[:d, :a] = w_a * action_scale
            action_b = model.embed_action.bias.detach() - w_a @ (low * action_scale + 1)
        weight[d : 2 * d, a] = w_r[:, 0] * c.return_scale
        weight[2 * d :, a + 1 :] = w_s / model.state_std
        self.embed_t = weight.t().contiguous()
        self.embed_b = torch.cat(
            [
                action_b,
                model.embed_return.bias.detach(),
                model.embed_state.bias.detach() - w_s @ (model.state_mean / model.state_std),
            ]
        )
        self.time_table = model.embed_timestep.weight.detach()
        self.step_slope = None if model.step_slope is None else model.step_slope.detach()
        self.embed_ln = model.embed_ln
        self.head_t = model.predict_action.weight.detach().t().contiguous()
        self.head_b = model.predict_action.bias.detach()
        self.model, self.generator = model, generator
        # what turns the head's output into actions: Box the bounds' midpoint and half-range (mid + tanh *
        # half), discrete each component's first action and number of actions (first + argmax)
        if model.discrete:
            self.action_ends = (low, torch.tensor(model.action_sizes, dtype=dtype, device=low.device))
        else:
            self.action_ends = ((high + low) / 2, (high - low) / 2)
        # the backbone folded for the acting it serves by default (None for the other two pairings)
        self.aaren: FoldedAarenBackbone | None = None
        self.transformer: FoldedTransformerBackbone | None = None
        self.resets = None
        if acting == "recurrent" and isinstance(model.backbone, AarenBackbone):
            self.aaren = FoldedAarenBackbone(model.backbone)
            # the two masks a step needs: rows that continue, and rows whose memory and a_{t-1} are forgotten
            self.resets = self.aaren.score_mask(
                torch.tensor([[False, False, False], [False, True, False]], device=low.device)
            )
        elif acting == "window" and isinstance(model.backbone, TransformerBackbone):
            self.transformer = FoldedTransformerBackbone(model.backbone)
        backbone = self.aaren or self.transformer
        # the fused step takes one eps for every layer norm, and these ends around it
        self.eps = None
        if backbone is not None and backbone.eps == model.embed_ln.eps:
            self.eps = backbone.eps
        self.ends = [
            t.contiguous()
            for t in (
                self.embed_t,
                self.embed_b,
                self.time_table,
                model.embed_ln.weight.detach(),
                model.embed_ln.bias.detach(),
                self.head_t,
                self.head_b,
                *self.action_ends,
            )
        ]
        self.fused = self._fused_agent(dtype, low.device)

    def _fused_agent(self, dtype: torch.dtype, device: torch.device):
        """The folded weights bound to the fused agent step, or None where it cannot take them."""
        fusable = device.type == "cpu" and dtype in fused.DTYPES and self.generator is None
        module = fused_agent_module() if fusable else None
        if module is None or self.eps is None:
            return None
        discrete = self.model.discrete
        if self.aaren is not None:
            folded = self.aaren
            return module.AarenAgent(
                folded.flat_weights, self.ends, self.resets, self.step_slope, self.eps, discrete
            )
        if self.transformer is not None:
            folded = self.transformer
            return module.WindowAgent(folded.flat_weights, self.ends, folded.num_heads, self.eps, discrete)
        return None

    def action_inputs(self, actions: Tensor) -> Tensor:
        """Actions [n, act_dim] in env units -> the action part of the step inputs [n, action_input_dim]:
        Box actions as they are, discrete ones as the one-hot of each component's action."""
        if not self.model.discrete:
            return actions
        hot = torch.zeros(
            len(actions), self.model.action_input_dim, dtype=actions.dtype, device=actions.device
        )
        return hot.scatter_(1, self.model.action_indices(actions), 1)

    def tokens(self, inputs: Tensor, times: Tensor) -> Tensor:
        """Step inputs [..., F] and their token times [..., 3] (later ones share the table's last row)."""
        pre = torch.addmm(self.embed_b, inputs.reshape(-1, inputs.shape[-1]), self.embed_t)
        pre = pre.view(*times.shape, -1) + self.time_table[times.clamp(max=len(self.time_table) - 1)]
        ln = self.embed_ln
        return F.layer_norm(pre, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def actions(self, hidden: Tensor) -> Tensor:
        """Backbone outputs [n, D] -> actions in env units [n, act_dim]."""
        out = torch.addmm(self.head_b, hidden, self.head_t)
        if self.model.discrete:
            return discrete_actions(out, self.model.action_sizes, self.action_ends[0], self.generator)
        return torch.addcmul(self.action_ends[0], torch.tanh(out), self.action_ends[1])

    def fused_act(
        self, obs: Tensor, reward: Tensor | None, start: Tensor | None, state: AgentState, target: float
    ) -> tuple[Tensor, Tensor, Tensor, AarenState | StepWindow] | None:
        """One whole agent step as one C++ call (`fused_agent.cpp`): the bookkeeping of
        `DecisionAgent.act`, the embedding, the backbone step and the head. Returns the actions, the new
        returns-to-go, timesteps and memory; None where the fused module cannot take this step or an
        observation or reward is not finite."""
        if self.fused is None:
            return None
        agent = (obs, reward, start, state.returns_to_go, state.timesteps, state.actions, target)
        memory = state.memory
        if self.aaren is not None:
            result = self.fused.act(*agent, memory.m, memory.u, memory.w)
        else:
            result = self.fused.act(*agent, memory.inputs, memory.times, memory.length)
        if not result:  # an observation or reward is not finite
            return None
        actions, rtg, t, *memory = result
        return actions, rtg, t, AarenState(*memory) if self.aaren is not None else StepWindow(*memory)

    def recurrent_actions(
        self, inputs: Tensor, times: Tensor, state: AarenState, start: Tensor
    ) -> tuple[Tensor, AarenState]:
        """Actions [n, act_dim] and the next Aaren state for one step of step inputs [n, F], token
        times [n, 3], rows at `start` beginning a new episode."""
        bias = step_score_bias(self.step_slope, times)
        hidden, memory = self.aaren(self.tokens(inputs, times), state, self.resets[start.long()], bias)
        return self.actions(hidden), memory

    def window_actions(self, memory: StepWindow, backbone: nn.Module) -> Tensor:
        """Actions [n, act_dim] from each row's window of step inputs, read at its newest s_t (the
        folded Transformer step; `backbone`'s forward where there is none)."""
        n, k = memory.times.shape[:2]
        read = 3 * memory.length - 2  # s_t of each row, among the tokens from R_1 on (a_0 is out)
        tokens = self.tokens(memory.inputs, memory.times).view(n, 3 * k, -1)[:, 1:]
        if self.transformer is not None:
            return self.actions(self.transformer(tokens, read))
        bias = step_score_bias(self.step_slope, memory.times.view(n, 3 * k)[:, 1:])
        hidden = backbone(tokens) if bias is None else backbone(tokens, None, bias)
        return self.actions(hidden[0][torch.arange(n, device=read.device), read])


class DecisionAgent:
    """A trained decision model ready to act in `num_envs` environments at once, towards `target_return`.

    acting: "recurrent" (O(1) memory and time per step for Aaren and the LSTM) or "window" (re-runs the
    last `context_steps` timesteps); None: as the model trained (`DecisionModelConfig.acting`). The model is put in eval
    mode and folded for acting (folded again if its weights change). eager: act through the model's own
    modules instead (the unfolded reference; for exactness tests and speed baselines).
    Discrete and MultiDiscrete models take each component's most likely action; sample=True draws it from
    the head's softmax instead, with a generator seeded with `seed` (on the folded path from Python: the
    fused step is greedy).
    """

    def __init__(
        self,
        model: DecisionModel,
        target_return: float,
        acting: str | None = None,
        *,
        eager: bool = False,
        sample: bool = False,
        seed: int = 0,
    ):
        acting = acting or model.config.acting
        if acting not in ACTING:
            raise ValueError(f"acting must be 'recurrent' or 'window', got {acting!r}")
        problem = target_return_problem(float(target_return))
        if problem is not None:
            raise ValueError(f"target_return = {problem}. Fix: {TARGET_RETURN_FIX}")
        if sample and not model.discrete:
            raise ValueError(
                "sample=True draws discrete actions, but this model acts on a Box action space, whose "
                "actions it predicts deterministically. Fix: leave sample out"
            )
        self.model = model.eval()
        self.target_return = float(target_return)
        self.acting = acting
        self.eager = eager
        self.generator = torch.Generator(self.device).manual_seed(seed) if sample else None
        self._fold()
        self._memory_type = type(self.init_state(1).memory)

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the fold (its C++ objects do not pickle): folded again on load."""
        return {key: value for key, value in self.__dict__.items() if key not in ("_folded", "_versions")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fold()

    def _fold(self) -> None:
        """Fold the model for acting and note its dtype and device: again whenever its weights change."""
        self._versions = ParameterVersions(self.model)
        self._numpy_dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        self._on_cpu = self.device.type == "cpu"
        self._folded = None if self.eager else FoldedDecisionModel(self.model, self.acting, self.generator)

    @property
    def device(self) -> torch.device:
        return self.model.state_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.state_mean.dtype

    def init_state(self, num_envs: int) -> AgentState:
        """A state for `num_envs` rows; pass episode_start=True for all of them on the first `act`."""
        c, dev, dt = self.model.config, self.device, self.dtype
        k, zeros = c.context_steps, torch.zeros
        if self.acting == "recurrent":
            memory = self.model.init_state(num_envs, dev, dt)
        elif self.eager:
            memory = Window(
                zeros(num_envs, k, device=dev, dtype=dt),
                zeros(num_envs, k, c.obs_dim, device=dev, dtype=dt),
                zeros(num_envs, k, c.act_dim, device=dev, dtype=dt),
                zeros(num_envs, k, device=dev, dtype=torch.long),
                zeros(num_envs, device=dev, dtype=torch.long),
            )
        else:
            memory = StepWindow(
                zeros(num_envs, k, self.model.action_input_dim + 1 + c.obs_dim, device=dev, dtype=dt),
                zeros(num_envs, k, 3, device=dev, dtype=torch.long),
                zeros(num_envs, device=dev, dtype=torch.long),
            )
        return AgentState(
            zeros(num_envs, device=dev, dtype=dt),
            zeros(num_envs, device=dev, dtype=torch.long),
            zeros(num_envs, c.act_dim, device=dev, dtype=dt),
            memory,
        )

    def initial_state(self, num_envs: int) -> AgentState:
        """Deprecated: the former name of `init_state`."""
        warnings.warn(
            "DecisionAgent.initial_state is deprecated; use DecisionAgent.init_state",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.init_state(num_envs)

    def act(
        self,
        observations: np.ndarray,
        state: AgentState | None = None,
        episode_start: np.ndarray | None = None,
        rewards: np.ndarray | None = None,
    ) -> tuple[np.ndarray, AgentState]:
        """Actions for observations [n, obs_dim], and the next state. The actions are numpy, in env units:
        Box [n, act_dim] floats (the model's dtype), Discrete [n] and MultiDiscrete [n, act_dim] int64.

        state None starts every row. episode_start [n] bool marks rows at their first step;
        rewards [n] are the rewards earned by the previous actions (ignored on starting rows).
        """
        if self._versions.changed():
            self._fold()
        obs = self._input("observations", observations, (None, self.model.config.obs_dim))
        n = obs.shape[0]
        start = reward = None
        if state is None:
            state, start = self.init_state(n), torch.ones(n, dtype=torch.bool, device=self.device)
        else:
            self._check_state(state, n)
            if episode_start is not None:
                start = self._input("episode_start", episode_start, (n,), bool)
        if rewards is not None:
            reward = self._input("rewards", rewards, (n,))
        step = None if self.eager else self._folded.fused_act(obs, reward, start, state, self.target_return)
        if step is None:  # no fused step here, or it found an input that is not finite
            _check_finite(observations=obs, rewards=reward)
            with torch.inference_mode():
                step = self._act_python(state, start, reward, obs)
        actions, rtg, t, memory = step
        return self._env_actions(actions), AgentState(rtg, t, actions, memory)

    def _env_actions(self, actions: Tensor) -> np.ndarray:
        """The chosen actions [n, act_dim] as `act` returns them (see there)."""
        out = (actions if self._on_cpu else actions.cpu()).numpy()
        if not self.model.discrete:
            return out
        out = out.astype(np.int64)
        return out[:, 0] if self.model.config.action_space == "Discrete" else out

    def _act_python(
        self, state: AgentState, start: Tensor | None, reward: Tensor | None, obs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Memory]:
        """`act`'s step where no fused call takes it: the bookkeeping, then the folded or eager step."""
        if start is None:
            start = torch.zeros(len(obs), dtype=torch.bool, device=self.device)
        rtg = state.returns_to_go if reward is None else state.returns_to_go - reward
        rtg = torch.where(start, self.target_return, rtg)
        t = torch.where(start, 0, state.timesteps + 1)
        act = self._act_eager if self.eager else self._act_folded
        actions, memory = act(state, start, rtg, obs, t)
        return actions, rtg, t, memory

    def _input(self, name: str, value, shape: tuple[int | None, ...], dtype: type | None = None) -> Tensor:
        """One `act` argument as a contiguous tensor of the model's dtype (or `dtype`), its shape checked
        here once (shape[0] None: any number of rows; its numbers: by the fused step, or `_check_finite`)."""
        want_type = dtype or self._numpy_dtype
        try:
            array = np.asarray(value, dtype=want_type)
        except (TypeError, ValueError) as error:  # strings, ragged lists, objects
            raise ValueError(
                f"`{name}` must be an array of {np.dtype(want_type).name} numbers: {error}"
            ) from None
        got = array.shape
        if len(got) != len(shape) or got[1:] != shape[1:] or shape[0] not in (None, got[0]):
            want = ", ".join("num_envs" if s is None else str(s) for s in shape)
            raise ValueError(f"`{name}` must have shape [{want}], got {list(array.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor if self._on_cpu else tensor.to(self.device)

    def _check_state(self, state: AgentState, n: int) -> None:
        if not isinstance(state, AgentState) or not isinstance(state.memory, self._memory_type):
            raise ValueError(
                f"`state` must be an AgentState returned by this agent's act (memory "
                f"{self._memory_type.__name__}), got {type(getattr(state, 'memory', state)).__name__}; "
                "pass None to start every row"
            )
        if state.num_envs != n:
            raise ValueError(
                f"`state` holds {state.num_envs} envs but `observations` has {n} rows; pass the state "
                "returned for this batch of envs, or None to start every row"
            )

    def _act_folded(
        self, state: AgentState, start: Tensor, rtg: Tensor, obs: Tensor, t: Tensor
    ) -> tuple[Tensor, RecurrentMemory | StepWindow]:
        folded = self._folded
        inputs = torch.cat([folded.action_inputs(state.actions), rtg.unsqueeze(1), obs], 1)
        times = _token_times(state, t)
        if self.acting == "window":
            memory = state.memory.push(inputs, times, start)
            return folded.window_actions(memory, self.model.backbone), memory
        if folded.aaren is not None:
            return folded.recurrent_actions(inputs, times, state.memory, start)
        hidden, memory = _recurrent(self.model.backbone, folded.tokens(inputs, times), state.memory, start)
        return folded.actions(hidden), memory

    def _act_eager(
        self, state: AgentState, start: Tensor, rtg: Tensor, obs: Tensor, t: Tensor
    ) -> tuple[Tensor, RecurrentMemory | Window]:
        model = self.model
        if self.acting == "window":
            prediction, window = self._act_window(state.memory, start, rtg, obs, t)
            actions = model.to_env_actions(prediction, self.generator)
            return actions, window.with_last_action(actions)  # the window holds a_t for the next re-run
        tokens = torch.stack(
            [
                model.embed_actions(state.actions, state.timesteps),
                model.embed_returns(rtg, t),
                model.embed_states(obs, t),
            ],
            dim=1,
        )
        bias = model.score_bias(_token_times(state, t))
        hidden, memory = _recurrent(model.backbone, tokens, state.memory, start, bias)
        return model.to_env_actions(model.action_head(hidden), self.generator), memory

    def _act_window(
        self, window: Window, start: Tensor, rtg: Tensor, obs: Tensor, t: Tensor
    ) -> tuple[Tensor, Window]:
        k = self.model.config.context_steps
        length = torch.where(start, torch.zeros_like(window.length), window.length)
        full = length == k
        fields = [window.returns_to_go, window.observations, window.actions, window.timesteps]
        fields = [torch.where(_expand(full, f), f.roll(-1, dims=1), f) for f in fields]
        slot = torch.clamp(length, max=k - 1)
        rows = torch.arange(len(slot), device=slot.device)
        for f, value in zip(fields, (rtg, obs, torch.zeros_like(fields[2][:, 0]), t), strict=True):
            f[rows, slot] = value
        window = Window(*fields, length=slot + 1)
        pred, _ = self.model(window.returns_to_go, window.observations, window.actions, window.timesteps)
        return pred[rows, slot], window


def _check_finite(**inputs: Tensor | None) -> None:
    """A ValueError naming the first of `inputs` that holds a NaN or inf, and its rows (envs) that do."""
    for name, value in inputs.items():
        if value is not None and not bool(torch.isfinite(value).all()):
            bad = ~torch.isfinite(value.reshape(len(value), -1)).all(1)
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(
                f"`{name}` holds non-finite values (NaN or inf) in rows {rows[:10]}"
                f"{f' and {len(rows) - 10} more' if len(rows) > 10 else ''}: check those envs' outputs"
            )


def _token_times(state: AgentState, t: Tensor) -> Tensor:
    """The timesteps [n, 3] of a step's tokens a_{t-1}, R_t, s_t: (t - 1, t, t), unclamped."""
    return torch.stack([state.timesteps, t, t], 1)


def _recurrent(
    backbone: torch.nn.Module,
    tokens: Tensor,
    memory: RecurrentMemory,
    start: Tensor,
    bias: Tensor | None = None,
) -> tuple[Tensor, RecurrentMemory]:
    """The backbone's output at s_t [n, D] and its next state, through its own forward (with the Aaren score
    `bias` [n, H, 3] of the step's tokens, if any). When some rows start and others continue, every row's
    a_{t-1} token goes through first, then the starting rows are emptied and [R_t, s_t] follows: exact, two
    calls in such steps, one otherwise."""

    def run(tokens_at: slice, memory: RecurrentMemory) -> tuple[Tensor, RecurrentMemory]:
        scores = () if bias is None else (bias[..., tokens_at],)
        return backbone(tokens[:, tokens_at], memory, *scores)

    if bool(start.all()):
        hidden, memory = run(slice(1, 3), memory.reset(start))
    elif bool(start.any()):
        _, memory = run(slice(0, 1), memory)
        hidden, memory = run(slice(1, 3), memory.reset(start))
    else:
        hidden, memory = run(slice(0, 3), memory)
    return hidden[:, -1], memory


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))
