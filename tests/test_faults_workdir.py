"""Faults that used to lose data: bit rot in a checkpoint, a NaN learning rate, two runs on one
workdir, another config trained on a workdir, Ctrl-C. The runs go through test_faults.py's
warm forking server (`Server`), with the same flags, so they share its compiled step."""
import json
import os
import shutil
import signal

import numpy as np
import pytest

from test_faults import (STEPS, Server, complete_steps, logged_steps, resumed_from,
                         stopped_by_sigterm)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("xla_cache"))
    yield s
    s.close()


def flip_bytes(path, count=64):
    """Inverts `count` bytes in the middle of `path`: bit rot the file system did not notice."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------- through the CLI
@pytest.mark.slow
def test_a_bit_flip_in_the_latest_checkpoint_sets_it_aside(server, tmp_path):
    workdir = tmp_path / "run"
    stopped_by_sigterm(server, workdir, 7)
    assert complete_steps(workdir) == [3, 6, 7]
    # Every data file: which of them hold the arrays (and which only B-tree nodes the merged
    # manifest supersedes, never read) varies with how the asynchronous writes were grouped.
    for path in (workdir / "checkpoints" / "7" / "state").glob("ocdbt.process_0/d/*"):
        flip_bytes(path)

    run = server.start(workdir, pause_at=8)
    run.wait_paused()
    out = run.output()
    # The flips land in array bytes (a checksum mismatch) or in TensorStore's own structures (a
    # read error), depending on that grouping too; either way step 7 is unreadable. The checksum
    # itself is pinned by test_a_flipped_checkpoint_fails_its_checksums_and_the_one_before_loads.
    assert "checkpoint of step 7 in " in out and " is unreadable (" in out, out[-3000:]
    assert resumed_from(out) == 6
    os.kill(run.pid, signal.SIGKILL)
    run.finish()
    assert "7.unreadable" in {p.name for p in (workdir / "checkpoints").iterdir()}


@pytest.mark.slow
def test_a_second_run_on_a_workdir_is_refused_and_a_killed_run_leaves_no_lock(server, tmp_path):
    workdir = tmp_path / "run"
    first = server.start(workdir, pause_at=2)
    first.wait_paused()
    second = server.start(workdir)
    assert second.finish() == 2, second.output()[-3000:]
    last = second.output().strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {workdir} is in use by another training run (pid "
                           f"{first.pid} on "), last
    assert "Traceback" not in second.output()
    first.release()
    assert first.finish() == 0, first.output()[-3000:]
    assert logged_steps(workdir) == list(range(1, STEPS + 1))  # every step once

    # SIGKILL: the kernel drops the lock with the process; the next run resumes.
    killed = tmp_path / "killed"
    run = server.start(killed, pause_at=4)
    run.wait_paused()
    os.kill(run.pid, signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert (killed / "run.lock").exists()
    start = max(complete_steps(killed), default=0)  # step 3's save may not have completed
    run = server.start(killed, pause_at=5)
    run.wait_paused()
    assert resumed_from(run.output()) == start
    os.kill(run.pid, signal.SIGINT)  # Ctrl-C: handled as SIGTERM, the step in progress saved
    run.release()
    assert run.finish() == 130, run.output()[-3000:]
    last = run.output().strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped at step 5, its checkpoint is in "), last
    assert complete_steps(killed)[-1] == 5


@pytest.mark.slow
def test_another_config_on_a_trained_workdir_keeps_its_config_json(server, tmp_path):
    workdir = tmp_path / "run"
    stopped_by_sigterm(server, workdir, 3)
    before = (workdir / "config.json").read_bytes()
    run = server.start(workdir, "--config.model.channels=16", "--config.optim.name=adafactor")
    assert run.finish() == 2, run.output()[-3000:]
    last = run.output().strip().splitlines()[-1]
    assert last == (f"error: {workdir} holds a run whose config differs in keys that decide the "
                    f"parameters: model.channels 8 -> 16, optim.name 'adamw' -> 'adafactor'; "
                    f"its config.json is kept; choose another --workdir, or resume it with its "
                    f"own config"), last
    assert (workdir / "config.json").read_bytes() == before
    # A key that changes no shape (the learning rate) resumes, and is recorded.
    run = server.start(workdir, "--config.optim.lr=0.002", pause_at=4)
    run.wait_paused()
    assert resumed_from(run.output()) == 3
    os.kill(run.pid, signal.SIGKILL)
    run.finish()
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.002


# ---------------------------------------------------------------------------- fast, in-process
def test_a_flipped_checkpoint_fails_its_checksums_and_the_one_before_loads(tmp_path):
    import grain
    import jax
    import jax.numpy as jnp

    from muse_jax import checkpoint

    def iterator():
        return iter(grain.MapDataset.range(100).to_iter_dataset())

    it, ckpt = iterator(), checkpoint.Checkpointer(str(tmp_path), every=1, keep=5)
    for step in (1, 2):
        next(it)
        ckpt.save(step, {"w": jnp.arange(4096, dtype=jnp.float32) * step}, it)
    ckpt.close()
    assert json.loads((tmp_path / "2" / "checksums" / "metadata").read_text())["w"]
    files = sorted((tmp_path / "2" / "state").glob("ocdbt.process_0/d/*"),
                   key=lambda p: p.stat().st_size)
    flip_bytes(files[-1])
    with pytest.raises(checkpoint.CheckpointError, match=r"step 2: CheckpointError: checksum "
                                                         r"mismatch in w"):
        shutil.copytree(tmp_path, tmp_path.parent / "only2")
        shutil.rmtree(tmp_path.parent / "only2" / "1")
        checkpoint.load_state(str(tmp_path.parent / "only2"))
    abstract = {"w": jax.ShapeDtypeStruct((4096,), jnp.float32)}
    restored = checkpoint.Checkpointer(str(tmp_path), every=1, keep=5).restore(abstract,
                                                                               iterator())
    np.testing.assert_array_equal(restored["w"], np.arange(4096, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2.unreadable"]


def test_a_state_with_a_nan_is_never_checkpointed(tmp_path):
    import grain
    import jax.numpy as jnp

    from muse_jax import checkpoint

    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2)
    assert ckpt.save(1, {"w": jnp.ones(3)}, it)
    assert not ckpt.save(2, {"w": jnp.array([1.0, jnp.inf, 0.0])}, it)
    ckpt.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_a_nan_learning_rate_update_is_skipped_though_loss_and_gradients_are_finite():
    import flax
    import jax
    import jax.numpy as jnp

    from muse_jax import training

    @flax.struct.dataclass
    class State:
        step: jax.Array
        params: jax.Array

    def train_step(state, lr, rng, frozen):  # finite loss and gradients, a poisoned update
        grad = state.params
        return (state.replace(step=state.step + 1, params=state.params - lr * grad),
                {"loss": jnp.sum(grad ** 2), "grad_norm": jnp.linalg.norm(grad)})

    step = jax.jit(training.skip_nonfinite(train_step))
    state = State(jnp.zeros((), jnp.int32), jnp.ones(3))
    for lr in (jnp.nan, jnp.inf):
        new, metrics = step(state, lr, None, {})
        assert float(metrics["nonfinite"]) == 1.0 and int(new.step) == 1
        np.testing.assert_array_equal(new.params, state.params)
    new, metrics = step(state, 0.5, None, {})
    assert float(metrics["nonfinite"]) == 0.0
    np.testing.assert_array_equal(new.params, np.full(3, 0.5))


@pytest.mark.parametrize("key,value,message", [
    ("optim.lr", float("nan"), "optim.lr must be finite and >= 0, got nan"),
    ("optim.lr", float("inf"), "optim.lr must be finite and >= 0, got inf"),
    ("optim.lr", -1e-3, "optim.lr must be finite and >= 0, got -0.001"),
    ("train.keep_checkpoints", -1, "train.keep_checkpoints must be >= 1, got -1"),
    ("train.eval_every", 0, "train.eval_every must be >= 1, got 0"),
    ("data.batch_size", 0, "data.batch_size must be >= 1, got 0"),
    ("data.eval_size", 4, r"data.eval_size \(4\) must be at least data.eval_batch_size \(16\)"),
    ("data.image_size", 16, "data.image_size must be >= 24 with data.source='shapes'"),
])
def test_values_that_cannot_work_fail_before_the_workdir_is_touched(tmp_path, key, value,
                                                                   message):
    from muse_jax import config as config_lib
    from muse_jax import training

    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    block, name = key.split(".")
    config[block][name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        training.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_base_config_on_a_tokenizer_workdir_names_the_stage_and_keeps_the_file(tmp_path):
    from muse_jax import config as config_lib
    from muse_jax import runs

    vqgan = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    runs.save_config(str(tmp_path), vqgan)
    before = (tmp_path / "config.json").read_bytes()
    base = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    with pytest.raises(config_lib.ConfigError, match=r"holds a 'vqgan'-stage run and this config "
                                                     r"trains the 'base' stage \(key stage "
                                                     r"differs\); its config.json is kept"):
        runs.save_config(str(tmp_path), base)
    assert (tmp_path / "config.json").read_bytes() == before
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(config_lib.ConfigError, match=r"config.json is not valid JSON"):
        runs.save_config(str(tmp_path), vqgan)


def test_the_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    from muse_jax.errors import UserError
    from muse_jax.workdir_lock import WorkdirLock

    with WorkdirLock(str(tmp_path)):
        with pytest.raises(UserError, match=rf"workdir {tmp_path} is in use by another training "
                                            rf"run \(pid {os.getpid()} on "):
            WorkdirLock(str(tmp_path)).acquire()
    WorkdirLock(str(tmp_path)).acquire().release()  # free again


def test_a_full_disk_and_ctrl_c_outside_the_loop_are_one_line(capsys):
    import errno

    from muse_jax import errors

    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")

    def interrupted(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    for main, status, line in [
            (full, 2, "error: No space left on device writing /w/metrics.jsonl (errno 28); free "
                      "space or choose another directory, then run the same command again"),
            (interrupted, 130, "interrupted (Ctrl-C)")]:
        with pytest.raises(SystemExit) as e:
            errors.cli_main(main)(["x"])
        assert e.value.code == status
        assert capsys.readouterr().err.strip().splitlines() == [line]
    with pytest.raises(OSError):  # not the machine's state: a bug keeps its traceback
        errors.cli_main(bug)(["x"])
