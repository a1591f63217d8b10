"""The CLIs split a CPU host into one JAX device a core (muse_jax/cpu_devices.py)."""
import jax
import pytest

from conftest import FAST_COMPILE, run_module
from muse_jax import cpu_devices, parallel

CPU = {"JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("cores,devices", [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_count_is_a_power_of_two_up_to_eight(cores, devices):
    assert cpu_devices.count(cores) == devices


def test_devices_for_leaves_a_chosen_count_and_accelerators_alone():
    assert cpu_devices.devices_for(CPU, 2) == 2
    assert cpu_devices.devices_for({"JAX_PLATFORMS": "cpu,tpu"}, 6) == 4
    assert cpu_devices.devices_for(CPU, 1) is None  # one core: nothing to split
    assert cpu_devices.devices_for({**CPU, "JAX_NUM_CPU_DEVICES": "1"}, 2) is None
    flags = {**CPU, "XLA_FLAGS": f"--xla_force_host_platform_device_count=3 {FAST_COMPILE}"}
    assert cpu_devices.devices_for(flags, 2) is None
    assert cpu_devices.devices_for({"JAX_PLATFORMS": "tpu"}, 8) is None
    assert cpu_devices.devices_for({"JAX_PLATFORMS": "cuda,cpu"}, 8) is None


def test_an_indivisible_batch_names_the_one_device_setting():
    mesh = parallel.create_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    with pytest.raises(parallel.ShardingError, match=r"batch_size 7 .* JAX_NUM_CPU_DEVICES=1"):
        parallel.check_batch_size(7, mesh, 1)
    assert parallel.check_batch_size(8, mesh, 1) == 8


def _dry_run_line(result) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()[0]  # "dry run: ..., 2 devices, mesh data=2 fsdp=1 ..."


def test_a_cli_splits_the_host_unless_a_count_is_chosen(monkeypatch, every_core):
    """The dry run prints the mesh of the devices the CLI sees: one a core by default (the
    machine's own count, as `cpu_devices.count` gives it), one where JAX_NUM_CPU_DEVICES says so."""
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    args = ("--config=configs/vqgan_shapes.py:tiny", "--workdir=unused", "--dry_run")
    split = run_module("muse_jax.train", *args, env={"XLA_FLAGS": FAST_COMPILE})
    expected = cpu_devices.count(cpu_devices.usable_cores())
    assert f"{expected} devices, mesh data={expected} " in _dry_run_line(split)
    one = run_module("muse_jax.train", *args,
                     env={"XLA_FLAGS": FAST_COMPILE, "JAX_NUM_CPU_DEVICES": "1"})
    assert "1 device, mesh data=1 " in _dry_run_line(one)
