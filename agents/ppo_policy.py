"""An SB3 actor-critic policy whose actor and critic remember the episode with Aaren backbones.

    observation -> features extractor -> AarenMemory (linear embed + AarenBackbone with recency slopes)
                -> MLP extractor -> action distribution / value head

Acting feeds one token per env step through the backbone with the carried constant-size state
(`ActorCriticState`, rows reset where an episode starts); without gradients and outside training mode
(predict, rollout collection) that step runs on the memories folded for acting (`FoldedMemory`),
folded again whenever their weights have changed. Training re-runs whole stored sequences at once with
the parallel prefix scan from each sequence's entering state (`RolloutSequences`), and gives the same
log-probs and values as acting did, to float tolerance.

Each head adds a learned recency slope times the step's episode timestep to its scores (ALiBi-like).
Aaren's query is input-independent, so without that the memory is a weighted average of the past
that cannot tell recent observations from old ones: on CartPole without velocities it stayed at
the random policy's return where RecurrentPPO learned. A learned timestep
embedding (as in the Decision Transformer) was tried too and hurt: random per-step vectors swamp
the observation early in training.

By default the actor and the critic have separate memories (as RecurrentPPO's default LSTMs), so
value-loss gradients do not shape the actor's memory; `share_memory=True` uses one memory for both
(one backbone pass per step, about half the cost).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, MlpExtractor
from torch import Tensor, nn
from torch.nn import functional as F

from aaren_rl import AarenBackbone, AarenState
from aaren_rl.step import AarenStep, ParameterVersions


def select_rows(state: AarenState, rows: Tensor) -> AarenState:
    """The rows `rows` (indices, repeats allowed) of an AarenState."""
    return AarenState(state.m[:, rows], state.u[:, rows], state.w[:, rows])


@dataclass(frozen=True)
class ActorCriticState:
    """Per-env memory of the policy: actor and critic Aaren states (critic None when shared) and the
    number of steps seen in the current episode ([B] long, the timestep of the next token)."""

    actor: AarenState
    critic: AarenState | None
    steps: Tensor

    @property
    def batch_size(self) -> int:
        return self.steps.shape[0]

    def reset(self, rows: Tensor) -> ActorCriticState:
        """The state with the rows of bool mask `rows` emptied (their episode starts again)."""
        return ActorCriticState(
            self.actor.reset(rows),
            None if self.critic is None else self.critic.reset(rows),
            self.steps.masked_fill(rows, 0),
        )

    def select(self, rows: Tensor) -> ActorCriticState:
        """The rows `rows` (indices, repeats allowed)."""
        return ActorCriticState(
            select_rows(self.actor, rows),
            None if self.critic is None else select_rows(self.critic, rows),
            self.steps[rows],
        )


class RolloutSequences(NamedTuple):
    """A minibatch of stored sequences, padded at the end: observations [S, T, *obs_shape], the state
    entering each sequence, and mask [S, T] (True on real steps)."""

    observations: Tensor
    state: ActorCriticState
    mask: Tensor


class AarenMemory(nn.Module):
    """Features [B, N, F] and their episode timesteps [B, N] -> latents [B, N, embed_dim], new state.

    Each head h adds recency[h] * timestep to its attention scores (learned; initialised to 0 for the
    first head, 1, 1/2, 1/4, ... for the others, like ALiBi's slopes): its output is then an
    exponentially decaying average of the past, so recent observations (velocities) can be read.
    """

    def __init__(
        self,
        features_dim: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ffn_mult: int,
        dropout: float,
    ):
        super().__init__()
        self.embed = nn.Linear(features_dim, embed_dim)
        self.recency = nn.Parameter(torch.tensor([0.0] + [2.0**-i for i in range(num_heads - 1)]))
        self.backbone = AarenBackbone(embed_dim, num_layers, num_heads, ffn_mult, dropout)

    def forward(self, features: Tensor, timesteps: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        score_bias = self.recency[:, None] * timesteps[:, None, :].to(self.recency.dtype)  # [B, H, N]
        return self.backbone(self.embed(features), state, score_bias)


class FoldedMemory:
    """An `AarenMemory` folded for acting one token per env step (`aaren_rl.step.AarenStep`): equal to
    its forward on one token, to float roundoff. `stale` says when the memory's weights have changed."""

    def __init__(self, memory: AarenMemory):
        self._versions = ParameterVersions(memory)
        self.embed_weight, self.embed_bias = memory.embed.weight.detach(), memory.embed.bias.detach()
        self.recency = memory.recency.detach()[None, :, None]  # [1, H, 1]
        self.step = AarenStep(memory.backbone)

    @property
    def stale(self) -> bool:
        return self._versions.changed()

    def __call__(self, features: Tensor, timesteps: Tensor, state: AarenState) -> tuple[Tensor, AarenState]:
        """Features [B, 1, F] at episode timesteps [B, 1] -> latents [B, 1, embed_dim], new state."""
        score_bias = self.recency * timesteps[:, None, :].to(self.recency.dtype)  # [B, H, 1]
        x = F.linear(features, self.embed_weight, self.embed_bias)
        y, state = self.step(x, state, None, score_bias)
        return y.unsqueeze(1), state


class AarenActorCriticPolicy(ActorCriticPolicy):
    """ActorCriticPolicy with Aaren memory; the extra arguments size the memory.

    embed_dim, num_layers, num_heads, ffn_mult, dropout: the AarenBackbone (dropout 0 keeps the
        PPO ratio exactly 1 before the first update).
    share_memory: one memory for actor and critic instead of one each.
    Other arguments as SB3's ActorCriticPolicy; `net_arch` sizes the MLPs after the memory.

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
    ):
        if isinstance(observation_space, spaces.Dict):
            raise ValueError("AarenActorCriticPolicy does not support Dict observation spaces")
        # Read by _build_mlp_extractor, which ActorCriticPolicy.__init__ calls.
        self.memory_kwargs = dict(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_mult=ffn_mult,
            dropout=dropout,
        )
        self.share_memory = share_memory
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

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            self.memory_kwargs,
            share_memory=self.share_memory,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    def _build_mlp_extractor(self) -> None:
        """Build the memories too: this runs inside ActorCriticPolicy._build, before the optimizer is made."""
        self.actor_memory = AarenMemory(self.features_dim, **self.memory_kwargs)
        self.critic_memory = (
            None if self.share_memory else AarenMemory(self.features_dim, **self.memory_kwargs)
        )
        self.mlp_extractor = MlpExtractor(
            self.memory_kwargs["embed_dim"], self.net_arch, self.activation_fn, device=self.device
        )
        self._folded: dict[str, FoldedMemory] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.actor_memory.embed.weight.dtype

    def initial_state(self, batch_size: int) -> ActorCriticState:
        """The state of `batch_size` envs before their first step."""
        empty = self.actor_memory.backbone.init_state(batch_size, self.device, self.dtype)
        steps = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        return ActorCriticState(empty, None if self.share_memory else empty, steps)

    def _features(self, obs: Tensor, extractor: BaseFeaturesExtractor) -> Tensor:
        """Features in the policy's dtype (SB3's preprocessing yields float32)."""
        return extractor(preprocess_obs(obs, self.observation_space, self.normalize_images)).to(self.dtype)

    def _remember(
        self, name: str, features: Tensor, timesteps: Tensor, state: AarenState
    ) -> tuple[Tensor, AarenState]:
        """The memory `name` ("actor_memory" or "critic_memory") on features [B, N, F]: folded when
        acting one token without gradients outside training mode (folded again if its weights changed),
        the module's forward otherwise."""
        memory = getattr(self, name)
        if not self.fold_acting or features.shape[1] != 1 or self.training or torch.is_grad_enabled():
            return memory(features, timesteps, state)
        folded = self._folded.get(name)
        if folded is None or folded.stale:
            folded = self._folded[name] = FoldedMemory(memory)
        return folded(features, timesteps, state)

    def _latents(
        self, obs: Tensor, state: ActorCriticState, critic: bool = True
    ) -> tuple[Tensor, Tensor | None, ActorCriticState]:
        """obs [B, N, *obs_shape] continuing `state` -> actor and critic latents [B, N, *], new state.

        critic=False runs the actor only (its latent None, the state's critic None)."""
        b, n = obs.shape[:2]
        flat = obs.reshape(b * n, *obs.shape[2:])
        timesteps = state.steps[:, None] + torch.arange(n, device=obs.device)
        pi_features = self._features(flat, self.pi_features_extractor).view(b, n, -1)
        pi_out, actor = self._remember("actor_memory", pi_features, timesteps, state.actor)
        vf_out, critic_state = None, None
        if critic and self.critic_memory is None:
            vf_out = pi_out
        elif critic:
            vf_features = self._features(flat, self.vf_features_extractor).view(b, n, -1)
            vf_out, critic_state = self._remember("critic_memory", vf_features, timesteps, state.critic)
        latent_vf = None if vf_out is None else self.mlp_extractor.forward_critic(vf_out)
        new_state = ActorCriticState(actor, critic_state, state.steps + n)
        return self.mlp_extractor.forward_actor(pi_out), latent_vf, new_state

    def _step_latents(
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor, critic: bool = True
    ) -> tuple[Tensor, Tensor | None, ActorCriticState]:
        """One env step: obs [B, *obs_shape]; rows where `episode_starts` is set begin a new episode."""
        pi, vf, state = self._latents(obs.unsqueeze(1), state.reset(episode_starts.bool()), critic)
        return pi[:, 0], None if vf is None else vf[:, 0], state

    def forward(  # type: ignore[override]
        self, obs: Tensor, state: ActorCriticState, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, ActorCriticState]:
        """Act for one env step: actions, values [B, 1], log-probs [B], the state after the step."""
        latent_pi, latent_vf, state = self._step_latents(obs, state, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
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

        `obs` holds whole padded sequences, re-run at once by the parallel scan from their entering
        states; `actions` and the outputs cover the real steps only (`obs.mask` order), so every
        loss term built on them is masked.
        """
        latent_pi, latent_vf, _ = self._latents(obs.observations, obs.state)
        distribution = self._get_action_dist_from_latent(latent_pi[obs.mask])
        values = self.value_net(latent_vf[obs.mask])
        return values, distribution.log_prob(actions), distribution.entropy()

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        raise NotImplementedError(
            "AarenActorCriticPolicy acts with memory: use predict(obs, state, episode_start)"
        )

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """SB3's predict with memory: `state` is what the previous call returned (None at the start),
        rows where `episode_start` is true begin a new episode. Only the actor runs; the state is the
        actor's (m, u, w, steps) as numpy arrays (batch on axis 1 of m, u, w, axis 0 of steps)."""
        if self.training:  # the switch visits every submodule: a cost per step worth skipping
            self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        n, device = obs.shape[0], obs.device
        if state is None:
            memory = replace(self.initial_state(n), critic=None)
        else:
            m, u, w, steps = (torch.as_tensor(x, device=device) for x in state)
            memory = ActorCriticState(AarenState(m, u, w), None, steps)
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        with torch.no_grad():
            distribution, memory = self.get_distribution(
                obs, memory, torch.as_tensor(starts.reshape(n), device=device)
            )
            actions = distribution.get_actions(deterministic=deterministic).cpu().numpy()
        actions = actions.reshape((-1, *self.action_space.shape))
        if isinstance(self.action_space, spaces.Box):
            actions = (
                self.unscale_action(actions)
                if self.squash_output
                else np.clip(actions, self.action_space.low, self.action_space.high)
            )
        if not vectorized:
            actions = actions.squeeze(axis=0)
        actor = memory.actor
        return actions, tuple(t.cpu().numpy() for t in (actor.m, actor.u, actor.w, memory.steps))
