"""The decision model: Decision Transformer (Chen et al. 2021) with a pluggable sequence backbone.

Tokens per timestep t are the return-to-go R_t, the state s_t and the action a_t, each embedded,
plus a learned timestep embedding; they are interleaved R_1 s_1 a_1 R_2 s_2 a_2 ... and the action
a_t is predicted from the backbone output at the s_t token. Box actions are embedded linearly and
predicted by a tanh head rescaled to the action bounds; Discrete and MultiDiscrete actions look up an
embedding table (one row per action of each component, the components' rows summed) and are
predicted as logits, a categorical head per component. The backbone is `aaren_rl.AarenBackbone`
(the product), `TransformerBackbone` (the Decision Transformer baseline) or `LSTMBackbone` (the Decision
LSTM baseline of Siebenborn et al. 2022, "How crucial is Transformer in Decision Transformer?": the same
tokens, embeddings and head around an LSTM); each maps [B, N, D] -> [B, N, D] with a carried state.

The model owns its input normalisation (dataset state mean/std, return scale) and the action
bounds as buffers, so a checkpoint (safetensors weights + the JSON of `DecisionModelConfig`, which
names the action space) is everything a policy needs to act. Its training objective is `action_loss`
(squared error for Box actions, cross-entropy for discrete ones), run under `training_precision`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from aaren_rl import AarenBackbone, LSTMBackbone, TransformerBackbone

#: The backbone module of each `model.backbone` name.
BACKBONE_TYPES: dict[str, type[nn.Module]] = {
    "aaren": AarenBackbone,
    "transformer": TransformerBackbone,
    "lstm": LSTMBackbone,
}
BACKBONES = tuple(BACKBONE_TYPES)
#: The two ways a decision agent acts (`agents.decision.agent`): "recurrent" carries the backbone's state
#: (Aaren's and the LSTM's constant-size state, the Transformer's KV cache) through the whole episode,
#: "window" re-runs the last `context_steps` timesteps every step.
ACTING = ("recurrent", "window")
#: How each backbone acts where its training did not say (`DecisionModelConfig.acting`): Aaren and the
#: LSTM carry their state, the Transformer re-runs its K-windows (the reference DT way).
DEFAULT_ACTING = {"aaren": "recurrent", "transformer": "window", "lstm": "recurrent"}
#: The action spaces a decision model acts on (Gymnasium's names, as `DecisionModelConfig.action_space`).
ACTION_SPACES = ("Box", "Discrete", "MultiDiscrete")
#: The Aaren score of an ignored (padding) token: exp(IGNORED_SCORE - s) is exactly 0 in float32 and float64
#: (and bfloat16's range holds it) for any real score s, so such a token adds nothing to a state.
IGNORED_SCORE = -1e30


@dataclass
class ModelHyperparameters:
    """The architecture and input scaling a user chooses (a config's `model:` section).

    Defaults are the reference Decision Transformer hyperparameters (docs/design.md, Decision agents).
    """

    backbone: str = "aaren"  # "aaren" | "transformer" | "lstm" (BACKBONES)
    embed_dim: int = 128
    num_layers: int = 3
    num_heads: int = 1
    ffn_mult: int = 4
    dropout: float = 0.1
    context_steps: int = 20  # K: the K-windows' length in training and in window acting, in timesteps
    max_timestep: int = 1000  # size of the timestep embedding; later timesteps are clamped to the last
    return_scale: float = 1e-3  # returns-to-go are multiplied by this before embedding
    # Aaren only: a learned slope per head on the scores over the timestep (`DecisionModel.score_bias`),
    # starting at 0. A negative slope keeps early steps weighty however long the episode grows (a cue at
    # step 0 against thousands of corridor steps), a positive one favours recent steps (docs/design.md,
    # Tokens and prediction).
    step_slopes: bool = False


@dataclass(kw_only=True)
class DecisionModelConfig(ModelHyperparameters):
    """Everything needed to build a `DecisionModel` (saved as JSON next to the weights): the
    hyperparameters plus what the data decides."""

    obs_dim: int
    act_dim: int  # action entries: a Box's size, or a discrete space's components (1 for Discrete)
    action_low: list[float] = field(default_factory=list)  # per-dimension action bounds (default [-1, 1])
    action_high: list[float] = field(default_factory=list)
    # "Box", "Discrete" or "MultiDiscrete" (ACTION_SPACES); configs saved before it existed are Box. For a
    # discrete space action_low / action_high are each component's first and last action.
    action_space: str = "Box"
    # How the agent acts unless told (ACTING), as the training batches decide: "window" after K-windows
    # from an empty context, "recurrent" after whole episodes or windows entering with their episode's
    # state (`agents.decision.batching`). "" (configs saved before it existed): DEFAULT_ACTING.
    acting: str = ""

    def __post_init__(self) -> None:
        self.acting = self.acting or DEFAULT_ACTING[self.backbone]
        if not self.action_low:
            self.action_low = [-1.0] * self.act_dim
        if not self.action_high:
            self.action_high = [1.0] * self.act_dim

    def to_dict(self) -> dict:
        return asdict(self)


class DecisionModel(nn.Module):
    """Embeds (R, s, a, t) sequences into interleaved tokens, runs the backbone, predicts actions."""

    def __init__(self, config: DecisionModelConfig):
        super().__init__()
        if config.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {config.backbone!r}")
        self.config = c = config
        #: Discrete and MultiDiscrete: the number of actions of each component (None for Box).
        self.action_sizes = discrete_sizes(c)
        self.embed_return = nn.Linear(1, c.embed_dim)
        self.embed_state = nn.Linear(c.obs_dim, c.embed_dim)
        if self.action_sizes is None:
            self.embed_action: nn.Module = nn.Linear(c.act_dim, c.embed_dim)
        else:  # one table, each component's rows after the previous component's: their rows are summed
            self.embed_action = nn.Embedding(sum(self.action_sizes), c.embed_dim)
            nn.init.normal_(self.embed_action.weight, std=0.02)  # as the timestep table, below
            sizes = torch.tensor(self.action_sizes)
            self.register_buffer("action_offsets", sizes.cumsum(0) - sizes, persistent=False)
            self.register_buffer("action_last", sizes - 1, persistent=False)
        self.embed_timestep = nn.Embedding(c.max_timestep, c.embed_dim)
        # GPT-style small init: torch's N(0, 1) default swamps the state in the LayerNorm'd token, and
        # the policy then keys on the timestep (lower, erratic live returns in short runs).
        nn.init.normal_(self.embed_timestep.weight, std=0.02)
        self.embed_ln = nn.LayerNorm(c.embed_dim)
        args = (c.embed_dim, c.num_layers, c.num_heads, c.ffn_mult, c.dropout)
        self.backbone = BACKBONE_TYPES[c.backbone](*args)
        self.predict_action = nn.Linear(c.embed_dim, self.action_input_dim)
        if c.step_slopes and c.backbone != "aaren":
            raise ValueError(f"step_slopes needs the aaren backbone, got {c.backbone!r}")
        self.step_slope = nn.Parameter(torch.zeros(c.num_heads)) if c.step_slopes else None
        # Data statistics and action bounds: saved with the weights, not trained.
        self.register_buffer("state_mean", torch.zeros(c.obs_dim))
        self.register_buffer("state_std", torch.ones(c.obs_dim))
        self.register_buffer("action_low", torch.tensor(c.action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(c.action_high, dtype=torch.float32))

    @property
    def discrete(self) -> bool:
        """Whether the actions are Discrete or MultiDiscrete (a categorical head per component)."""
        return self.action_sizes is not None

    @property
    def action_input_dim(self) -> int:
        """The width of an action as the embedding takes it and the head predicts it: a Box's size, or
        the one-hot of every component's action (their sizes summed)."""
        return self.config.act_dim if self.action_sizes is None else sum(self.action_sizes)

    def set_state_stats(self, mean, std) -> None:
        """Store the dataset's observation mean/std used to normalise states."""
        self.state_mean.copy_(torch.as_tensor(mean, dtype=self.state_mean.dtype))
        self.state_std.copy_(torch.as_tensor(std, dtype=self.state_std.dtype))

    # ---- tokens ---------------------------------------------------------------------------------

    def _time(self, timesteps: Tensor) -> Tensor:
        return self.embed_timestep(timesteps.clamp(0, self.config.max_timestep - 1))

    def embed_returns(self, returns_to_go: Tensor, timesteps: Tensor) -> Tensor:
        """[...] raw returns-to-go -> [..., D] tokens (embedding LayerNorm included)."""
        x = (returns_to_go * self.config.return_scale).unsqueeze(-1).to(self.embed_return.weight.dtype)
        return self.embed_ln(self.embed_return(x) + self._time(timesteps))

    def embed_states(self, observations: Tensor, timesteps: Tensor) -> Tensor:
        """[..., obs_dim] raw observations -> [..., D] tokens."""
        x = ((observations - self.state_mean) / self.state_std).to(self.embed_state.weight.dtype)
        return self.embed_ln(self.embed_state(x) + self._time(timesteps))

    def embed_actions(self, actions: Tensor, timesteps: Tensor) -> Tensor:
        """[..., act_dim] actions in env units -> [..., D] tokens."""
        if self.discrete:
            x = self.embed_action(self.action_indices(actions)).sum(-2)
        else:
            x = self.embed_action(self.unit_actions(actions).to(self.embed_action.weight.dtype))
        return self.embed_ln(x + self._time(timesteps))

    # ---- actions --------------------------------------------------------------------------------

    def unit_actions(self, actions: Tensor) -> Tensor:
        """Env-unit actions -> [-1, 1] (the tanh head's range), clipped to the bounds."""
        scaled = 2 * (actions - self.action_low) / (self.action_high - self.action_low) - 1
        return scaled.clamp(-1.0, 1.0)

    def action_indices(self, actions: Tensor) -> Tensor:
        """Discrete env-unit actions [..., act_dim] -> their rows of the action table [..., act_dim]: each
        component's action counted from its first, clipped to the component (as `unit_actions` clips),
        plus the component's offset."""
        index = (actions - self.action_low).round().long()
        return torch.clamp(index, torch.zeros_like(self.action_last), self.action_last) + self.action_offsets

    def action_head(self, hidden: Tensor) -> Tensor:
        """Backbone outputs at s_t tokens -> Box: actions in [-1, 1]; discrete: the logits of every
        component's actions [..., action_input_dim]. `to_env_actions` turns either into actions."""
        if self.discrete:
            return self.predict_action(hidden)
        return torch.tanh(self.predict_action(hidden))

    def to_env_actions(self, prediction: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The head's output -> actions in env units: Box rescaled to the bounds; discrete (in the
        prediction's dtype) the most likely action of each component, or with `generator` one drawn from
        its softmax."""
        if self.discrete:
            return discrete_actions(prediction, self.action_sizes, self.action_low, generator)
        return self.action_low + (prediction + 1) * 0.5 * (self.action_high - self.action_low)

    def action_cross_entropy(self, logits: Tensor, actions: Tensor) -> Tensor:
        """Per step [...]: the cross-entropy of the env-unit `actions` [..., act_dim] under `logits`
        [..., action_input_dim], in float32 and averaged over the components (as the squared error of Box
        actions is over their entries)."""
        target = (self.action_indices(actions) - self.action_offsets).unsqueeze(-1)
        parts = logits.float().split(self.action_sizes, -1)
        losses = [-p.log_softmax(-1).gather(-1, target[..., j, :]) for j, p in enumerate(parts)]
        return torch.cat(losses, -1).mean(-1)

    # ---- training form --------------------------------------------------------------------------

    def forward(
        self,
        returns_to_go: Tensor,
        observations: Tensor,
        actions: Tensor,
        timesteps: Tensor,
        state=None,
        *,
        resets: Tensor | None = None,
        ignore: Tensor | None = None,
    ) -> tuple[Tensor, object]:
        """Whole sequences at once: R [B, T], s [B, T, obs], a [B, T, act], t [B, T] (long).

        Returns the head's prediction at every step (`action_head`: Box actions in [-1, 1] [B, T, act],
        or discrete logits [B, T, action_input_dim]; prediction t sees R_<=t, s_<=t, a_<t) and the
        backbone state after the last token (for continuation).
        Padding must come after the real steps (causality keeps it out of their predictions), or be
        marked by `ignore`.
        resets: optional [B, T] bool, True on the first step of each episode packed into a row (Aaren
        backbone only): each episode's predictions then see its own steps alone, as if run by itself.
        ignore: optional [B, T] bool, True on padding steps anywhere in a row (Aaren backbone only, e.g.
        left padding before a state is wanted): their tokens score IGNORED_SCORE in every layer, so their
        weight is exactly 0 next to any real token or non-empty entering state, and the real steps'
        outputs and the returned state are theirs alone. Outputs at ignored steps mean nothing, and a row
        of ignored steps only, entered empty, is left non-empty (reset it).
        """
        b, t = returns_to_go.shape
        tokens = torch.stack(
            [
                self.embed_returns(returns_to_go, timesteps),
                self.embed_states(observations, timesteps),
                self.embed_actions(actions, timesteps),
            ],
            dim=2,
        ).reshape(b, 3 * t, self.config.embed_dim)
        bias = self._ignored_scores(ignore)
        if self.step_slope is not None:
            slopes = self.score_bias(timesteps.repeat_interleave(3, dim=1))
            bias = slopes if bias is None else slopes + bias
        if resets is None and bias is None:
            hidden, state = self.backbone(tokens, state)
        elif self.config.backbone == "aaren":
            hidden, state = self.backbone(tokens, state, bias, resets=self._token_resets(resets))
        else:
            raise ValueError(
                "resets (packed episodes) and ignore (left padding) need the Aaren backbone; the Transformer "
                "and the LSTM take neither"
            )
        return self.action_head(hidden[:, 1::3]), state

    @staticmethod
    def _token_resets(resets: Tensor | None) -> Tensor | None:
        """Per-step resets [B, T] -> per-token [B, 3T]: an episode starts at its first return-to-go token."""
        if resets is None:
            return None
        b, t = resets.shape
        token_resets = torch.zeros(b, t, 3, dtype=torch.bool, device=resets.device)
        token_resets[..., 0] = resets
        return token_resets.reshape(b, 3 * t)

    def score_bias(self, token_times: Tensor) -> Tensor | None:
        """Token timesteps [B, N] (long, unclamped) -> the Aaren score bias [B, H, N]: each head's slope times
        the timestep, in the weights' dtype (None without `step_slopes`). Softmax weights depend only on
        differences of bias, so a head's weight on a step d steps back is scaled by e^(-slope * d): negative
        slopes keep the oldest steps' share bounded below however long the episode, positive ones decay it."""
        return step_score_bias(self.step_slope, token_times)

    def _ignored_scores(self, ignore: Tensor | None) -> Tensor | None:
        """Per-step ignore [B, T] -> the Aaren score bias [B, 1, 3T]: IGNORED_SCORE on its steps' tokens."""
        if ignore is None:
            return None
        bias = torch.zeros(*ignore.shape, 3, device=ignore.device, dtype=self.embed_ln.weight.dtype)
        return bias.masked_fill(ignore.unsqueeze(-1), IGNORED_SCORE).reshape(ignore.shape[0], 1, -1)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None):
        return self.backbone.init_state(batch_size, device, dtype)


