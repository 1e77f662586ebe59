"""RL agents on Aaren, two products: offline decision agents (`agents.decision`: Decision-Transformer-style
training, O(1)-memory recurrent acting, live evaluation, the Transformer baseline behind the same API)
and AarenPPO (`agents.ppo`), with what both use in `agents.common`.

    from agents import load_config, train, load_agent, evaluate_run
    run_dir = train(load_config("configs/quickstart.yaml", ["train.steps=500"]))
    agent = load_agent(run_dir)                      # DecisionAgent, acts batched over envs
    actions, state = agent.act(observations)         # then act(obs, state, episode_start, rewards)

Stable-Baselines3 interfaces: `DecisionPolicy` (a trained agent behind SB3's predict protocol),
`RewardToPolicyVecEnv` (hands it the rewards SB3's predict never passes) and `AarenPPO` (PPO whose
actor and critic carry Aaren memory).

The names below are imported on first use (PEP 562), so `import agents` stays light: Stable-Baselines3,
TensorBoard and matplotlib load only with the parts that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.common.overrides import ConfigError
    from agents.decision.agent import AgentState, DecisionAgent
    from agents.decision.checkpoint import load_model
    from agents.decision.config import Config, load_config
    from agents.decision.evaluation import EvalResult, evaluate_agent, evaluate_run
    from agents.decision.model import DecisionModel, DecisionModelConfig
    from agents.decision.run_dir import latest_checkpoint, load_agent, load_policy
    from agents.decision.sb3 import DecisionPolicy, RewardToPolicyVecEnv
    from agents.decision.training import train
    from agents.ppo.algorithm import AarenPPO

__all__ = [
    "AarenPPO",
    "AgentState",
    "Config",
    "ConfigError",
    "DecisionAgent",
    "DecisionModel",
    "DecisionModelConfig",
    "DecisionPolicy",
    "EvalResult",
    "RewardToPolicyVecEnv",
    "evaluate_agent",
    "evaluate_run",
    "latest_checkpoint",
    "load_agent",
    "load_config",
    "load_model",
    "load_policy",
    "train",
]

#: Public name -> the module that defines it (the same names as __all__).
_SOURCES = {
    "AarenPPO": "agents.ppo.algorithm",
    "AgentState": "agents.decision.agent",
    "Config": "agents.decision.config",
    "ConfigError": "agents.common.overrides",
    "DecisionAgent": "agents.decision.agent",
    "DecisionModel": "agents.decision.model",
    "DecisionModelConfig": "agents.decision.model",
    "DecisionPolicy": "agents.decision.sb3",
    "EvalResult": "agents.decision.evaluation",
    "RewardToPolicyVecEnv": "agents.decision.sb3",
    "evaluate_agent": "agents.decision.evaluation",
    "evaluate_run": "agents.decision.evaluation",
    "latest_checkpoint": "agents.decision.run_dir",
    "load_agent": "agents.decision.run_dir",
    "load_config": "agents.decision.config",
    "load_model": "agents.decision.checkpoint",
    "load_policy": "agents.decision.run_dir",  # deprecated name of load_agent
    "train": "agents.decision.training",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name in this module."""
    if name not in _SOURCES:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
