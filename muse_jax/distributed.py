"""Joining a multi-process run: the flags of `train` and `evaluate`, defined once, and the join.

Every process of a run (one a host) starts the same command; `initialize` makes it one JAX
program over all their devices before anything touches a device. --distributed lets JAX find
the coordinator itself, as on TPU VMs and pod slices (launch/tpu.sh adds it to `train`); on CPU
or GPU clusters the coordinator flags name it. Single-process runs give none of them.
"""
from __future__ import annotations

from absl import flags, logging

from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def define() -> None:
    flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() "
                      "first (coordinator found automatically on TPU pods; see launch/).")
    flags.DEFINE_string("coordinator_address", None, "Multi-process on CPU/GPU clusters: "
                        "host:port of process 0 (with --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all.")
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's index, 0..n-1.")


def initialize_from_flags() -> bool:
    """`initialize` with the flags `define` made."""
    return initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes,
                      FLAGS.process_id)


def initialize(auto: bool, coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> bool:
    """Joins a multi-process run before JAX touches a device; True if this is one.

    `auto` (--distributed) lets JAX find the coordinator itself, as on TPU VMs and pod slices.
    The explicit flags are for CPU or GPU clusters; on CPUs the cross-process collectives
    then go through gloo. Processes other than 0 log warnings and errors only.
    """
    import jax

    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise UserError("--coordinator_address, --num_processes and --process_id go together")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process_id must lie in 0..{num_processes - 1} with "
                            f"--num_processes={num_processes}, got {process_id}")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if process_id > 0:
            logging.set_verbosity(logging.WARNING)
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()
    else:
        return False
    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)
    logging.info("process %d of %d; %d local of %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
