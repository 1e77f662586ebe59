"""Decision agents on Aaren: offline Decision-Transformer-style training over whole trajectories,
O(1)-memory recurrent acting, live evaluation. The Transformer baseline sits behind the same API.

    from agents import load_config, train, load_policy, evaluate_run
    run_dir = train(load_config("configs/quickstart.yaml", ["train.steps=500"]))
    agent = load_policy(run_dir)                     # DecisionAgent, acts batched over envs
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
    from agents.checkpoint import load_model
    from agents.config import Config, ConfigError, load_config
    from agents.evaluation import EvalResult, evaluate_agent, evaluate_run
    from agents.model import DecisionModel, DecisionModelConfig
    from agents.policy import AgentState, DecisionAgent
    from agents.ppo import AarenPPO
    from agents.run_dir import latest_checkpoint, load_policy
    from agents.sb3 import DecisionPolicy, RewardToPolicyVecEnv
    from agents.training import train

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
    "load_config",
    "load_model",
    "load_policy",
    "train",
]

#: Public name -> the module that defines it (the same names as __all__).
_SOURCES = {
    "AarenPPO": "agents.ppo",
    "AgentState": "agents.policy",
    "Config": "agents.config",
    "ConfigError": "agents.config",
    "DecisionAgent": "agents.policy",
    "DecisionModel": "agents.model",
    "DecisionModelConfig": "agents.model",
    "DecisionPolicy": "agents.sb3",
    "EvalResult": "agents.evaluation",
    "RewardToPolicyVecEnv": "agents.sb3",
    "evaluate_agent": "agents.evaluation",
    "evaluate_run": "agents.evaluation",
    "latest_checkpoint": "agents.run_dir",
    "load_config": "agents.config",
    "load_model": "agents.checkpoint",
    "load_policy": "agents.run_dir",
    "train": "agents.training",
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
