"""An SB3 actor-critic policy whose actor and critic remember the episode with Aaren backbones.

    observation -> features extractor -> AarenMemory (linear embed + AarenBackbone with recency slopes)
                -> MLP extractor -> action distribution / value head

Acting feeds one token per env step through the backbone with the carried constant-size state
(`ActorCriticState`, rows reset where an episode starts); without gradients and outside training mode
(predict, rollout collection) that step runs on the memories folded for acting (`FoldedMemory`),
folded again whenever their weights have changed (and after every optimizer step). Training re-runs
whole stored sequences at once with the scan from each row's entering state, short episodes packed
into shared rows (`RolloutSequences`), and gives the same log-probs and values as acting did, to float
tolerance.

Each head adds a learned recency slope times the step's episode timestep to its scores (ALiBi-like).
Aaren's query is input-independent, so without that the memory is a weighted average of the past
that cannot tell recent observations from old ones (the velocities a task hides, say).

Each head also has a learned sink (`sink=True`, the default; `aaren_rl.Aaren`): a token of learned
score and value (`sink_value=True`, the default; starting at 0) that starts every episode. A head's
softmax average does not change when every step is seen twice as often, so it cannot count; with a
sink that outweighs the steps seen, the head is nearly a sum of its values and counts (how many red
cards so far, in POPGym's CountRecall), and a value's constant part becomes a ramp in the steps seen;
as the steps outweigh the sink, the head's output moves from the sink's value to their average, a
clock. Half the heads' sinks start high (`SINK_INIT`), the others' at 0, and all are learned. Acting
starts each episode from the state holding only the sinks (`init_state`); training joins them to
each episode's first step, which is the same attention.

By default the actor and the critic have separate memories (as RecurrentPPO's default LSTMs), so
value-loss gradients do not shape the actor's memory; `share_memory=True` uses one memory for both
(one backbone pass per step, about half the cost). `recency=False` drops the slopes (for ablations).

By default (`previous_action_reward=True`) each memory is also fed the previous step's action
(one-hot, one-hot per component for MultiDiscrete, Box actions clipped to their bounds and scaled
to [-1, 1]; zeros at an episode's first step), and the critic's own memory the previous reward too.
The reward stays out of
the actor's input on purpose: SB3's `predict` (so `evaluate_policy`, `EvalCallback`) never receives
rewards, so an actor reading them would act on zeros there and on true rewards in rollouts. The
previous action is known to every path (`predict` keeps it in its state), so acting in `predict`,
in rollouts and in training's re-run all see the same inputs. To give the actor rewards exactly, let
them travel with the observation (`agents.decision.sb3.RewardToPolicyVecEnv`). With `share_memory=True` the one
memory is the actor's, so it gets the previous action only. `previous_action_reward=False` leaves
the memories the observations alone (Box actions without bounds need it).

`input_lags=k` (default 4) feeds each memory, next to a step's features, the features of the k steps
before it in the episode (zeros before its start; `ActorCriticState.actor_lags`, `critic_lags`): a short
causal convolution over the memory's inputs, as Mamba-like models put before their recurrence. A head
of a content-weighted average cannot single out "the card 4 steps ago"; the lags give the last k steps
exactly, at a constant [B, k, F] more state; 0 turns them off.

`episode_time=True` joins each step's episode time to its features in the actor's memory (so its lags
carry it too): min(t / scale, 1) for the scales of `TIME_SCALES`, linear in time over each scale's
range. A head averages, so the memory cannot tell how many steps it has seen, where an LSTM can count
them; POPGym's CountRecall (how many cards of a colour so far) asks for about that. The critic's
memory does not get it. Off by default: it helps counting but hurts tasks that need no clock (CartPole).

What each default was measured against, and what else was tried: docs/notes/ppo-memory.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn
from torch.nn import functional as F

from aaren_rl import AarenBackbone, AarenState
from aaren_rl.folded import FoldedAarenBackbone, ParameterVersions


def _take_rows(rows: Tensor, start: Tensor | None, t: Tensor | None) -> Tensor | None:
    """`t` [B, ...] with the rows of bool mask `rows` [B] taken from `start` (None stays None)."""
    return None if t is None else torch.where(rows.view(-1, *(1,) * (t.dim() - 1)), start, t)


@dataclass(frozen=True)
class ActorCriticState:
    """Per-env memory of the policy: actor and critic Aaren states (critic None when shared, or when
    only the actor runs), the number of steps seen in the current episode ([B] long, the timestep of
    the next token) and, with `previous_action_reward`, the last step's encoded action [B, A] and
    reward [B] (None where no memory reads them; zero before an episode's first step) and, with
    `input_lags` k, each memory's features of the last k steps [B, k, F], oldest first (None without)."""

    actor: AarenState
    critic: AarenState | None
    steps: Tensor
    last_action: Tensor | None = None
    last_reward: Tensor | None = None
    actor_lags: Tensor | None = None
    critic_lags: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.steps.shape[0]

    def reset(self, rows: Tensor, start: ActorCriticState) -> ActorCriticState:
        """The state with the rows of bool mask `rows` set to those of `start` (the policy's
        `init_state`: their episode starts again)."""
        return ActorCriticState(
            self.actor.reset(rows, start.actor),
            None if self.critic is None else self.critic.reset(rows, start.critic),
            *(
                _take_rows(rows, theirs, mine)
                for mine, theirs in (
                    (self.steps, start.steps),
                    (self.last_action, start.last_action),
                    (self.last_reward, start.last_reward),
                    (self.actor_lags, start.actor_lags),
                    (self.critic_lags, start.critic_lags),
                )
            ),
        )

    def select(self, rows: Tensor) -> ActorCriticState:
        """The rows `rows` (indices, repeats allowed)."""
        return ActorCriticState(
            self.actor.select(rows),
            None if self.critic is None else self.critic.select(rows),
            self.steps[rows],
            *(None if t is None else t[rows] for t in (self.last_action, self.last_reward)),
            *(None if t is None else t[rows] for t in (self.actor_lags, self.critic_lags)),
        )

    def with_reward(self, rewards: Tensor) -> ActorCriticState:
        """The state after the env returned `rewards` [B] for the step just taken (kept only where a
        memory reads previous rewards)."""
        return self if self.last_reward is None else replace(self, last_reward=rewards.to(self.last_reward))


class RolloutSequences(NamedTuple):
    """A minibatch of stored sequences packed end to end into rows, padded at the end: observations
    [R, T, *obs_shape], the state entering each row (its first sequence's), mask [R, T] (True on real
    steps), the actions [R, T, action_dim] and rewards [R, T] taken at each step (the next steps'
    previous action and reward), and resets [R, T] (True where a later sequence starts in the row: an
    episode start, entered from the initial state; None: one sequence per row)."""

    observations: Tensor
    state: ActorCriticState
    mask: Tensor
    actions: Tensor
    rewards: Tensor
    resets: Tensor | None = None


def _check_bounded(action_space: spaces.Space) -> None:
    """previous_action_reward scales Box actions by their bounds: a clear error for unbounded ones."""
    if isinstance(action_space, spaces.Box) and not (
        np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()
    ):
        raise ValueError(
            f"previous_action_reward scales Box actions to [-1, 1] by their bounds, but {action_space} is "
            "unbounded. Fix: give the env an action space with finite low and high, or set "
            "previous_action_reward=False"
        )


#: Scales (in steps) of the episode-time features: min(t / scale, 1) for each.
TIME_SCALES = (16.0, 64.0, 256.0, 1024.0)


def time_features(timesteps: Tensor, dtype: torch.dtype) -> Tensor:
    """Episode timesteps [B, N] -> features [B, N, len(TIME_SCALES)] in [0, 1]: min(t / scale, 1), so
    each scale is linear in time over its own range of episode lengths, with no episode limit to know."""
    scales = torch.tensor(TIME_SCALES, dtype=dtype, device=timesteps.device)
    return (timesteps.to(dtype)[..., None] / scales).clamp(max=1)


def episode_timesteps(steps: Tensor, n: int, resets: Tensor | None) -> Tensor:
    """Each of N tokens' episode timestep [B, N] in rows entering at timesteps `steps` [B]: counting on
    from `steps`, and from 0 again at each reset (an episode starting in a packed row)."""
    offsets = torch.arange(n, device=steps.device)
    if resets is None:
        return steps[:, None] + offsets
    last_reset = (offsets * resets).cummax(-1).values  # 0 up to the row's first reset
    return offsets - last_reset + steps[:, None] * (last_reset == 0)


def lags_in_episode(timesteps: Tensor, lags: int) -> Tensor:
    """[B, N, lags + 1, 1]: whether each step of a token's window (oldest first, itself last) lies in its
    episode; acting's lags hold zeros before the episode's first step."""
    return (timesteps[..., None] >= torch.arange(lags, -1, -1, device=timesteps.device))[..., None]


def recency_bias(recency: Tensor | None, timesteps: Tensor) -> Tensor | None:
    """Score bias [B, H, N] = recency[h] * timestep for slopes [H] and episode timesteps [B, N]; None
    without slopes."""
    if recency is None:
        return None
    return recency[:, None] * timesteps[:, None, :].to(recency.dtype)


#: The initial sink score of every other head (0, 2, ...; the others' start at 0): about e^8 = 3,000
#: tokens of score 0 weigh as much as such a sink, so over episodes of up to hundreds of steps these
#: heads start out near a sum of their values (a count), and the others near an average, which can
#: single out one token (a cue) without first unlearning a sink. All are learned.
SINK_INIT = 8.0


class AarenMemory(nn.Module):
    """Inputs [B, N, input_dim] and their episode timesteps [B, N] -> latents [B, N, embed_dim], new state.

    With `recency`, each head h adds recency[h] * timestep to its attention scores (learned;
    initialised to 0 for the first head, 1, 1/2, 1/4, ... for the others, like ALiBi's slopes): its
    output is then an exponentially decaying average of the past, so recent observations (velocities)
    can be read. Without, `recency` is None and the heads weigh the past by content only.

    With `sink`, each head has a learned sink (`aaren_rl.Aaren`: a token of learned score and, with
    `sink_value`, learned value that starts every episode), its score initialised to `SINK_INIT` on
    every other head and 0 on the others.
    """

    def __init__(
        self,
        input_dim: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ffn_mult: int,
        dropout: float,
        recency: bool = True,
        sink: bool = True,
        sink_value: bool = True,
    ):
        super().__init__()
        self.embed = nn.Linear(input_dim, embed_dim)
        slopes = torch.tensor([0.0] + [2.0**-i for i in range(num_heads - 1)])
        self.recency = nn.Parameter(slopes) if recency else None
        self.backbone = AarenBackbone(
            embed_dim, num_layers, num_heads, ffn_mult, dropout, sink=sink, sink_value=sink_value
        )
        self.sink = sink
        if sink:
            with torch.no_grad():
                for block in self.backbone.blocks:
                    block.mixer.sink.copy_(torch.arange(num_heads) % 2 == 0).mul_(SINK_INIT)

    def forward(
        self, inputs: Tensor, timesteps: Tensor, state: AarenState, resets: Tensor | None = None
    ) -> tuple[Tensor, AarenState]:
        """resets [B, N]: where a new episode starts in a row (`AarenBackbone.forward`). With sinks, the
        memory restarts at every episode's first step (timestep 0), so that the sinks get gradients
        there too (a row's entering state holds them without)."""
        bias = recency_bias(self.recency, timesteps)
        if self.sink:
            resets = timesteps == 0
        return self.backbone(self.embed(inputs), state, bias, resets=resets)


class FoldedMemory:
    """An `AarenMemory` folded for acting one token per env step (`aaren_rl.folded.FoldedAarenBackbone`):
    equal to its forward on one token, to float roundoff. `stale` says when the memory's weights have
    changed."""

    def __init__(self, memory: AarenMemory):
        self._versions = ParameterVersions(memory)
        self.embed_weight, self.embed_bias = memory.embed.weight.detach(), memory.embed.bias.detach()
        self.recency = None if memory.recency is None else memory.recency.detach()
        self.backbone = FoldedAarenBackbone(memory.backbone)

    @property
    def stale(self) -> bool:
        return self._versions.changed()

    def __call__(self, inputs: Tensor, timesteps: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        """Inputs [B, 1, input_dim] at episode timesteps [B, 1] -> latents [B, 1, embed_dim], new state."""
        x = F.linear(inputs, self.embed_weight, self.embed_bias)
        y, state = self.backbone(x, state, None, recency_bias(self.recency, timesteps))
        return y.unsqueeze(1), state


#: The default optimizer's options: SB3's Adam eps, in one fused kernel per step rather than a Python loop
#: over the parameter tensors (the same update; a memory has many small tensors, so that loop is most
#: of Adam's cost).
FUSED_ADAM = {"eps": 1e-5, "fused": True}

#: The version of the constructor options a saved policy records: AarenPPO zips in their policy_kwargs
#: (under FORMAT_KEY), exports in policy.json. Adding an option whose default is not how saves of the
#: current format were built, or changing a default, raises it and records in FORMAT_IMPLIES what the
#: previous format implies, so every save builds as it was trained.
POLICY_FORMAT = 1
FORMAT_KEY = "policy_format"
#: What the saves of each older format were built with for the options they may lack (format 0: saved
#: before formats were recorded, when these options were added or changed).
FORMAT_IMPLIES: dict[int, dict[str, Any]] = {
    0: {"previous_action_reward": False, "input_lags": 0, "sink": False, "sink_value": False},
}


def options_as_saved(options: Mapping[str, Any], policy_format: int) -> dict[str, Any]:
    """The constructor options of a policy saved with `options` in `policy_format`: those it lacks are
    what that format implies, or a later one (the oldest that says). ValueError for an unknown format."""
    if type(policy_format) is not int or not 0 <= policy_format <= POLICY_FORMAT:
        raise ValueError(
            f"policy format {policy_format!r} is not one this aaren-rl reads (0 to {POLICY_FORMAT}): it was "
            "saved by a newer aaren-rl, or the file is damaged"
        )
    implied: dict[str, Any] = {}
    for version in range(POLICY_FORMAT - 1, policy_format - 1, -1):
        implied.update(FORMAT_IMPLIES[version])
    return {**implied, **options}


class AarenActorCriticPolicy(ActorCriticPolicy):
    """ActorCriticPolicy with Aaren memory; the extra arguments size the memory.

    embed_dim, num_layers, num_heads, ffn_mult, dropout: the AarenBackbone (dropout 0 keeps the
        PPO ratio exactly 1 before the first update).
    share_memory: one memory for actor and critic instead of one each.
    recency: the learned per-head recency slopes (False: none, content-only attention).
    sink: a learned sink per head (`AarenMemory`), so that a head can count.
    sink_value: learn each sink's value too (False: value 0).
    previous_action_reward: feed the memories the previous action, and the critic's own memory the
        previous reward too (see the module's docstring for why the actor gets no reward).
    input_lags: feed the memories the features of this many steps before each step too.
    episode_time: join each step's episode-time features (`time_features`) to its features in the
        actor's memory.
    Other arguments as SB3's ActorCriticPolicy; `net_arch` sizes the MLPs after the memory, and
    Adam without `optimizer_kwargs` runs fused (`FUSED_ADAM`).

    `fold_acting` (attribute, default True): act through the memories folded for acting; False acts
    through the modules' forward (the same results to float roundoff; benchmarks compare the two).
    """

    fold_acting: bool = True

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        embed_dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 4,
        ffn_mult: int = 2,
        dropout: float = 0.0,
        share_memory: bool = False,
        recency: bool = True,
        sink: bool = True,
        sink_value: bool = True,
        previous_action_reward: bool = True,
        input_lags: int = 4,
        episode_time: bool = False,
    ):
        if isinstance(observation_space, spaces.Dict):
            raise ValueError("AarenActorCriticPolicy does not support Dict observation spaces")
        if previous_action_reward and not squash_output:
            _check_bounded(action_space)
        if not isinstance(input_lags, int) or input_lags < 0:
            raise ValueError(f"input_lags must be a whole number >= 0 (steps fed back), got {input_lags!r}")
        if optimizer_kwargs is None and optimizer_class is torch.optim.Adam:
            optimizer_kwargs = dict(FUSED_ADAM)
        # Read by _build_mlp_extractor, which ActorCriticPolicy.__init__ calls.
        self.memory_kwargs = dict(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_mult=ffn_mult,
            dropout=dropout,
            recency=recency,
            sink=sink,
            sink_value=sink_value,
        )
        self.share_memory = share_memory
        self.previous_action_reward = previous_action_reward
        self.input_lags = input_lags
        self.episode_time = episode_time
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied without the folded memories (their C++ objects do not pickle): they
        are folded again at the next act."""
        return {**super().__getstate__(), "_folded": {}, "_init_cache": None}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            self.memory_kwargs,
            share_memory=self.share_memory,
            previous_action_reward=self.previous_action_reward,
            input_lags=self.input_lags,
            episode_time=self.episode_time,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # A fused optimizer changes the weights in place without bumping their versions, which
        # `FoldedMemory.stale` reads: forget the folded memories after every step instead.
        self.optimizer.register_step_post_hook(self._forget_folded)

    def _forget_folded(self, *_: Any) -> None:
        self._folded.clear()
        self._init_cache = None

    def _build_mlp_extractor(self) -> None:
        """Build the memories too: this runs inside ActorCriticPolicy._build, before the optimizer is made."""
        self.action_input_dim = get_flattened_obs_dim(self.action_space) if self.previous_action_reward else 0
        self.actor_step_dim = self.features_dim + len(TIME_SCALES) * self.episode_time
        actor_input = self.actor_step_dim * (1 + self.input_lags) + self.action_input_dim
        self.actor_memory = AarenMemory(actor_input, **self.memory_kwargs)
        critic_input = (
            self.features_dim * (1 + self.input_lags)
            + self.action_input_dim
            + int(self.previous_action_reward)
        )
        self.critic_memory = None if self.share_memory else AarenMemory(critic_input, **self.memory_kwargs)
        self.mlp_extractor = MlpExtractor(
            self.memory_kwargs["embed_dim"], self.net_arch, self.activation_fn, device=self.device
        )
        self._folded: dict[str, FoldedMemory] = {}
        self._init_cache: tuple[ParameterVersions, ActorCriticState] | None = None  # `_cached_init_state`'s

    @property
    def dtype(self) -> torch.dtype:
        return self.actor_memory.embed.weight.dtype

    def init_state(self, batch_size: int) -> ActorCriticState:
        """The state of `batch_size` envs before their first step."""
        actor, critic = (
            None if memory is None else memory.backbone.init_state(batch_size, self.device, self.dtype)
            for memory in (self.actor_memory, self.critic_memory)
        )
        steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        options = dict(dtype=self.dtype, device=self.device)
        reads_reward = self.previous_action_reward and not self.share_memory
        last_action = (
            torch.zeros(batch_size, self.action_input_dim, **options) if self.previous_action_reward else None
        )
        last_reward = torch.zeros(batch_size, **options) if reads_reward else None
        actor_lags, critic_lags = (
            torch.zeros(batch_size, self.input_lags, width, **options) if self.input_lags else None
            for width in (self.actor_step_dim, self.features_dim)
        )
        critic_lags = None if self.share_memory else critic_lags
        return ActorCriticState(actor, critic, steps, last_action, last_reward, actor_lags, critic_lags)

    def _features(self, obs: Tensor, extractor: BaseFeaturesExtractor) -> Tensor:
        """Features in the policy's dtype (SB3's preprocessing yields float32)."""
        return extractor(preprocess_obs(obs, self.observation_space, self.normalize_images)).to(self.dtype)

    def _encode_actions(self, actions: Tensor) -> Tensor:
        """Policy-space actions [B, N, ...] (as sampled and stored) -> memory inputs [B, N, A] in the
        policy's dtype: one-hot (per component for MultiDiscrete); Box actions as the env gets them
        (clipped to the bounds, or unsquashed) scaled to [-1, 1]."""
        b, n = actions.shape[:2]  # sizes spelled out, not -1: N may be 0 (`_previous` of one-step sequences)
        flat, space = actions.reshape(b * n, math.prod(actions.shape[2:])), self.action_space
        if not isinstance(space, spaces.Box):
            return preprocess_obs(flat, space).to(self.dtype).reshape(b, n, self.action_input_dim)
        flat = flat.to(self.dtype)
        if self.squash_output:  # in [-1, 1] already: the env gets them unscaled to its bounds
            return flat.reshape(b, n, self.action_input_dim)
        low, high = (
            torch.as_tensor(bound.reshape(-1), dtype=self.dtype, device=flat.device)
            for bound in (space.low, space.high)
        )
        return (2 * (flat.clamp(low, high) - low) / (high - low) - 1).reshape(b, n, self.action_input_dim)

    def _record(self, state: ActorCriticState, actions: Tensor) -> ActorCriticState:
        """The state after acting `actions` [B, ...] (policy space): their encoding is the last action."""
        if state.last_action is None:
            return state
        return replace(state, last_action=self._encode_actions(actions.reshape(len(actions), 1, -1))[:, 0])

    def _previous(
        self, state: ActorCriticState, taken: tuple[Tensor, Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Each token's previous action [B, N, A] and reward [B, N, 1] (None where no memory reads
        them): the state's last ones for the first token, then those taken at the tokens before it
        (`taken`: the actions [B, N, action_dim] and rewards [B, N] of stored sequences; None for one
        token), zeros where `resets` [B, N] starts an episode."""
        action = None if state.last_action is None else state.last_action[:, None]
        reward = None if state.last_reward is None else state.last_reward[:, None, None]
        if taken is None or action is None:
            return action, reward
        actions, rewards = taken
        action = torch.cat([action, self._encode_actions(actions[:, :-1])], 1)
        if reward is not None:
            reward = torch.cat([reward, rewards[:, :-1, None].to(reward)], 1)
        if resets is not None:  # an episode's first step has no previous action or reward
            action = action.masked_fill(resets[..., None], 0)
            reward = None if reward is None else reward.masked_fill(resets[..., None], 0)
        return action, reward

    def _memory_input(
        self,
        features: Tensor,
        time: Tensor | None,
        lags: Tensor | None,
        in_episode: Tensor | None,
        *previous: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Step features [B, N, F] (the `time` features [B, N, *] joined to them, where given), after
        those of the `lags` steps before each (the entering `lags` [B, k, F], then the sequence's own;
        only those `in_episode`, where given: `lags_in_episode`), the previous action and reward
        appended; and the lags after the N steps."""
        shape = features.shape[:2]
        if time is not None:
            features = torch.cat([features, time], -1)
        if lags is not None:
            padded = torch.cat([lags, features], 1)  # [B, k + N, F]
            k = lags.shape[1]
            windows = padded.unfold(1, k + 1, 1).transpose(2, 3)  # [B, N, k + 1, F], oldest first
            features = (windows if in_episode is None else windows * in_episode).reshape(*shape, -1)
            lags = padded[:, -k:]
        extra = [p for p in previous if p is not None]
        return (torch.cat([features, *extra], -1) if extra else features), lags

    def _remember(
        self, name: str, inputs: Tensor, timesteps: Tensor, state: AarenState, resets: Tensor | None
    ) -> tuple[Tensor, AarenState]:
        """The memory `name` ("actor_memory" or "critic_memory") on inputs [B, N, *]: folded when
        acting one token without gradients outside training mode (folded again if its weights changed),
        the module's forward otherwise."""
        memory = getattr(self, name)
        if not self.fold_acting or inputs.shape[1] != 1 or self.training or torch.is_grad_enabled():
            return memory(inputs, timesteps, state, resets)
        folded = self._folded.get(name)
        if folded is None or folded.stale:
            folded = self._folded[name] = FoldedMemory(memory)
        return folded(inputs, timesteps, state)

    def _latents(
        self,
        obs: Tensor,
        state: ActorCriticState,
        critic: bool = True,
        taken: tuple[Tensor, Tensor] | None = None,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, ActorCriticState]:
        """obs [B, N, *obs_shape] continuing `state` -> actor and critic latents [B, N, *], new state.

        critic=False runs the actor only (its latent None, the state's critic None). For N > 1 with
        `previous_action_reward`, `taken` holds the actions and rewards taken at the N steps (see
        `_previous`). `resets` [B, N] marks episodes starting inside packed rows (`RolloutSequences`;
        the new state is then that of each row's last episode). The new state keeps the entering last
        action and reward: the caller records the step's (`_record`, `ActorCriticState.with_reward`)."""
        b, n = obs.shape[:2]
        flat = obs.reshape(b * n, *obs.shape[2:])
        timesteps = episode_timesteps(state.steps, n, resets)
        action, reward = self._previous(state, taken, resets)
        time = time_features(timesteps, self.dtype) if self.episode_time else None
        in_episode = (
            lags_in_episode(timesteps, self.input_lags) if resets is not None and self.input_lags else None
        )
        pi_features = self._features(flat, self.pi_features_extractor).view(b, n, -1)
        pi_in, actor_lags = self._memory_input(pi_features, time, state.actor_lags, in_episode, action)
        pi_out, actor = self._remember("actor_memory", pi_in, timesteps, state.actor, resets)
        vf_out, critic_state, critic_lags = None, None, None
        if critic and self.critic_memory is None:
            vf_out = pi_out
        elif critic:
            vf_features = (  # one extractor (SB3's default) gives both memories the same features
                pi_features
                if self.vf_features_extractor is self.pi_features_extractor
                else self._features(flat, self.vf_features_extractor).view(b, n, -1)
            )
            vf_in, critic_lags = self._memory_input(
                vf_features, None, state.critic_lags, in_episode, action, reward
            )
            vf_out, critic_state = self._remember("critic_memory", vf_in, timesteps, state.critic, resets)
        latent_vf = None if vf_out is None else self.mlp_extractor.forward_critic(vf_out)
        new_state = replace(
            state,
            actor=actor,
            critic=critic_state,
            steps=state.steps + n,
            actor_lags=actor_lags,
            critic_lags=critic_lags,
        )
        return self.mlp_extractor.forward_actor(pi_out), latent_vf, new_state

    def _step_latents(
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor, critic: bool = True
    ) -> tuple[Tensor, Tensor | None, ActorCriticState]:
        """One env step: obs [B, *obs_shape]; rows where `episode_starts` is set begin a new episode."""
        pi, vf, state = self._latents(obs.unsqueeze(1), self._restart(state, episode_starts.bool()), critic)
        return pi[:, 0], None if vf is None else vf[:, 0], state

    def _restart(self, state: ActorCriticState, rows: Tensor) -> ActorCriticState:
        """`state` with the rows of bool mask `rows` back at `init_state` (their episode starts
        again); the same state when no row starts (most acting steps: the copies saved)."""
        return state.reset(rows, self._cached_init_state(state.batch_size)) if rows.any() else state

    def _cached_init_state(self, batch_size: int) -> ActorCriticState:
        """`init_state(batch_size)`, kept until a weight changes (it holds the sinks): built anew at
        every episode start it would cost a good part of an acting step. Resets only read it."""
        cache = self._init_cache
        if cache is None or cache[0].changed() or cache[1].batch_size != batch_size:
            cache = self._init_cache = (ParameterVersions(self), self.init_state(batch_size))
        return cache[1]

    def forward(  # type: ignore[override]
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, ActorCriticState]:
        """Act for one env step: actions, values [B, 1], log-probs [B], the state after the step."""
        latent_pi, latent_vf, state = self._step_latents(obs, state, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        state = self._record(state, actions)
        return actions.reshape((-1, *self.action_space.shape)), self.value_net(latent_vf), log_prob, state

    def predict_values(  # type: ignore[override]
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor
    ) -> Tensor:
        """Values [B, 1] of one env step (e.g. of the observation after the last stored step)."""
        return self.value_net(self._step_latents(obs, state, episode_starts)[1])

    def get_distribution(  # type: ignore[override]
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor
    ) -> tuple[Distribution, ActorCriticState]:
        """Actor only, one env step: the action distribution and the state after it (critic None)."""
        latent_pi, _, state = self._step_latents(obs, state, episode_starts, critic=False)
        return self._get_action_dist_from_latent(latent_pi), state

    def evaluate_actions(  # type: ignore[override]
        self, obs: RolloutSequences, actions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-probs and entropies of `actions` on the real steps of stored sequences.

        `obs` holds whole sequences packed into rows, re-run at once by the scan from their entering
        states; `actions` and the outputs cover the real steps only (`obs.mask` order), so every
        loss term built on them is masked.
        """
        taken = (obs.actions, obs.rewards)
        latent_pi, latent_vf, _ = self._latents(obs.observations, obs.state, taken=taken, resets=obs.resets)
        distribution = self._get_action_dist_from_latent(latent_pi[obs.mask])
        values = self.value_net(latent_vf[obs.mask])
        return values, distribution.log_prob(actions), distribution.entropy()

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        raise NotImplementedError(
            "AarenActorCriticPolicy acts with memory: use predict(obs, state, episode_start)"
        )

    def _predict_memory(
        self, state: tuple[np.ndarray, ...] | None, n: int, device: torch.device
    ) -> ActorCriticState:
        """predict's state tuple as an actor-only ActorCriticState (None: `n` envs before their first step)."""
        if state is None:
            return replace(self.init_state(n), critic=None, last_reward=None, critic_lags=None)
        names = ["m", "u", "w", "steps"]
        names += ["last_action"] * self.previous_action_reward + ["actor_lags"] * bool(self.input_lags)
        if len(state) != len(names):
            raise ValueError(
                f"predict got a state of {len(state)} arrays, but this policy's state is ({', '.join(names)}). "
                "Fix: pass the state its previous predict call returned, or None to start afresh"
            )
        m, u, w, steps, *rest = (torch.as_tensor(x, device=device) for x in state)
        extra = dict(zip(names[4:], rest, strict=True))
        return ActorCriticState(AarenState(m, u, w), None, steps, **extra)

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """SB3's predict with memory: `state` is what the previous call returned (None at the start),
        rows where `episode_start` is true begin a new episode. Only the actor runs; the state is the
        actor's (m, u, w, steps) as numpy arrays (batch on axis 1 of m, u, w, axis 0 of the others),
        and with `previous_action_reward` the encoded action this call chose (`last_action` [B, A]),
        with `input_lags` the actor's features of the last steps (`actor_lags` [B, k, F]).
        No reward is needed: only the critic reads previous rewards, so predict acts exactly as
        rollouts did."""
        if self.training:  # the switch visits every submodule: a cost per step worth skipping
            self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        n, device = obs.shape[0], obs.device
        memory = self._predict_memory(state, n, device)
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        with torch.no_grad():
            distribution, memory = self.get_distribution(
                obs, memory, torch.as_tensor(starts.reshape(n), device=device)
            )
            chosen = distribution.get_actions(deterministic=deterministic)
            memory = self._record(memory, chosen)
        actions = chosen.cpu().numpy().reshape((-1, *self.action_space.shape))
        if isinstance(self.action_space, spaces.Box):
            actions = (
                self.unscale_action(actions)
                if self.squash_output
                else np.clip(actions, self.action_space.low, self.action_space.high)
            )
        if not vectorized:
            actions = actions.squeeze(axis=0)
        kept = (
            memory.actor.m,
            memory.actor.u,
            memory.actor.w,
            memory.steps,
            memory.last_action,
            memory.actor_lags,
        )
        return actions, tuple(t.cpu().numpy() for t in kept if t is not None)
