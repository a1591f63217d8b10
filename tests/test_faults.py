"""Training that survives faults: SIGKILL/SIGTERM at random steps, NaNs, corrupt checkpoints, full disks.

The runs are `muse_jax.train`'s `main` with the same flags each time, each in a fresh process.
To keep 20+ runs within a minute or two on two cores, those processes are forked from a warm
parent (`serve`) that has already imported jax, TensorFlow, orbax and grain (which takes
seconds a process), and they share a persistent XLA compilation cache. A run can be told to
pause right after logging a given step (a test-only patch of the metrics writer), so that a
signal lands at exactly that step; SIGKILLs are sent during such a pause too.
"""
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ONE_FAST_DEVICE, REPO

STEPS = 60  # of every run here: the same number keeps the compiled step (and cache) the same
EVERY = 3  # checkpoint_every
FLAGS = ["--config=configs/vqgan_shapes.py:tiny", f"--config.train.num_steps={STEPS}",
         f"--config.train.checkpoint_every={EVERY}", "--config.train.keep_checkpoints=2",
         f"--config.train.eval_every={STEPS}", "--config.data.image_size=32",
         "--config.model.channel_mult=(1,)", "--config.model.num_res_blocks=0",
         "--config.data.batch_size=2",
         "--config.data.eval_batch_size=2", "--config.data.eval_size=2"]


# ---------------------------------------------------------------------------- the warm parent
def serve() -> None:
    """Reads one JSON request a line and forks a training run for each; runs may overlap.

    Replies, one JSON object a line: {"pid"} when a run starts, {"pid", "status"} when it ends.
    Single-threaded on purpose: a fork copies no other thread's held locks.
    """
    sys.path.insert(0, str(REPO))
    import flax.linen  # noqa: F401
    import grain  # noqa: F401
    import orbax.checkpoint  # noqa: F401

    from muse_jax import checkpoint, config, metrics, parallel, tasks, train, training  # noqa: F401
    from muse_jax.data import pipeline  # noqa: F401
    from muse_jax.tasks import vqgan  # noqa: F401

    import select

    pending, running, open_ = b"", 0, True
    while open_ or running:
        if open_ and select.select([0], [], [], 0.01)[0]:
            data = os.read(0, 1 << 16)
            open_ = bool(data)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    _child(json.loads(line))
                running += 1
                print(json.dumps({"pid": pid}), flush=True)
        elif not open_:
            time.sleep(0.01)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running -= 1
            print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}),
                  flush=True)


