"""Orbax checkpoints of the train state and the Grain iterator, saved together in one Composite.

What can go wrong, and what happens then:
- A run killed mid-save: orbax writes into `<step>.orbax-checkpoint-tmp*` and renames it to
  `<step>` only once everything is written, so the half-written one is never seen and the
  next start resumes from the previous one.
- Saves are asynchronous. A step is logged as saved only once its directory is complete,
  which is checked before the next save starts and at `close()`.
- A save that fails (disk full, directory unwritable) raises `CheckpointError`, one line
  naming the step and the cause. Old checkpoints are only deleted once a newer one is complete:
  the preservation policy keeps `keep + 1`, the newest of which may still be being written,
  because orbax deletes the old steps even when the save it made room for failed.
- An unreadable checkpoint (truncated files, missing metadata, or arrays whose checksums
  (muse_jax/checksums.py, saved beside the state as the `checksums` item) no longer match):
  `restore` warns, names what was wrong, sets it aside as `<step>.unreadable` and takes the
  one before it. Checkpoints written before checksums existed load unchecked.
- A state with a NaN or inf anywhere is never saved (`save` warns and returns False).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from muse_jax import checksums
from muse_jax.errors import CheckpointError

CHECKSUMS = "checksums"  # the Composite item holding the state's checksums


def describe(error: BaseException) -> str:
    """A one-line cause: the OS error inside a TensorStore message if there is one."""
    text = str(error)
    os_error = re.search(r"([^:]+) \[os_error_code='?(\d+)", text)  # TensorStore's OS errors
    if os_error:
        return f"{os_error.group(1).strip()} (errno {os_error.group(2)})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= 200 else line[:197] + "..."


class Checkpointer:
    """Saves every `every` steps (or when forced, or at a multi-host preemption sync point),
    keeps the latest `keep` complete checkpoints, restores the latest readable one."""

    def __init__(self, directory: str, every: int, keep: int):
        self.directory = directory
        policy = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policy.AnySavePolicy([
                policy.FixedIntervalPolicy(every), policy.PreemptionCheckpointingPolicy()]),
            preservation_policy=policy.LatestN(keep + 1),  # see the module docstring
            enable_async_checkpointing=True,
            create=True,
        )
        try:
            self._manager = ocp.CheckpointManager(directory, options=options)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot create checkpoint directory {directory}: "
                                  f"{describe(e)}") from None
        self._pending: int | None = None  # the step being written in the background
        self._failed = self._closed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether the policy saves `step` (every `every` steps, or a preemption sync point)."""
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """Multi-host: all processes got past a preemption notice and agreed to stop at `step`."""
        return self._manager.reached_preemption(step)

    def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> bool:
        """Starts an asynchronous save if the policy (or `force`) says so; True if it did."""
        if not (force or self._manager.should_save(step)):
            return False
        sums, finite = checksums.compute(state)
        if not finite:
            logging.warning("step %d: not saved, the state holds NaN or inf values", step)
            return False
        self._finish_pending()
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                **{CHECKSUMS: ocp.args.JsonSave(sums)}), force=True)
        except Exception as e:  # noqa: BLE001  orbax and TensorStore raise many types
            self._fail(step, describe(e))
        self._pending = step
        return True

    def _finish_pending(self) -> None:
        """Waits for the save in flight; logs it as saved once complete, raises if it failed."""
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._fail(step, describe(e))
        if step is None:
            return
        if not (epath.Path(self.directory) / str(step)).exists():
            # Some failures orbax only logs (above); the step directory is then never renamed.
            self._fail(step, "it was never completed (the cause is logged above)")
        logging.info("checkpoint of step %d saved in %s", step, self.directory)

    def _fail(self, step: int | None, cause: str):
        self._failed = True
        self._manager.reload()  # forget the step that was never completed
        latest = self._manager.latest_step()
        kept = (f"the latest complete checkpoint, step {latest}, is intact" if latest is not None
                else "there is no earlier checkpoint")
        raise CheckpointError(f"could not save the checkpoint of step {step} in {self.directory}:"
                              f" {cause}; {kept}") from None

    def restore(self, abstract_state: Any, data_iterator: Any) -> Any:
        """The latest readable checkpoint into `abstract_state`'s shapes and shardings.

        Advances `data_iterator` in place. Newer unreadable checkpoints are set aside (renamed
        `<step>.unreadable`) so that the run can write those steps again.
        """
        def args(step):
            return ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=grain.checkpoint.CheckpointRestore(data_iterator),
                                      **_checksums_args(self.directory, step))

        _, restored = restore_latest(self._manager, self.directory, args, set_aside=True)
        return restored["state"]

    def wait(self) -> None:
        self._finish_pending()

    def close(self) -> None:
        """Finishes the save in flight (raising if it failed) and releases the manager."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._failed:
                self._finish_pending()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001  a failed save is reported once, above
                if not self._failed:
                    raise


def restore_latest(manager: ocp.CheckpointManager, directory: str,
                   args: Callable[[int], Any], set_aside: bool = False) -> tuple[int, Any]:
    """(step, restored) of the newest checkpoint that reads, with a warning for each that does not.

    Raises CheckpointError if none reads: training never silently starts over from a bad state.
    """
    unreadable: list[tuple[int, str]] = []
    for step in reversed(manager.all_steps()):
        try:
            restored = manager.restore(step, args=args(step))
            if CHECKSUMS in restored and restored[CHECKSUMS] is not None:
                checksums.verify(restored["state"], restored[CHECKSUMS])
        except Exception as e:  # noqa: BLE001  a corrupt checkpoint fails in many ways
            unreadable.append((step, describe(e)))
            logging.warning("checkpoint of step %d in %s is unreadable (%s); trying the one "
                            "before it", step, directory, unreadable[-1][1])
            continue
        if unreadable:
            logging.warning("using the checkpoint of step %d in %s: the newer one(s) of step %s "
                            "could not be read", step, directory,
                            ", ".join(str(s) for s, _ in unreadable))
            if set_aside:
                _set_aside(manager, directory, [s for s, _ in unreadable])
        return step, restored
    if unreadable:
        raise CheckpointError(f"no checkpoint in {directory} could be read: " +
                              "; ".join(f"step {s}: {cause}" for s, cause in unreadable))
    raise CheckpointError(f"no checkpoint found under {directory}")


def _checksums_args(directory: str, step: int) -> dict:
    """The Composite entry that reads a step's checksums, if it has them (older ones do not)."""
    if (epath.Path(directory) / str(step) / CHECKSUMS).exists():
        return {CHECKSUMS: ocp.args.JsonRestore()}
    return {}


