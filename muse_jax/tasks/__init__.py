"""One module per training stage; `create(config)` picks it by `config.stage`.

What the train loop gives a stage and gets back is written down in tasks/protocol.py: a
`Task` (config alone) whose `load(mesh)` returns its `Steps` (frozen models loaded).
"""
from muse_jax.config import ConfigError
from muse_jax.tasks.protocol import Steps, Task

__all__ = ["Steps", "Task", "create"]


def create(config) -> Task:
    if config.stage == "vqgan":
        from muse_jax.tasks.vqgan import VQGANTask
        return VQGANTask(config)
    if config.stage == "base":
        from muse_jax.tasks.base import BaseTask
        return BaseTask(config)
    if config.stage == "sr":
        from muse_jax.tasks.sr import SRTask
        return SRTask(config)
    raise ConfigError(f"stage {config.stage!r} is not implemented (known: vqgan, base, sr)")
