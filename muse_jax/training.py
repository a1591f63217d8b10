"""The training loop: `train_and_evaluate(config, workdir)` runs the stage the config names
(`python -m muse_jax.train` is its command line), and the dry run that sizes it.

Everything a run writes lives under --workdir: checkpoints/ (state + data iterator),
TensorBoard events, metrics.jsonl, config.json and the latest image summaries. Running the
same command again resumes from the latest checkpoint.

Faults: SIGTERM (the preemption notice of TPU VMs) saves a checkpoint after the step in
progress and exits with status 143 (errors.EXIT_PREEMPTED); Ctrl-C (SIGINT) does the same and
exits with 130; rerunning resumes at that step. A step whose loss, gradients or new state are
not finite leaves the state unchanged (`skip_nonfinite`); skips are logged and counted
(`nonfinite_skipped` in metrics.jsonl), no checkpoint is saved while the latest updates were
skipped (so keep-N never rotates away the last good one), and after
`train.max_consecutive_nonfinite` in a row the run stops with an error. The final checkpoint
is saved before the final evaluation, so an evaluation error loses no step. Checkpoint
failures (disk full, unreadable or corrupt checkpoints) are handled in muse_jax/checkpoint.py;
the workdir lock in muse_jax/workdir_lock.py; the config check against the workdir's
config.json in muse_jax/runs.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import threading

from absl import logging

from muse_jax import errors
from muse_jax.errors import UserError


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and proves it writable before anything expensive happens.

    Local directories and gs:// buckets alike (etils.epath), so the workers of a pod slice
    share one workdir; each process probes with a file of its own name.
    """
    from etils import epath

    try:
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{socket.gethostname()}_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except Exception as e:  # noqa: BLE001  OSError locally, tf.errors.* for gs://
        raise UserError(f"workdir {workdir} is not writable: "
                        f"{getattr(e, 'strerror', None) or e}") from None


def update_is_finite(metrics: dict, new_state):
    """Traced bool: every "loss", "*_loss" and "*grad_norm" metric and every float in
    `new_state` is finite (what `skip_nonfinite` checks)."""
    import jax
    import jax.numpy as jnp

    checked = [jnp.all(jnp.isfinite(v)) for k, v in metrics.items()
               if k == "loss" or k.endswith(("_loss", "grad_norm"))]
    checked += [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(new_state)
                if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checked))


def skip_nonfinite(train_step):
    """`train_step` that leaves the state as it was, but for its step, when the update is bad.

    Bad means a non-finite "loss", "*_loss" or "*grad_norm" metric (one NaN or inf in any
    gradient makes its norm non-finite), or a NaN or inf anywhere in the new state: finite
    gradients can still make a non-finite update (a NaN or inf learning rate, an overflowing
    optimiser moment), and checking the parameters it produced catches every such update.
    Applying a bad update would poison every later step. The step counter still advances, so
    the data and the schedules move on. The metrics gain "nonfinite" (1.0 for a skipped
    step). Runs inside the compiled step.
    """
    import jax
    import jax.numpy as jnp

    def step(state, batch, rng, frozen):
        new_state, metrics = train_step(state, batch, rng, frozen)
        finite = update_is_finite(metrics, new_state)
        # A cond, not a `jnp.where` per leaf: XLA:CPU fuses each leaf's where with the global
        # finiteness reductions and compiled the tiny shapes tokenizer's step in 53 s instead of
        # 6.3 s (benchmarks/step_compile.py).
        kept = jax.lax.cond(finite, lambda: new_state, lambda: state)
        return (kept.replace(step=new_state.step),
                {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)})

    return step


class NonfiniteGuard:
    """Counts the steps `skip_nonfinite` skipped; stops the run after `limit` in a row.

    Each step's flag is read one step late (`push` settles the previous one), so the host
    queues the next step before it waits for the device.
    """

    def __init__(self, limit: int, latest_checkpoint):
        self.limit, self.skipped, self.in_a_row = limit, 0, 0
        self._latest_checkpoint = latest_checkpoint
        self._pending = None

    def push(self, step: int, flag) -> None:
        self.settle()
        self._pending = (step, flag)

    def settle(self) -> None:
        if self._pending is None:
            return
        (step, flag), self._pending = self._pending, None
        if float(flag) == 0.0:
            self.in_a_row = 0
            return
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row > 3 and self.in_a_row & (self.in_a_row - 1):
            return self._check_limit(step)  # a long streak logs at 1, 2, 3, 4, 8, 16, ...
        logging.warning("step %d: loss, gradients or parameters not finite, update skipped (%d "
                        "in a row, %d in all)", step, self.in_a_row, self.skipped)
        self._check_limit(step)

    def _check_limit(self, step: int) -> None:
        if self.in_a_row >= self.limit:
            latest = self._latest_checkpoint()
            kept = (f"the latest checkpoint, step {latest}, holds the state from before them"
                    if latest is not None else "no checkpoint was saved")
            raise UserError(
                f"steps {step - self.in_a_row + 1}-{step}: {self.in_a_row} updates in a row had a "
                f"non-finite loss, gradients or parameters (train.max_consecutive_nonfinite="
                f"{self.limit}); stopped, {kept}; lower optim.lr or check the data")


