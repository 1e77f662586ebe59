"""Decision agents on Aaren: offline Decision-Transformer-style training over whole trajectories,
O(1)-memory recurrent acting, live evaluation. The Transformer baseline sits behind the same API.

    from agents import load_config, train, load_policy, evaluate_run
    run_dir = train(load_config("configs/quickstart.yaml", ["train.steps=500"]))
    agent = load_policy(run_dir)                     # DecisionAgent, acts batched over envs
    actions, state = agent.act(observations)         # then act(obs, state, episode_start, rewards)

Stable-Baselines3 interfaces: `DecisionPolicy` (a trained agent behind SB3's predict protocol),
`RewardToPolicyVecEnv` (hands it the rewards SB3's predict never passes) and `AarenPPO` (PPO whose
actor and critic carry Aaren memory).
"""

from agents.checkpoint import latest_checkpoint, load_model
from agents.config import Config, ConfigError, load_config
from agents.evaluation import EvalResult, evaluate_agent, evaluate_run, load_policy
from agents.model import DecisionModel, DecisionModelConfig
from agents.policy import AgentState, DecisionAgent
from agents.ppo import AarenPPO
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