def step_score_bias(slopes: Tensor | None, token_times: Tensor) -> Tensor | None:
    """Slopes [H] (or None) and token timesteps [B, N] -> slopes x timesteps [B, H, N] in the slopes' dtype."""
    if slopes is None:
        return None
    return slopes[:, None] * token_times.unsqueeze(1).to(slopes.dtype)


def discrete_sizes(config: DecisionModelConfig) -> list[int] | None:
    """The number of actions of each component of a discrete action space (None for Box); a ValueError
    naming the field when the config does not describe an action space."""
    if config.action_space not in ACTION_SPACES:
        raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {config.action_space!r}")
    if config.action_space == "Box":
        return None
    low, high = config.action_low, config.action_high
    if len(low) != config.act_dim or len(high) != config.act_dim:
        raise ValueError(
            f"a {config.action_space} action space needs action_low and action_high of act_dim = "
            f"{config.act_dim} entries, got {low} and {high}"
        )
    sizes = [h - lo + 1 for lo, h in zip(low, high, strict=True)]
    if not all(float(x).is_integer() for x in (*low, *high)) or min(sizes) < 1:
        raise ValueError(
            f"a {config.action_space} action space needs whole numbers in action_low and action_high, each "
            f"component's first and last action (last >= first), got {low} and {high}"
        )
    if config.action_space == "Discrete" and config.act_dim != 1:
        raise ValueError(f"a Discrete action space has act_dim 1, got {config.act_dim}")
    return [int(size) for size in sizes]