def _set_aside(manager: ocp.CheckpointManager, directory: str, steps: list[int]) -> None:
    """Renames unreadable step directories so the steps can be saved again; keeps the files."""
    if jax.process_index() == 0:
        for step in steps:
            path = epath.Path(directory) / str(step)
            target = path.parent / f"{step}.unreadable"
            while target.exists():
                target = target.parent / (target.name + "_")
            path.rename(target)
            logging.warning("set aside %s as %s", path, target.name)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("muse_jax.checkpoint.set_aside")
    manager.reload()


def save_state(directory: str, step: int, state: Any) -> None:
    """Writes `state` alone (no data iterator) as the checkpoint of `step` under `directory`:
    a run that `load_state` reads (to sample, or to fine-tune from), not one that resumes.
    Used by exports (a LoRA fine-tune merged into a standalone run)."""
    if "://" not in directory:
        directory = os.path.abspath(directory)
    manager = ocp.CheckpointManager(directory, item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(create=True))
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001  orbax and TensorStore raise many types
        raise CheckpointError(f"could not write the checkpoint of step {step} in {directory}: "
                              f"{describe(e)}") from None
    finally:
        manager.close()


def load_state(directory: str, sharding: jax.sharding.Sharding | None = None) -> Any:
    """The latest readable train state of another run (to fine-tune from, or to sample with).

    Every array is placed with `sharding` (default: this process's first device), whatever
    mesh the run that saved it had: a tokenizer trained on a pod loads on one CPU.
    """
    if "://" not in directory:  # orbax wants absolute local paths; gs:// ones pass through
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise CheckpointError(f"no checkpoint found under {directory}")
    # "data" (the iterator state) is registered only so that orbax does not warn that it
    # cannot restore it: it is not read.
    manager = ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
        CHECKSUMS: ocp.JsonCheckpointHandler()})
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def args(step):
        metadata = manager.item_metadata(step)["state"]
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
        return ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  **_checksums_args(directory, step))

    try:
        _, restored = restore_latest(manager, directory, args)
    finally:
        manager.close()
    return restored["state"]
