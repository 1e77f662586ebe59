"""Acting with a trained `DecisionModel`, batched over environments.

`DecisionAgent.act(observations, state, episode_start, rewards) -> (actions, state)` is the one
entry point the evaluation loop uses (and what an SB3-style `predict` wraps): the state is passed
in and out, rows whose `episode_start` is set begin a new episode (return-to-go = target,
timestep 0, empty memory), and `rewards` are the rewards the previous actions earned
(R_t = R_{t-1} - r_{t-1}).

Two ways to act:
- "recurrent" (the default for Aaren): per env step the new tokens [a_{t-1}, R_t, s_t] go through
  the backbone once with the carried state; at an episode's first step only [R_1, s_1]. This is
  exactly the training sequence R_1 s_1 a_1 R_2 ..., so the chosen action equals the parallel
  forward's prediction. When some rows start and others continue in the same step, every row's
  action token goes through first, then the starting rows are emptied and [R_t, s_t] follows:
  exact, two calls in such steps, one otherwise. Aaren's state is constant in size; with the
  Transformer backbone the state is its KV cache over the whole episode (it grows every step, and
  attends further back than the K-step windows the Transformer trained on: a speed baseline).
- "window" (the default for the Transformer, the reference DT way): every step re-runs the last K
  timesteps (right-padded, so causality keeps the padding out) and reads the prediction at the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from aaren_rl import AarenState, KVCache
from agents.model import DecisionModel

#: The two ways to act (see the module docstring).
ACTING = ("recurrent", "window")


@dataclass(frozen=True)
class Window:
    """The last K timesteps of each row (left-aligned; `length` real entries, the rest stale)."""

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
class AgentState:
    """Per-env acting state: return-to-go, timestep and last action of the current step, plus memory
    (an `AarenState` or `KVCache` when acting "recurrent", a `Window` when acting "window")."""

    returns_to_go: Tensor  # [n]
    timesteps: Tensor  # [n] long
    actions: Tensor  # [n, act_dim] the actions chosen at `timesteps` (env units)
    memory: AarenState | KVCache | Window

    @property
    def num_envs(self) -> int:
        return self.returns_to_go.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held per batch: constant for the recurrent agent, K steps for the window agent."""
        own = sum(t.numel() * t.element_size() for t in (self.returns_to_go, self.timesteps, self.actions))
        return own + self.memory.nbytes


class DecisionAgent:
    """A trained decision model ready to act in `num_envs` environments at once, towards `target_return`.

    acting: "recurrent" (default for Aaren; O(1) memory and time per step) or "window" (default for
    the Transformer; re-runs the last `context_steps` timesteps). The model is put in eval mode.
    """

    def __init__(self, model: DecisionModel, target_return: float, acting: str | None = None):
        acting = acting or ("recurrent" if model.config.backbone == "aaren" else "window")
        if acting not in ACTING:
            raise ValueError(f"acting must be 'recurrent' or 'window', got {acting!r}")
        self.model = model.eval()
        self.target_return = float(target_return)
        self.acting = acting

    @property
    def device(self) -> torch.device:
        return self.model.state_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.state_mean.dtype

    def initial_state(self, num_envs: int) -> AgentState:
        """A state for `num_envs` rows; pass episode_start=True for all of them on the first `act`."""
        c, dev, dt = self.model.config, self.device, self.dtype
        if self.acting == "recurrent":
            memory = self.model.init_state(num_envs, dev, dt)
        else:
            k = c.context_steps
            memory = Window(
                torch.zeros(num_envs, k, device=dev, dtype=dt),
                torch.zeros(num_envs, k, c.obs_dim, device=dev, dtype=dt),
                torch.zeros(num_envs, k, c.act_dim, device=dev, dtype=dt),
                torch.zeros(num_envs, k, device=dev, dtype=torch.long),
                torch.zeros(num_envs, device=dev, dtype=torch.long),
            )
        return AgentState(
            torch.zeros(num_envs, device=dev, dtype=dt),
            torch.zeros(num_envs, device=dev, dtype=torch.long),
            torch.zeros(num_envs, c.act_dim, device=dev, dtype=dt),
            memory,
        )

    @torch.no_grad()
    def act(
        self,
        observations: np.ndarray,
        state: AgentState | None = None,
        episode_start: np.ndarray | None = None,
        rewards: np.ndarray | None = None,
    ) -> tuple[np.ndarray, AgentState]:
        """Actions [n, act_dim] (env units, numpy) for observations [n, obs_dim], and the next state.

        state None starts every row. episode_start [n] bool marks rows at their first step;
        rewards [n] are the rewards earned by the previous actions (ignored on starting rows).
        """
        obs = torch.as_tensor(np.asarray(observations), device=self.device, dtype=self.dtype)
        if obs.dim() != 2 or obs.shape[1] != self.model.config.obs_dim:
            raise ValueError(
                f"observations must have shape [num_envs, {self.model.config.obs_dim}], got {list(obs.shape)}"
            )
        n = obs.shape[0]
        if state is None:
            state, start = self.initial_state(n), torch.ones(n, dtype=torch.bool, device=self.device)
        else:
            if state.num_envs != n:
                raise ValueError(f"state holds {state.num_envs} envs but observations has {n} rows")
            start = torch.zeros(n, dtype=torch.bool, device=self.device)
            if episode_start is not None:
                start = torch.as_tensor(np.asarray(episode_start, dtype=bool), device=self.device)
        reward = torch.zeros(n, device=self.device, dtype=self.dtype)
        if rewards is not None:
            reward = torch.as_tensor(np.asarray(rewards), device=self.device, dtype=self.dtype)
        rtg = torch.where(start, torch.full_like(reward, self.target_return), state.returns_to_go - reward)
        t = torch.where(start, torch.zeros_like(state.timesteps), state.timesteps + 1)
        if self.acting == "recurrent":
            unit, memory = self._act_recurrent(state, start, rtg, obs, t)
        else:
            unit, memory = self._act_window(state.memory, start, rtg, obs, t)
        actions = self.model.to_env_actions(unit)
        if self.acting == "window":  # the window holds a_t for the next step's re-run
            memory = memory.with_last_action(actions)
        return actions.cpu().numpy(), AgentState(rtg, t, actions, memory)

    def _act_recurrent(
        self, state: AgentState, start: Tensor, rtg: Tensor, obs: Tensor, t: Tensor
    ) -> tuple[Tensor, AarenState | KVCache]:
        model, backbone = self.model, self.model.backbone
        new = torch.stack([model.embed_returns(rtg, t), model.embed_states(obs, t)], dim=1)  # [n, 2, D]
        if bool(start.all()):
            hidden, memory = backbone(new, state.memory.reset(start))
        else:
            a_tok = model.embed_actions(state.actions, state.timesteps).unsqueeze(1)
            if bool(
                start.any()
            ):  # the starting rows' action tokens are emptied with the rest of their memory
                _, memory = backbone(a_tok, state.memory)
                hidden, memory = backbone(new, memory.reset(start))
            else:
                hidden, memory = backbone(torch.cat([a_tok, new], dim=1), state.memory)
        return model.action_head(hidden[:, -1]), memory

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


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))
