"""AarenPPO: PPO whose actor and critic carry Aaren memory, inside Stable-Baselines3.

    from agents.ppo.algorithm import AarenPPO
    model = AarenPPO("MlpAarenPolicy", "aaren_rl/CartPoleNoVel-v1", n_steps=128).learn(50_000)
    actions, state = model.predict(obs, state=state, episode_start=episode_starts)

In the style of sb3-contrib's RecurrentPPO, with the LSTM replaced by Aaren:
- acting is the O(1) recurrent update: one token per env step with the carried state, per-env rows
  reset where an episode starts;
- the rollout buffer cuts each env's column of steps into sequences at episode starts (and at the
  rollout start) and stores only the state entering the rollout: a sequence starting at an episode
  start enters with the policy's initial state, the first sequence of each env with the carried state;
- training re-runs every stored sequence of a minibatch in parallel with the prefix scan, packed end
  to end into rows (`pack_rows`; the scan's resets start each episode afresh) rather than padded one
  per row, so short episodes cost no padding; minibatches are whole sequences, about `batch_size`
  real steps each. RecurrentPPO re-runs its LSTM step by step instead;
- with `previous_action_reward` (the policy's default) the acting state also carries the last
  action and reward (the reward recorded after `env.step`), and training derives them from the
  stored sequences, so both see the same inputs.

The PPO update itself is SB3's `PPO.train`, unchanged: a minibatch's `observations` are the rows of
packed sequences with their entering states (`RolloutSequences`), and every other field, as well as
the values and log-probs the policy returns, covers the real steps only, so every loss term is masked.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Generator
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from agents.ppo.policy import (
    FORMAT_KEY,
    POLICY_FORMAT,
    AarenActorCriticPolicy,
    ActorCriticState,
    RolloutSequences,
    options_as_saved,
)

SelfAarenPPO = TypeVar("SelfAarenPPO", bound="AarenPPO")


class AarenRolloutBufferSamples(NamedTuple):
    """RolloutBufferSamples for sequences: `observations` packed into rows [R, T, ...] with entering
    states, mask and resets; the other fields on the real steps only, in mask order."""

    observations: RolloutSequences
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor


class AarenRolloutBuffer(RolloutBuffer):
    """RolloutBuffer that yields whole sequences (cut at episode starts) with their entering states.

    Arrays stay [n_steps, n_envs, ...]; `entering_state` is the policy state entering step 0 and
    `init_state` its state before an episode's first step (both set by the algorithm), the only memory
    stored. Sequences carry their actions and rewards too, from which
    the policy derives each step's previous action and reward (`previous_action_reward`): shifted by
    one step within the sequence, the entering state's for its first step (zero at an episode start).
    """

    entering_state: ActorCriticState | None
    init_state: ActorCriticState | None

    def reset(self) -> None:
        super().reset()
        self.entering_state = self.init_state = None
        self._tensors: dict[str, Tensor] | None = None

    def sequences(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(env, first step, length) of every sequence: each env's column cut at episode starts."""
        starts = self.episode_starts.astype(bool)
        starts[0] = True
        flat_starts = np.flatnonzero(starts.T.ravel())  # env-major: index = env * n_steps + step
        lengths = np.diff(np.append(flat_starts, starts.size))
        return flat_starts // self.buffer_size, flat_starts % self.buffer_size, lengths

    def get(self, batch_size: int | None = None) -> Generator[AarenRolloutBufferSamples, None, None]:  # type: ignore[override]
        """Shuffled minibatches of whole sequences, each about `batch_size` real steps (at least one
        sequence); None: everything at once."""
        assert self.full and self.entering_state is not None, "the rollout is not complete"
        if self._tensors is None:
            names = (
                "observations",
                "actions",
                "values",
                "log_probs",
                "advantages",
                "returns",
                "episode_starts",
                "rewards",
            )
            self._tensors = {name: self.to_torch(getattr(self, name)) for name in names}
        env, first, length = self.sequences()
        order = np.random.permutation(len(length))
        offsets = np.cumsum(length[order]) - length[order]
        group = offsets // (batch_size or self.buffer_size * self.n_envs)
        for g in np.unique(group):
            chosen = order[group == g]
            yield self._sequence_samples(env[chosen], first[chosen], length[chosen])

    def _sequence_samples(
        self, env: np.ndarray, first: np.ndarray, length: np.ndarray
    ) -> AarenRolloutBufferSamples:
        assert self._tensors is not None and self.entering_state is not None and self.init_state is not None
        data = self._tensors
        starts_episode = self.episode_starts[first, env].astype(bool)
        rows, offsets = pack_rows(length, carried=(first == 0) & ~starts_episode)
        steps, envs, mask, resets = packed_layout(env, first, length, rows, offsets)
        steps_t, envs_t, mask_t = (torch.as_tensor(a, device=self.device) for a in (steps, envs, mask))
        resets_t = torch.as_tensor(resets, device=self.device) if resets.any() else None  # None: unsegmented
        real_steps, real_envs = steps_t[mask_t], envs_t[mask_t]
        leaders = np.flatnonzero(offsets == 0)  # each row's first sequence, whose state the row enters with
        leaders = leaders[np.argsort(rows[leaders])]
        entering = self.entering_state.select(torch.as_tensor(env[leaders], device=self.device))
        start = self.init_state.select(torch.as_tensor(env[leaders], device=self.device))
        entering = entering.reset(torch.as_tensor(starts_episode[leaders], device=self.device), start)
        return AarenRolloutBufferSamples(
            observations=RolloutSequences(
                data["observations"][steps_t, envs_t],
                entering,
                mask_t,
                data["actions"][steps_t, envs_t],
                data["rewards"][steps_t, envs_t],
                resets_t,
            ),
            actions=data["actions"][real_steps, real_envs],
            old_values=data["values"][real_steps, real_envs],
            old_log_prob=data["log_probs"][real_steps, real_envs],
            advantages=data["advantages"][real_steps, real_envs],
            returns=data["returns"][real_steps, real_envs],
        )


