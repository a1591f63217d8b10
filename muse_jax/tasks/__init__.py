"""One module per training stage; `create(config)` picks it by `config.stage`."""
from muse_jax.config import ConfigError


def create(config):
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