def discrete_actions(
    logits: Tensor, sizes: list[int], first: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Logits [..., sum(sizes)] -> actions [..., len(sizes)] in env units (the logits' dtype), `first` being
    each component's first action: per component the most likely action (the first of equals), or with
    `generator` one drawn from its softmax."""
    picks = []
    for part in logits.split(sizes, -1):
        if generator is None:
            picks.append(part.argmax(-1))
        else:
            probs = part.softmax(-1).reshape(-1, part.shape[-1])
            picks.append(torch.multinomial(probs, 1, generator=generator).view(part.shape[:-1]))
    return torch.stack(picks, -1).to(logits.dtype) + first.to(logits.dtype)


def action_loss(model: nn.Module, batch: dict, world_size: int = 1) -> Tensor:
    """Masked mean loss of the predicted actions for `model` (a `DecisionModel`, or one wrapped in
    DistributedDataParallel) on a batch of `agents.decision.batching`: for Box actions the squared error in
    the [-1, 1] action scale, for discrete ones the cross-entropy (`DecisionModel.action_cross_entropy`).

    Divided by the global batch's real steps over `world_size`: DDP averages the ranks' gradients,
    so their mean is the gradient of the one-process loss over the whole batch.
    """
    pred, _ = model(
        batch["returns_to_go"],
        batch["observations"],
        batch["actions"],
        batch["timesteps"],
        batch.get("state"),
        resets=batch.get("resets"),
    )
    core = getattr(model, "module", model)
    if core.discrete:
        err = core.action_cross_entropy(pred, batch["actions"])
    else:
        target = core.unit_actions(batch["actions"])
        err = (pred.float() - target).pow(2).mean(-1)
    return (err * batch["mask"].float()).sum() / (batch["num_real"] / world_size)


def training_precision(bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """Where the training forward runs: under bfloat16 autocast (`train.bf16`), else in the weights' dtype."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