def packed_layout(
    env: np.ndarray, first: np.ndarray, length: np.ndarray, rows: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The [R, T] step and env indices, mask (real steps) and resets (a later sequence starts) of
    sequences (env, first step, length) laid out at `pack_rows`' rows and offsets; padding reads step 0
    of env 0 (masked out)."""
    sequence = np.repeat(np.arange(len(length)), length)  # every real token's sequence
    within = np.arange(len(sequence)) - np.repeat(np.cumsum(length) - length, length)
    row, column = rows[sequence], offsets[sequence] + within
    shape = (int(rows.max()) + 1, int(column.max()) + 1)
    steps, envs = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    steps[row, column], envs[row, column] = first[sequence] + within, env[sequence]
    mask, resets = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    mask[row, column], resets[row, column] = True, (within == 0) & (column > 0)
    return steps, envs, mask, resets


def pack_rows(lengths: np.ndarray, carried: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's row and offset in it, packing sequences end to end into about as few rows as the
    longest sequence allows (longest first into the shortest row). A `carried` sequence enters with a
    carried state, which only a row's first token can take: each starts its own row; the others start
    an episode, from the initial state, so they may follow another sequence (a reset between). One
    sequence per row where packing would save no token."""
    n_rows = max(int(carried.sum()), math.ceil(lengths.sum() / lengths.max()))
    row, offset = np.zeros(len(lengths), dtype=np.int64), np.zeros(len(lengths), dtype=np.int64)
    loads = np.zeros(n_rows, dtype=np.int64)
    leading = np.flatnonzero(carried)
    row[leading], loads[: len(leading)] = np.arange(len(leading)), lengths[leading]
    for i in np.flatnonzero(~carried)[np.argsort(-lengths[~carried], kind="stable")]:
        r = int(loads.argmin())
        row[i], offset[i] = r, loads[r]
        loads[r] += lengths[i]
    if n_rows * loads.max() >= len(lengths) * lengths.max():
        return np.arange(len(lengths)), np.zeros(len(lengths), dtype=np.int64)
    return row, offset


class AarenPPO(PPO):
    """PPO with an `AarenActorCriticPolicy` ("MlpAarenPolicy"); arguments as SB3's PPO.

    Defaults follow RecurrentPPO (n_steps 128, batch_size 128). `batch_size` counts real steps of
    whole sequences, so minibatches vary a little in size. `predict` takes and returns the memory
    state (see AarenActorCriticPolicy.predict).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpAarenPolicy": AarenActorCriticPolicy}
    policy: AarenActorCriticPolicy
    rollout_buffer: AarenRolloutBuffer

    def __init__(
        self,
        policy: str | type[AarenActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._last_policy_state: ActorCriticState | None = None
        # a saved zip records the format of its options, so it builds as trained (see _setup_model)
        policy_kwargs = {FORMAT_KEY: POLICY_FORMAT, **(policy_kwargs or {})}
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=AarenRolloutBuffer,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        # the policy as it was trained: the options a zip lacks are what its format implies (format 0: a
        # zip from before formats were recorded); policy_kwargs stays as recorded, so a re-save keeps it
        recorded = self.policy_kwargs
        options = {key: value for key, value in recorded.items() if key != FORMAT_KEY}
        self.policy_kwargs = options_as_saved(options, recorded.get(FORMAT_KEY, 0))
        super()._setup_model()
        self.policy_kwargs = recorded
        if not isinstance(self.policy, AarenActorCriticPolicy):
            raise ValueError(f"AarenPPO needs an AarenActorCriticPolicy, got {type(self.policy).__name__}")

    def _excluded_save_params(self) -> list[str]:
        # The acting state belongs to the envs of this process; a loaded model starts afresh.
        return [*super()._excluded_save_params(), "_last_policy_state"]

    @classmethod
    def load(
        cls: type[SelfAarenPPO], path: str | os.PathLike | io.BufferedIOBase, *args: Any, **kwargs: Any
    ) -> SelfAarenPPO:
        """SB3's `BaseAlgorithm.load`, same arguments.

        Security: SB3's zip stores some entries with cloudpickle, so loading a crafted zip runs its
        code. Load only zips from sources you trust; to share a policy, use
        `agents.ppo.export.export_policy` and `load_exported_policy` (safetensors + JSON, no pickles).
        The policy and rollout-buffer classes are not read from the zip (AarenPPO always uses its own),
        so zips saved when they lived in `agents.ppo_policy` and `agents.ppo` load too; `custom_objects`
        may still name others.
        """
        kwargs["custom_objects"] = {
            "policy_class": AarenActorCriticPolicy,
            "rollout_buffer_class": AarenRolloutBuffer,
            **(kwargs.get("custom_objects") or {}),
        }
        return super().load(path, *args, **kwargs)

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        total_timesteps, callback = super()._setup_learn(total_timesteps, *args, **kwargs)
        state = self._last_policy_state
        if state is None or state.batch_size != self.n_envs:
            self._last_policy_state = self.policy.init_state(self.n_envs)
        return total_timesteps, callback

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Policy actions -> env actions: unsquash, or clip Gaussian samples to the Box bounds."""
        if not isinstance(self.action_space, spaces.Box):
            return actions
        if self.policy.squash_output:
            return self.policy.unscale_action(actions)
        return np.clip(actions, self.action_space.low, self.action_space.high)

    def _starts(self, dones: np.ndarray) -> Tensor:
        return torch.as_tensor(dones, dtype=torch.bool, device=self.device)

    def _bootstrap_timeouts(
        self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict], state: ActorCriticState
    ) -> None:
        """Add gamma * V(terminal observation) to the rewards of truncated episodes (SB3 #633); the
        critic reads the terminal observation as the next token of the episode."""
        rows = [
            i
            for i, done in enumerate(dones)
            if done
            and infos[i].get("terminal_observation") is not None
            and infos[i].get("TimeLimit.truncated", False)
        ]
        if not rows:
            return
        terminal = np.stack([infos[i]["terminal_observation"] for i in rows])
        with torch.no_grad():
            values = self.policy.predict_values(
                obs_as_tensor(terminal, self.device),
                state.select(torch.as_tensor(rows, device=self.device)),
                torch.zeros(len(rows), dtype=torch.bool, device=self.device),
            )
        rewards[rows] += self.gamma * values.flatten().cpu().numpy()

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's rollout loop with the memory state carried from step to step."""
        assert isinstance(rollout_buffer, AarenRolloutBuffer), "AarenPPO needs an AarenRolloutBuffer"
        assert self._last_obs is not None and self._last_policy_state is not None, "call learn()"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        rollout_buffer.entering_state = self._last_policy_state
        rollout_buffer.init_state = self.policy.init_state(self.n_envs)
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        callback.on_rollout_start()

        n_steps = 0
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)
            with torch.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs, state = self.policy(
                    obs_tensor, self._last_policy_state, self._starts(self._last_episode_starts)
                )
            actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(self._env_actions(actions))
            self.num_timesteps += env.num_envs
            state = state.with_reward(torch.tensor(rewards, device=self.device))

            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            self._bootstrap_timeouts(rewards, dones, infos, state)
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs, self._last_episode_starts, self._last_policy_state = new_obs, dones, state

        with torch.no_grad():
            values = self.policy.predict_values(
                obs_as_tensor(new_obs, self.device),
                state,
                self._starts(dones),  # type: ignore[arg-type]
            )
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def learn(
        self: SelfAarenPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "AarenPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAarenPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
