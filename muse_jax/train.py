"""Trains the stage named by the config.

  python -m muse_jax.train --config=configs/vqgan_shapes.py --workdir=/tmp/vqgan
  python -m muse_jax.train --config=configs/vqgan_256.py --dry_run --num_devices=8

Everything a run writes lives under --workdir: checkpoints/ (state + data iterator),
TensorBoard events, metrics.jsonl, config.json and the latest image summaries. Running the
same command again resumes from the latest checkpoint.
"""
from __future__ import annotations

import json
import os

from absl import flags, logging
from ml_collections import config_flags

import muse_jax  # noqa: F401  (quietens TensorFlow before clu imports it)
from muse_jax import errors
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined on demand, not at import, so tests and tools can import this module."""
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/vqgan_shapes.py.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and outputs.")
    flags.DEFINE_bool("dry_run", False, "Build the state abstractly, print sizes, train nothing.")
    flags.DEFINE_integer("num_devices", None, "Dry run only: simulate this many CPU devices.")
    flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() "
                      "first (coordinator found automatically on TPU pods; see launch/).")


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and proves it writable before anything expensive happens."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from None


def train_and_evaluate(config, workdir: str) -> dict:
    """Runs (or resumes) training to `config.train.num_steps`; returns the last eval metrics."""
    import jax
    from clu import periodic_actions

    from muse_jax import checkpoint, metrics, parallel, tasks
    from muse_jax import config as config_lib
    from muse_jax.data import pipeline

    config_lib.validate(config)
    task = tasks.create(config)
    task.check_config()
    prepare_workdir(workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    t = config.train

    # ------------------------------------------------------------------ mesh
    mesh = parallel.create_mesh(config.mesh)
    parallel.check_batch_size(config.data.batch_size, mesh, jax.process_count())
    parallel.check_batch_size(config.data.eval_batch_size, mesh, jax.process_count())
    batch_sharding = parallel.batch_sharding(mesh)
    logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.size)

    # ------------------------------------------------------------------ input
    train_iter = pipeline.train_iterator(config, keep_caption=task.uses_captions)

    def load(local_batch):
        return parallel.global_batch(task.prepare_batch(local_batch), batch_sharding)

    # ------------------------------------------------------------------ model, sharded init
    rng = jax.random.key(config.seed)
    state, state_sharding = parallel.create_sharded(task.init_state, mesh, rng)
    frozen = task.load_frozen(mesh)  # pretrained weights no optimiser sees, already placed
    frozen_sharding = jax.tree.map(lambda x: x.sharding, frozen)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    # ------------------------------------------------------------------ checkpoint
    ckpt = checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                   t.checkpoint_every, t.keep_checkpoints)
    if ckpt.latest_step() is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                state)
        state = ckpt.restore(abstract, train_iter)
        logging.info("resumed from step %d", int(state.step))
    elif config.get("finetune") and config.finetune.init_from:
        state = task.start_from(state)
        logging.info("initialised from %s", config.finetune.init_from)
    start_step = int(state.step)

    # ------------------------------------------------------------------ step
    train_step = jax.jit(task.train_step,
                         in_shardings=(state_sharding, batch_sharding, replicated, frozen_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    eval_step = jax.jit(task.eval_step,
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
        for name, grid in task.summary_images(state, first, frozen).items():
            writer.write_images(step, {name: grid[None]})
            if jax.process_index() == 0:
                metrics.save_png(os.path.join(workdir, f"{name}.png"), grid)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "eval.json"), "w") as f:
                json.dump({"step": step, **result}, f, indent=2)
        logging.info("eval at step %d: %s", step, result)
        return result

    # ------------------------------------------------------------------ loop
    hooks = []
    if jax.process_index() == 0:
        hooks.append(periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer,
                                                     every_secs=t.progress_every_secs,
                                                     every_steps=None))
    last_eval: dict = {}
    logging.info("training from step %d to %d", start_step, t.num_steps)
    try:
        for step in range(start_step, t.num_steps):
            batch = load(next(train_iter))
            state, step_metrics = train_step(state, batch, jax.random.fold_in(rng, step), frozen)
            done = step + 1
            for hook in hooks:
                hook(done)
            if done % t.log_every == 0 or done == t.num_steps:
                writer.write_scalars(done, {k: float(v) for k, v in
                                            jax.device_get(step_metrics).items()})
            if done % t.eval_every == 0 or done == t.num_steps:
                last_eval = evaluate(done)
            ckpt.save(done, state, train_iter, force=done == t.num_steps)
        if start_step >= t.num_steps:
            last_eval = evaluate(start_step)
        ckpt.close()
    finally:
        writer.close()
    return last_eval


def dry_run(config, num_devices: int | None) -> dict:
    """Prints parameter counts and per-device bytes from `jax.eval_shape`; allocates nothing."""
    import jax
    import numpy as np

    from muse_jax import config as config_lib
    from muse_jax import parallel, tasks

    if num_devices:
        jax.config.update("jax_num_cpu_devices", num_devices)
    config_lib.validate(config)
    task = tasks.create(config)
    task.check_config()
    mesh = parallel.create_mesh(config.mesh)
    abstract = parallel.abstract_sharded(task.init_state, mesh, jax.random.key(0))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    report = {"stage": config.stage, "mesh": dict(mesh.shape),
              "params": {name: count(sub) for name, sub in abstract.params.items()}}
    report["params"]["total"] = sum(report["params"].values())
    if getattr(abstract, "disc_params", None):
        report["discriminator_params"] = count(abstract.disc_params)
    report["per_device_bytes"] = {
        "params": parallel.per_device_bytes(abstract.params),
        "optimizer_state": parallel.per_device_bytes(abstract.opt_state),
        "whole_state": parallel.per_device_bytes(abstract),
    }
    print(json.dumps(report, indent=2))
    return report


class _QuietLibraries:
    """Drops INFO chatter of orbax (dozens of lines a save) from the absl log."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "orbax" not in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        raise UserError("--config is required, e.g. --config=configs/vqgan_shapes.py")
    if FLAGS.dry_run:
        dry_run(FLAGS.config, FLAGS.num_devices)
        return
    if not FLAGS.workdir:
        raise UserError("--workdir is required")
    if FLAGS.distributed:
        import jax
        jax.distributed.initialize()
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    errors.run(main)