def save_checkpoint(ckpt, guard: NonfiniteGuard, step: int, state, data_iterator,
                    force: bool = False) -> bool:
    """Saves when due (or `force`d), except right after skipped updates: their state is the
    last good one under a later step, and saving it would rotate away the checkpoints from
    before the fault (the ones to go back to) while it lasts. True if a save started."""
    if not (force or ckpt.due(step)):
        return False
    guard.settle()  # this step's flag: one wait on the device per checkpoint
    if guard.in_a_row:
        logging.warning("step %d: not checkpointed, the last %d update(s) were skipped",
                        step, guard.in_a_row)
        return False
    return ckpt.save(step, state, data_iterator, force=True)


class PreemptionNotice:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag that the loop checks after each step.

    Single-process runs only: in a multi-process run JAX's preemption service owns SIGTERM and
    the processes agree on a step to stop at (`Checkpointer.reached_preemption`). Once the run
    stops for it the handler stays installed, so a repeated notice cannot kill the process
    while it finishes its checkpoint.
    """

    def __init__(self):
        import jax

        self.received = False
        self.status = errors.EXIT_PREEMPTED  # 128 + the signal that came first
        self._previous = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if not self.received:
            self.status = 128 + signum
        self.received = True

    def stop(self, step: int, latest: int | None, directory: str) -> errors.Preempted:
        """The exception that ends the run at `step`, saying where it can resume from."""
        where = (f"its checkpoint is in {directory}" if latest == step else
                 f"the latest checkpoint is step {latest} in {directory} (the updates since were "
                 f"skipped as non-finite)")
        return errors.Preempted(f"stopped at step {step}, {where}; run the same command to "
                                f"resume", status=self.status)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def _absolute(workdir: str) -> str:
    """Orbax wants absolute paths; gs:// ones are already."""
    return workdir if "://" in workdir else os.path.abspath(workdir)


class ProgressBar:
    """A progress bar over the steps, the loss beside it: for people watching (`make demo`, a
    terminal); the periodic steps/s + ETA report goes to the logs and TensorBoard either way."""

    def __init__(self, config, start_step: int):
        from muse_jax.progress import bar
        self._bar = bar(total=config.train.num_steps, initial=start_step, unit="step",
                        desc=f"training {config.stage}", dynamic_ncols=True)

    def __call__(self, step: int, scalars: dict | None = None) -> None:
        self._bar.update(step - self._bar.n)
        if scalars and "loss" in scalars:
            self._bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)

    def close(self) -> None:
        self._bar.close()


def train_and_evaluate(config, workdir: str, progress_bar: bool = False,
                       devices=None) -> dict:
    """Runs (or resumes) training to `config.train.num_steps`; returns the last eval metrics.

    The config is checked (values, then against what the workdir holds) and the workdir
    locked against a second run before anything is written. `progress_bar`: also draw a
    progress bar of the steps on stderr (process 0 only). `devices`: the devices to build the
    config's mesh over (None: all of them, as the command line does); tests that do not test
    sharding pass one device, since compiling and running SPMD programs over the 8 simulated
    CPU devices of tests/conftest.py costs them about twice the time."""
    import jax

    from muse_jax import config as config_lib
    from muse_jax import runs, tasks
    from muse_jax.workdir_lock import WorkdirLock

    config_lib.validate(config)
    task = tasks.create(config)
    task.check_config()
    prepare_workdir(workdir)
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        runs.check_workdir_config(workdir, config)
        if jax.process_index() == 0:
            runs.save_config(workdir, config)
        return _train(config, workdir, task, progress_bar, devices)
    finally:
        if lock:
            lock.release()


