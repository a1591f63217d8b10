"""Test-wide setup: 8 simulated CPU devices (set before JAX is imported), no hub access, and
one persistent XLA compilation cache for the whole session."""
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# XLA flags that cut its compile time on CPUs: compiling is most of what the suite's tiny
# models cost, and every run of the suite, in-process or in a CLI it starts, compiles under
# them, so runs compared with each other are compiled alike. Optimisation level 0 and no
# expensive LLVM passes: tests/test_train.py, test_sr.py and test_transformer.py on 2 workers
# took 246 s with them against 302 s without (2026-12-05, 2-core AMD EPYC). The elemental IR
# emitter instead of XLA:CPU's MLIR fusion emitters: a tiny tokenizer and base run, no
# compilation cache (`benchmarks/xla_flags.py`, 2 fresh processes a setting), compiled in 11.0
# s against 20.2 s, its process 28.7 s of CPU against 44.8 s (2026-12-06, the same machine);
# the suite 1310 -> 1095 s (with the host-drawn random Inception of that commit). Not for the
# CLIs: at XLA's default level the emitter compiled the demo's base step twice as slowly (34-37
# s against 15-18 s) and ran it 11 % slower (0.236 s a step against 0.212;
# `benchmarks/xla_flags.py --workload=demo_base --steps=20,220 --sets=default,elemental`).
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# numpy's OpenBLAS on one thread, in the workers and every process they start: its idle threads
# spin (perf: blas_thread_server, 2.4 % of all CPU samples of a two-process tokenizer score)
# beside the two or three processes a test already runs on 2 cores.
# tests/test_multiprocess.py -k tokenizer_like: 160 / 161 s of user CPU by default, 140 / 151 s
# with it (2026-12-05, 2-core AMD EPYC).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Compiling is most of the suite's time, and many tests compile the same tiny programs (the
# shapes tokenizer and base model, in-process and in the CLIs they start). One cache for the
# session, made by the controlling process before the xdist workers start (they and every
# subprocess inherit the environment): a repeated tiny tokenizer-plus-base run took 61 s
# instead of 258 s, though the suite as a whole gained little (few tests compile exactly the
# same programs). A size limit turns on JAX's file lock: no worker reads a half-written entry.
# It also makes every write list the whole cache and read each entry's access time
# (jax/_src/lru_cache.py), so only programs that took a second or more to compile are kept: with
# every compile kept, eager code (a thousand one-op programs) slowed to a crawl late in the
# suite, tests/test_inception.py's parity test taking 318 s there against 36 s alone; beside a
# cache of 20,000 entries it wrote 2.7 s an entry for 10 minutes and did not finish, and with
# this threshold it ran in 32 s (2026-12-02, 2-core CPU).
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="muse_jax_tests_xla_cache_")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_SESSION_CACHE,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
                      JAX_COMPILATION_CACHE_MAX_SIZE=str(16 << 30))

# Each xdist worker, and everything it starts, on its own share of the cores while another
# worker runs; a worker left alone takes every core back. Unpinned, the two workers' processes
# each sized their thread pools (XLA's, torch's) for both cores and fought over them. Nine files
# (test_train, sr, sample_cli, uvit, amused_lora, inception, text_precompute, amused_import,
# vqgan) on 2 workers, alternating: 393 / 404 s unpinned, 347 / 352 s pinned, user CPU 679 / 700
# against 611 / 614 s (2026-12-07 23:05-23:35, 2-core AMD EPYC). The two-process tests take
# every core (`every_core`): pinned to one, test_multiprocess took 320 s against 260 s.
_HOST_CORES = sorted(os.sched_getaffinity(0))
if "MUSE_JAX_TEST_WORKERS" not in os.environ:  # the controlling process: one folder for all
    os.environ["MUSE_JAX_TEST_WORKERS"] = tempfile.mkdtemp(prefix="muse_jax_tests_workers_")

import pytest  # noqa: E402
from torch_refs import stub_meta_registrations  # noqa: E402

stub_meta_registrations()  # before anything imports transformers' models: see torch_refs.py
# The workers leave glibc's malloc as it is (muse_jax.host_memory): a worker lives through every
# test of its files and would keep the peak heap of the largest (9 GiB measured). The CLIs that
# tests start apply it, as they do for users (muse_jax.errors.run).

REPO = Path(__file__).resolve().parents[1]

# `run_module(..., env=ONE_FAST_DEVICE)`: one CPU device and FAST_COMPILE, for CLIs that need
# not see the 8 simulated devices.
ONE_FAST_DEVICE = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~20 s; part of `make test`")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and int(count) <= len(_HOST_CORES):
        _running_mark(worker).touch()
        os.sched_setaffinity(0, _HOST_CORES[int(worker.removeprefix("gw"))::int(count)])


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first, each file whole and in its own order. `make test`
    hands whole files to its workers in this order (`--dist loadfile --no-loadscope-reorder`),
    so the last files handed out are short ones and neither worker is left alone with a long
    one at the end. xdist's own order, most tests first, put files of one long test (the
    paper recipe's, 80-105 s; the notebook's) last: one worker ran on alone for 63 s at the end of
    a 1162 s suite, against 23 s with this order (2026-12-08, 2-core AMD EPYC)."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # a stable sort: files stay together


