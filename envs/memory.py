"""Deprecated name of `envs.pomdp` (the partially observable tasks), kept so that old imports and
`"envs.memory:aaren_rl/CartPoleNoVel-v1"` env ids keep working; importing it registers the tasks."""

import warnings

from envs.pomdp import (  # noqa: F401
    CARTPOLE_NO_VEL,
    PENDULUM_NO_VEL,
    REMEMBER_CUE,
    KeepObservationEntries,
    RememberCueEnv,
    cartpole_no_velocity,
    pendulum_no_velocity,
)

warnings.warn("envs.memory is now envs.pomdp; import that instead", DeprecationWarning, stacklevel=2)