def _train(config, workdir: str, task, progress_bar: bool, devices) -> dict:
    import jax
    from etils import epath

    from muse_jax import checkpoint, metrics, parallel
    from muse_jax.data import pipeline

    t = config.train

    # ------------------------------------------------------------------ mesh
    mesh = parallel.create_mesh(config.mesh, devices)
    parallel.check_batch_size(config.data.batch_size, mesh, jax.process_count())
    parallel.check_batch_size(config.data.eval_batch_size, mesh, jax.process_count())
    batch_sharding = parallel.batch_sharding(mesh)
    logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

    # ------------------------------------------------------------------ input
    train_iter = pipeline.train_iterator(config, keep_caption=task.uses_captions)

    # ------------------------------------------------------------------ model, sharded init
    rng = jax.random.key(config.seed)
    steps = task.load(mesh)  # the frozen models read, their weights placed
    frozen = steps.frozen  # pretrained weights no optimiser sees

    def load(local_batch):
        return parallel.global_batch(steps.prepare_batch(local_batch), batch_sharding)

    abstract = parallel.abstract_sharded(task.init_state, mesh, rng)  # shapes, no arrays
    state_sharding = jax.tree.map(lambda x: x.sharding, abstract)
    frozen_sharding = jax.tree.map(lambda x: x.sharding, frozen)
    replicated = parallel.replicated(mesh)

    # ------------------------------------------------------------------ checkpoint
    ckpt = checkpoint.Checkpointer(os.path.join(_absolute(workdir), "checkpoints"),
                                   t.checkpoint_every, t.keep_checkpoints)
    if ckpt.latest_step() is not None:  # a resumed run never computes the initial state
        state = ckpt.restore(abstract, train_iter)
        logging.info("resumed from step %d", int(state.step))
    else:
        state = steps.start_state(parallel.create_sharded(task.init_state, mesh, rng)[0])
    start_step = int(state.step)

    # ------------------------------------------------------------------ step
    train_step = jax.jit(skip_nonfinite(steps.train_step),
                         in_shardings=(state_sharding, batch_sharding, replicated, frozen_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    eval_step = jax.jit(steps.eval_step,
                        in_shardings=(state_sharding, batch_sharding, replicated, frozen_sharding),
                        out_shardings=replicated)

    # ------------------------------------------------------------------ eval
    writer = metrics.create_writer(workdir)
    eval_rng = jax.random.split(rng)[1]  # the same masks and noise at every evaluation

    def evaluate(step: int) -> dict:
        totals = None
        first = None
        for i, local in enumerate(pipeline.eval_batches(config, keep_caption=task.uses_captions)):
            batch = load(local)
            first = batch if first is None else first
            out = eval_step(state, batch, jax.random.fold_in(eval_rng, i), frozen)
            totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
        result = task.summarize_eval(jax.device_get(totals))
        writer.write_scalars(step, result)
        for name, grid in steps.summary_images(state, first, frozen).items():
            writer.write_images(step, {name: grid[None]})
            if jax.process_index() == 0:
                metrics.save_png(os.path.join(workdir, f"{name}.png"), grid)
        if jax.process_index() == 0:
            epath.Path(workdir, "eval.json").write_text(json.dumps({"step": step, **result},
                                                                   indent=2))
        logging.info("eval at step %d: %s", step, result)
        return result

    # ------------------------------------------------------------------ loop
    hooks = []
    if jax.process_index() == 0:
        hooks.append(metrics.StepRate(t.num_steps, writer, t.progress_every_secs))
    bar = ProgressBar(config, start_step) if progress_bar and jax.process_index() == 0 else None
    last_eval: dict = {}
    guard = NonfiniteGuard(t.max_consecutive_nonfinite, ckpt.latest_step)
    notice, preempted = PreemptionNotice(), False
    logging.info("training from step %d to %d", start_step, t.num_steps)
    try:
        for step in range(start_step, t.num_steps):
            batch = load(next(train_iter))
            state, step_metrics = train_step(state, batch, jax.random.fold_in(rng, step), frozen)
            done = step + 1
            guard.push(done, step_metrics["nonfinite"])
            for hook in hooks:
                hook(done)
            if done % t.log_every == 0 or done == t.num_steps:
                scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                guard.settle()  # the device is done with this step anyway
                writer.write_scalars(done, {**scalars, "nonfinite_skipped": guard.skipped})
                if bar:
                    bar(done, scalars)
            elif bar:
                bar(done)
            saved = save_checkpoint(ckpt, guard, done, state, train_iter,
                                    force=done == t.num_steps)
            if done % t.eval_every == 0 or done == t.num_steps:
                last_eval = evaluate(done)
            if done < t.num_steps and (notice.received or ckpt.reached_preemption(done)):
                if not saved:
                    save_checkpoint(ckpt, guard, done, state, train_iter, force=True)
                ckpt.close()  # returns once the checkpoint is complete
                preempted = True
                raise notice.stop(done, ckpt.latest_step(), ckpt.directory)
        guard.settle()
        if start_step >= t.num_steps:
            last_eval = evaluate(start_step)
        ckpt.close()
    finally:
        if bar:
            bar.close()
        ckpt.close()  # on an error, still finishes the save in flight (a no-op if closed)
        writer.close()
        if not preempted:
            notice.uninstall()
    return last_eval


def dry_run(config, num_devices: int | None, as_json: bool = False, memory_gib: float = 16.0,
            title: str = "") -> dict:
    """Prints parameter counts and per-device bytes from `jax.eval_shape`; allocates nothing.

    The table (or, `as_json`, the report) of muse_jax/plan.py, for the config's mesh and the
    candidate meshes of `num_devices` simulated CPU devices.
    """
    import jax

    if num_devices:
        jax.config.update("jax_platforms", "cpu")  # simulate even on a TPU VM
        jax.config.update("jax_num_cpu_devices", num_devices)
    from muse_jax import config as config_lib
    from muse_jax import plan

    config_lib.validate(config)
    report = plan.plan(config, jax.devices(), memory_gib)
    print(json.dumps(report, indent=2) if as_json else plan.format_table(report, title or "config"))
    return report