def pytest_runtest_setup(item):
    """A pinned worker whose peers have finished takes every core for the tests it has left."""
    if len(os.sched_getaffinity(0)) < len(_HOST_CORES) and \
            not any(p != _running_mark(os.environ["PYTEST_XDIST_WORKER"])
                    for p in Path(os.environ["MUSE_JAX_TEST_WORKERS"]).iterdir()):
        os.sched_setaffinity(0, _HOST_CORES)  # the other workers are done


def pytest_unconfigure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        _running_mark(worker).unlink(missing_ok=True)
    else:  # the controller, or a run without xdist
        shutil.rmtree(os.environ["MUSE_JAX_TEST_WORKERS"], ignore_errors=True)
    if _SESSION_CACHE is not None:  # the process that made it (the controller under xdist)
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def _running_mark(worker: str) -> Path:
    return Path(os.environ["MUSE_JAX_TEST_WORKERS"]) / worker


@pytest.fixture
def every_core():
    """The test, and what it starts, on every core of the host, not its worker's share."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _HOST_CORES)
    yield
    os.sched_setaffinity(0, own)


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600,
               check: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repo root, as a user would."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result


def tensorboard_events(logdir):
    """TensorBoard's own reader of the event files in `logdir`, loaded."""
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    return events


@pytest.fixture
def repo() -> Path:
    return REPO


def one_device() -> list:
    """The first of the 8 simulated devices, for `training.train_and_evaluate(..., devices=)`.

    Runs that are inputs to a test, not a test of sharding, train on one device: the same
    programs over 8 simulated CPU devices took about twice as long (a tiny tokenizer and base
    run: 666 s against 363 s on the loaded 2-core machine). Tests of sharding keep all 8."""
    import jax
    return jax.devices()[:1]


def one_device_mesh():
    """A ("data", "fsdp", "tensor") mesh of 1 x 1 x 1 over `one_device()`, for tests that load a
    task or shard arrays without testing sharding."""
    from muse_jax import parallel
    return parallel.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, one_device())


@pytest.fixture(scope="session")
def tiny_runs_root(tmp_path_factory) -> Path:
    """Where this worker's shared tiny runs live: root/tokenizer and root/base."""
    return tmp_path_factory.mktemp("tiny_runs")


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_runs_root) -> Path:
    """A tiny shapes VQGAN (configs/vqgan_shapes.py:tiny, 2 steps) for base-stage tests."""
    from muse_jax import config as config_lib
    from muse_jax import training

    workdir = tiny_runs_root / "tokenizer"
    config = config_lib.load_file(config_lib.CONFIG_DIR / "vqgan_shapes.py", "tiny")
    config.train.num_steps = 2
    training.train_and_evaluate(config, str(workdir), devices=one_device())
    return workdir


@pytest.fixture(scope="session")
def tiny_base(tokenizer_dir) -> Path:
    """A tiny base run (configs/base_shapes.py:tiny, 2 steps) on `tokenizer_dir`, beside it.

    One for every test that samples, evaluates or fine-tunes a base run without training its
    own: each such run costs a train step and an evaluation to trace and compile. Tests may read
    it and copy it, never change it."""
    from muse_jax import config as config_lib
    from muse_jax import training

    workdir = tokenizer_dir.parent / "base"
    config = config_lib.load_file(config_lib.CONFIG_DIR / "base_shapes.py", "tiny")
    config.tokenizer.workdir = str(tokenizer_dir)
    config.train.num_steps = 2
    training.train_and_evaluate(config, str(workdir), devices=one_device())
    return workdir


@pytest.fixture(scope="session")
def quality_runs(tiny_base) -> Path:
    """What `evaluate --eval=fid_clip / tokenizer` needs: the shared tiny tokenizer and base
    run (root/tokenizer, root/base), a tiny random CLIPModel directory whose cosines are
    positive (root/clip) and 16 held-out shapes captions (root/prompts.txt)."""
    from muse_jax.data import shapes
    from test_clip_score import _tiny_clip
    from test_text_clip import write_tokenizer

    root = tiny_base.parent
    tokenizer, vocab_size = write_tokenizer(root / "clip_tokenizer", "!")
    _tiny_clip(root / "clip", tokenizer, vocab_size, -1.0)
    source = shapes.ShapesSource(image_size=32, split="eval", seed=0)
    (root / "prompts.txt").write_text("\n".join(source.get_caption(i) for i in range(16)))
    return root
