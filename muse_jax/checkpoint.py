"""Orbax checkpoints of the train state and the Grain iterator, saved together in one Composite.

Saves are asynchronous; a checkpoint directory becomes visible only once it is complete, so a
run killed mid-save resumes from the previous one.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from muse_jax.errors import UserError


class Checkpointer:
    """Saves every `every` steps (or when forced), keeps the latest `keep`, restores the latest."""

    def __init__(self, directory: str, every: int, keep: int):
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
        """Starts an asynchronous save if the policy (or `force`) says so; True if it did."""
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any, step: int | None = None) -> Any:
        """Restores into `abstract_state`'s shapes and shardings; advances `data_iterator` in place."""
        step = self._manager.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_state(directory: str, sharding: jax.sharding.Sharding | None = None) -> Any:
    """The latest saved train state of another run (to fine-tune from, or to sample with).

    Every array is placed with `sharding` (default: this process's first device), whatever
    mesh the run that saved it had: a tokenizer trained on a pod loads on one CPU.
    """
    if "://" not in directory:  # orbax wants absolute local paths; gs:// ones pass through
        directory = os.path.abspath(directory)
    manager = ocp.CheckpointManager(directory,
                                    item_handlers={"state": ocp.StandardCheckpointHandler()})
    step = manager.latest_step()
    if step is None:
        raise UserError(f"no checkpoint found under {directory}")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = manager.item_metadata(step)["state"]
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            metadata)
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    manager.close()
    return state