def _child(request: dict) -> None:
    import resource

    from muse_jax import errors, metrics, train
    from muse_jax.tasks.vqgan import VQGANSteps

    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    tee = None
    if request.get("max_file_bytes"):  # the log goes through a pipe: the size limit is not its
        tee = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=log)
        log = tee.stdin.fileno()
    os.dup2(log, 1)
    os.dup2(log, 2)
    pause_at, marker = request.get("pause_at"), request.get("marker")
    if pause_at:
        write = metrics.JsonlWriter.write_scalars

        def write_then_pause(self, step, scalars):
            write(self, step, scalars)
            if step == pause_at and "loss" in scalars:  # the train step's record, not eval's
                Path(marker).touch()
                deadline = time.time() + 120
                while not os.path.exists(marker + ".release") and time.time() < deadline:
                    time.sleep(0.005)

        metrics.JsonlWriter.write_scalars = write_then_pause
    nan_steps = set(request.get("nan_steps", ()))
    if nan_steps:
        prepare, calls = VQGANSteps.prepare_batch, iter(range(1, 10**6))

        def prepare_with_nans(self, local):
            batch = prepare(self, local)
            return {"image": np.full_like(batch["image"], np.nan)} if next(calls) in nan_steps \
                else batch

        VQGANSteps.prepare_batch = prepare_with_nans
    if request.get("max_file_bytes"):  # a disk that fills up: writes past this size fail
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = request["max_file_bytes"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    code = 1
    try:
        train.define_flags()
        sys.argv = ["muse_jax.train", *request["args"]]
        errors.run(train.main)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if tee:
            os.close(1)
            os.close(2)
            tee.stdin.close()
            tee.wait()
        os._exit(code)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()


# ---------------------------------------------------------------------------- the test side
class Server:
    def __init__(self, cache_dir: Path):
        # One CPU device, not the CLIs' one a core (muse_jax/cpu_devices.py): on two, a full
        # disk's one-line error is followed, sometimes cut through, by TensorStore's "Event loop
        # is closed" tracebacks (its write callbacks reach an event loop that orbax closed when
        # the first write failed); 2 of 6 runs of the full-disk test, 2026-12-06. Not yet fixed.
        env = {**os.environ, "JAX_PLATFORMS": "cpu", **ONE_FAST_DEVICE,
               "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.started: queue.Queue = queue.Queue()
        self.ended: dict[int, queue.Queue] = {}
        self.runs: list[Run] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            reply = json.loads(line)
            if "status" in reply:
                self.ended_queue(reply["pid"]).put(reply["status"])
            else:
                self.started.put(reply["pid"])

    def ended_queue(self, pid: int) -> queue.Queue:
        with self._lock:
            return self.ended.setdefault(pid, queue.Queue())

    def start(self, workdir: Path, *extra: str, **request) -> "Run":
        log = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.log"
        request = {"args": [*FLAGS, f"--workdir={workdir}", *extra], "log": str(log),
                   "marker": str(log) + ".paused", **request}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        run = Run(self, self.started.get(timeout=60), log)
        self.runs.append(run)
        return run

    def close(self):
        for run in self.runs:  # those a failed test left behind
            if run.status is None and run._ended.empty():
                os.kill(run.pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Run:
    def __init__(self, server: Server, pid: int, log: Path):
        self.server, self.pid, self.log = server, pid, log
        self.status = None
        self._ended = server.ended_queue(pid)

    def wait_paused(self, timeout=300) -> None:
        marker = Path(str(self.log) + ".paused")
        deadline = time.time() + timeout
        while not marker.exists():
            if not self._ended.empty():
                self.status = self._ended.get()
                raise AssertionError(f"run ended ({self.status}) before pausing:\n{self.output()}")
            assert time.time() < deadline, f"no pause within {timeout} s:\n{self.output()}"
            time.sleep(0.005)

    def release(self) -> None:
        Path(str(self.log) + ".paused.release").touch()

    def finish(self, timeout=300) -> int:
        if self.status is None:
            try:
                self.status = self._ended.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"run still going after {timeout} s:\n"
                                     f"{self.output()[-3000:]}") from None
        return self.status

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("xla_cache"))
    yield s
    s.close()


def stopped_by_sigterm(server: Server, workdir: Path, step: int, *extra: str) -> "Run":
    """A run stopped by SIGTERM right after `step`: its checkpoint saved, status 143."""
    run = server.start(workdir, *extra, pause_at=step)
    run.wait_paused()
    os.kill(run.pid, signal.SIGTERM)
    run.release()
    assert run.finish() == 143, run.output()[-3000:]
    return run


def complete_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def logged_steps(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()
            if line.strip() and "loss" in json.loads(line)]


def resumed_from(output: str) -> int:
    for line in output.splitlines():
        if "resumed from step" in line:
            return int(line.rsplit("resumed from step", 1)[1].split()[0])
    assert "training from step 0" in output, output[-3000:]
    return 0


def final_state(workdir: Path):
    from muse_jax import checkpoint
    return checkpoint.load_state(str(workdir / "checkpoints"))


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same_state(a, b):
    import jax
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_twenty_random_kills_lose_nothing_beyond_the_last_checkpoint(server, tmp_path,
                                                                     record_property):
    # The uninterrupted run goes on beside the faulted ones, once it has compiled the step.
    straight = tmp_path / "straight"
    reference = server.start(straight, pause_at=1)
    reference.wait_paused()
    reference.release()

    rng = random.Random(10)
    kinds = ["SIGTERM"] * 10 + ["SIGKILL"] * 10
    rng.shuffle(kinds)
    workdir = tmp_path / "faulted"
    start, resumes, lost, history = 0, 0, 0, []
    for i, kind in enumerate(kinds):
        target = min(start + rng.randint(1, 4), STEPS - 1)
        assert target > start, history
        run = server.start(workdir, pause_at=target)
        run.wait_paused()
        assert resumed_from(run.output()) == start, (i, history, run.output()[-3000:])
        resumes += "resumed from step" in run.output()
        if kind == "SIGKILL":
            os.kill(run.pid, signal.SIGKILL)
            assert run.finish() == -signal.SIGKILL
        else:
            os.kill(run.pid, signal.SIGTERM)
            run.release()
            if i % 2:  # a second notice while the checkpoint is being written
                time.sleep(0.02)
                os.kill(run.pid, signal.SIGTERM)
            assert run.finish() == 143, run.output()[-3000:]
            assert f"preempted: stopped at step {target}" in run.output()
        done = logged_steps(workdir)[-1]  # the last step this run finished
        assert done == target
        start = max(complete_steps(workdir), default=0)  # what the next run must resume from
        history.append((kind, target, start))
        lost += done - start
        if kind == "SIGTERM":
            assert start == done, history  # zero steps lost
        else:
            assert 0 <= done - start < 2 * EVERY, history
    run = server.start(workdir)
    assert run.finish() == 0, run.output()[-3000:]
    assert resumed_from(run.output()) == start
    resumes += 1
    assert reference.finish() == 0, reference.output()[-3000:]

    counts = {"faults_injected": len(kinds), "sigterm": kinds.count("SIGTERM"),
              "sigkill": kinds.count("SIGKILL"), "resumes": resumes, "steps_lost": lost,
              "steps_lost_to_sigterm": 0, "faults": history}
    print("fault test:", json.dumps(counts))
    record_property("fault_counts", json.dumps(counts))
    assert_same_state(final_state(workdir), final_state(straight))
    assert json.loads((workdir / "eval.json").read_text()) == \
        json.loads((straight / "eval.json").read_text())


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(server, tmp_path):
    import orbax.checkpoint as ocp

    # One bad batch: skipped, counted, and the run goes on.
    once = tmp_path / "once"
    run = server.start(once, "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=9",
                       nan_steps=[3], pause_at=5)
    run.wait_paused()
    os.kill(run.pid, signal.SIGTERM)
    run.release()
    assert run.finish() == 143, run.output()[-3000:]
    records = {r["step"]: r for r in map(json.loads, (once / "metrics.jsonl").read_text().splitlines())}
    assert [records[s]["nonfinite"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    assert [records[s]["nonfinite_skipped"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert np.isfinite(records[4]["loss"]) and np.isfinite(records[5]["loss"])
    # The skipped step is not checkpointed (its state is step 2's under another number).
    assert complete_steps(once) == [1, 2, 4, 5]
    assert "step 3: not checkpointed, the last 1 update(s) were skipped" in run.output()

    # Bad from step 4 on: after 4 in a row the run stops with one line; nothing is saved amid
    # the skipped steps, so keep-N rotates nothing away: step 3, the last good one, stays.
    stop = tmp_path / "stop"
    run = server.start(stop, "--config.train.max_consecutive_nonfinite=4",
                       "--config.train.keep_checkpoints=1", nan_steps=list(range(4, STEPS + 1)))
    assert run.finish() == 2, run.output()[-3000:]
    last = run.output().strip().splitlines()[-1]
    assert last.startswith("error: steps 4-7: 4 updates in a row had a non-finite loss, "
                           "gradients or parameters"), last
    assert "train.max_consecutive_nonfinite=4" in last and "Traceback" not in run.output()
    assert "the latest checkpoint, step 3, holds the state from before them" in last, last
    assert complete_steps(stop) == [3]
    good = ocp.StandardCheckpointer().restore(stop / "checkpoints" / "3" / "state")
    assert all(np.isfinite(x).all() for x in jax_leaves(good["params"]))


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back_to_the_one_before(server, tmp_path):
    workdir = tmp_path / "run"
    run = server.start(workdir, pause_at=7)
    run.wait_paused()
    os.kill(run.pid, signal.SIGTERM)
    run.release()
    assert run.finish() == 143
    assert complete_steps(workdir) == [3, 6, 7]
    for data in (workdir / "checkpoints" / "7" / "state").glob("ocdbt.process_0/d/*"):
        data.write_bytes(data.read_bytes()[:10])  # truncated
    os.remove(workdir / "checkpoints" / "6" / "state" / "_METADATA")

    run = server.start(workdir, pause_at=8)
    run.wait_paused()
    out = run.output()
    assert "checkpoint of step 7" in out and "unreadable" in out
    assert "checkpoint of step 6" in out and "the newer one(s) of step 7, 6 could not" in out
    assert resumed_from(out) == 3
    os.kill(run.pid, signal.SIGKILL)
    run.finish()
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert {"6.unreadable", "7.unreadable"} <= set(names)

    # Nothing readable at all: one line, and no training from scratch.
    for step in complete_steps(workdir):
        shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
    run = server.start(workdir)
    assert run.finish() == 2
    last = run.output().strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint in ") and "could be read: step " in last, last


@pytest.mark.slow
def test_full_disk_during_a_save_is_one_line_and_keeps_earlier_checkpoints(server, tmp_path):
    workdir = tmp_path / "run"
    run = server.start(workdir, pause_at=4)
    run.wait_paused()
    os.kill(run.pid, signal.SIGTERM)
    run.release()
    assert run.finish() == 143
    assert complete_steps(workdir) == [3, 4]

    run = server.start(workdir, max_file_bytes=20_000)  # the next checkpoint does not fit
    assert run.finish() == 2, run.output()[-3000:]
    last = run.output().strip().splitlines()[-1]
    assert last.startswith("error: could not save the checkpoint of step 6 in "), last
    assert "File too large" in last and "step 4, is intact" in last, last
    assert complete_steps(workdir) == [3, 4]

    run = server.start(workdir, pause_at=5)  # space again: resumes from the intact one
    run.wait_paused()
    assert resumed_from(run.output()) == 4
    os.kill(run.pid, signal.SIGKILL)
    run.finish()


# ---------------------------------------------------------------------------- fast, in-process
def test_skip_nonfinite_keeps_the_state_but_advances_the_step():
    import flax
    import jax
    import jax.numpy as jnp

    from muse_jax import training

    @flax.struct.dataclass
    class State:
        step: jax.Array
        params: jax.Array
        opt_state: jax.Array

    def train_step(state, batch, rng, frozen):
        grad = batch * state.params
        return (state.replace(step=state.step + 1, params=state.params - grad,
                              opt_state=state.opt_state + 1),
                {"loss": jnp.sum(grad), "grad_norm": jnp.linalg.norm(grad), "psnr": jnp.inf})

    step = jax.jit(training.skip_nonfinite(train_step))
    state = State(jnp.zeros((), jnp.int32), jnp.ones(3), jnp.zeros(3))
    bad, metrics = step(state, jnp.array([1.0, jnp.nan, 1.0]), None, {})
    assert int(bad.step) == 1 and float(metrics["nonfinite"]) == 1.0
    np.testing.assert_array_equal(bad.params, state.params)
    np.testing.assert_array_equal(bad.opt_state, state.opt_state)
    good, metrics = step(bad, jnp.full(3, 0.5), None, {})  # an infinite psnr is not checked
    assert int(good.step) == 2 and float(metrics["nonfinite"]) == 0.0
    np.testing.assert_array_equal(good.params, np.full(3, 0.5))


def test_nonfinite_guard_counts_and_stops_after_the_limit_in_a_row():
    from muse_jax import training
    from muse_jax.errors import UserError

    guard = training.NonfiniteGuard(3, lambda: 6)
    for step, flag in enumerate([0, 1, 1, 0, 1, 1], start=1):
        guard.push(step, np.float32(flag))
    guard.settle()
    assert (guard.skipped, guard.in_a_row) == (4, 2)
    with pytest.raises(UserError, match=r"steps 5-7: 3 updates in a row .*the latest checkpoint, "
                                        r"step 6, holds the state from before them"):
        guard.push(7, np.float32(1))
        guard.settle()


def test_checkpointer_falls_back_past_unreadable_checkpoints(tmp_path):
    import grain
    import jax
    import jax.numpy as jnp

    from muse_jax import checkpoint

    def iterator():
        return iter(grain.MapDataset.range(100).to_iter_dataset())

    it = iterator()
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=2, keep=5)
    for step in range(1, 7):
        next(it)
        ckpt.save(step, {"w": jnp.full(4, float(step))}, it)
    ckpt.close()
    os.remove(tmp_path / "6" / "state" / "_METADATA")
    (tmp_path / "4" / "data" / "process_0-of-1.json").write_text("{\"trunc")

    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    fresh = iterator()
    restored = checkpoint.Checkpointer(str(tmp_path), every=2, keep=5).restore(abstract, fresh)
    np.testing.assert_array_equal(restored["w"], np.full(4, 2.0))
    assert next(fresh) == 2  # the data iterator is where it was at step 2
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["2", "4.unreadable", "6.unreadable"]
    np.testing.assert_array_equal(checkpoint.load_state(str(tmp_path))["w"], np.full(4, 2.0))

    shutil.rmtree(tmp_path / "2" / "state")
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* could be read: step 2"):
        checkpoint.Checkpointer(str(tmp_path), every=2, keep=5).restore(abstract, iterator())


def test_max_consecutive_nonfinite_must_be_positive(tmp_path):
    from muse_jax import config as config_lib
    from muse_jax import training

    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    config.train.max_consecutive_nonfinite = 0
    with pytest.raises(config_lib.ConfigError, match="max_consecutive_nonfinite must be >= 1, got 0"):
        training.train_and_evaluate(config, str(tmp_path))


def test_image_size_must_divide_into_tokens():
    from muse_jax import config as config_lib
    from muse_jax import tasks

    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    config.data.image_size = 66
    with pytest.raises(config_lib.ConfigError, match="image_size 66 is not divisible by the "
                                                      "tokenizer's downsampling factor 4"):
        tasks.create(config).check_config()
