"""Device mesh, the one logical-axis rules table, and sharded state creation.

Every parameter in muse_jax names its dimensions with logical axes
(`nn.with_logical_partitioning`); `LOGICAL_AXIS_RULES` below is the only place
that maps those names to the mesh axes `data`, `fsdp` and `tensor`. Changing how
a model is sharded means changing this table, not the model.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from muse_jax import compile_options, cpu_devices
from muse_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes). Names absent from the table are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    # transformer / text-encoder weights
    ("embed", "fsdp"),  # model width
    ("text_embed", None),  # input width of the text-embedding projection
    ("mlp", "tensor"),  # feed-forward hidden width
    ("heads", "tensor"),  # attention heads
    ("kv", None),  # per-head width
    ("vocab", "tensor"),  # output classes / token vocabulary
    ("relpos_buckets", None),  # T5 relative-position buckets
    ("lora_rank", None),  # LoRA adapters' rank (models/lora.py): small, never split
    # convolution weights (kernel layout HWIO)
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    # vector-quantiser codebook
    ("codebook", "fsdp"),
    ("code_dim", None),
)


class ShardingError(UserError):
    """A mesh or batch that does not fit the devices; the message has the numbers."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves a `{data, fsdp, tensor}` config (one entry may be -1) against the device count."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ShardingError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ShardingError(
                f"mesh: {num_devices} devices cannot be split with fixed axes of product {known} "
                f"({dict(zip(MESH_AXES, sizes))})")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ShardingError(
            f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available")
    return tuple(sizes)


def create_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types, which Linen's logical rules expect."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def _fit_spec(shape: tuple[int, ...], spec: P, mesh: jax.sharding.Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide (e.g. 3 RGB input channels over 2 devices)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for name in names:
            size = mesh.shape[name] * math.prod(mesh.shape[k] for k in kept)
            if dim % size == 0:
                kept.append(name)
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return P(*fitted)


def logical_shardings(abstract_boxed: Any, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for an (abstract) pytree whose leaves may be logically partitioned.

    The result has the structure of the unboxed tree; unannotated leaves are replicated.
    """
    def leaf_sharding(leaf):
        if isinstance(leaf, nn.Partitioned) and not hasattr(leaf.value, "shape"):
            return leaf.value  # an empty node, e.g. optax's MaskedNode for frozen params
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec, shape = nn.logical_to_mesh_axes(leaf.names, rules), leaf.value.shape
        elif isinstance(leaf, nn.Partitioned):
            spec, shape = P(*leaf.names), leaf.value.shape
        else:
            spec, shape = P(), leaf.shape
        return NamedSharding(mesh, _fit_spec(tuple(shape), spec, mesh))

    return jax.tree.map(leaf_sharding, abstract_boxed,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _rank_matched(init_fn: Callable[..., Any]) -> Callable[..., Any]:
    """`init_fn` with the boxes whose axis names do not fit their array's rank taken off.

    An optimiser state derived leaf by leaf from boxed parameters inherits each parameter's
    names even where its shape is not the parameter's: Adafactor's factored second moments
    (a row and a column vector of a matrix) keep the matrix's two names. Such a leaf has no
    sharding its names describe; it is small and stays replicated.
    """
    def unmatched(leaf) -> bool:
        return (isinstance(leaf, nn.Partitioned) and hasattr(leaf.value, "ndim")
                and len(leaf.names) != leaf.value.ndim)

    def fitted(*args):
        return jax.tree.map(lambda x: x.value if unmatched(x) else x, init_fn(*args),
                            is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return fitted


def create_sharded(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh, *args,
                   rules=LOGICAL_AXIS_RULES) -> tuple[Any, Any]:
    """Runs `init_fn(*args)` under jit so every array is born on its shard; returns (tree, shardings).

    `init_fn` may return logically partitioned (boxed) leaves; the result is unboxed.
    """
    init_fn = _rank_matched(init_fn)
    with nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_shardings(abstract, mesh, rules)
        with jax.set_mesh(mesh):
            tree = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings,
                           compiler_options=compile_options.run_once())(*args)
    return tree, shardings


def abstract_sharded(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh, *args,
                     rules=LOGICAL_AXIS_RULES) -> Any:
    """`jax.ShapeDtypeStruct`s with shardings for what `init_fn` would build; nothing is allocated."""
    with nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(_rank_matched(init_fn), *args)
        shardings = logical_shardings(abstract, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(abstract), shardings)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data` x `fsdp`, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Every device holds the whole array: frozen weights, scalars, small outputs."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, process_count: int) -> int:
    """Returns the per-process batch, or raises naming the numbers that do not divide."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        on_cpu = mesh.devices.flat[0].platform == "cpu"
        raise ShardingError(
            f"batch_size {global_batch} is not divisible by data x fsdp = {shards} mesh shards"
            + (f"; {cpu_devices.HINT}" if on_cpu else ""))
    if global_batch % process_count:
        raise ShardingError(
            f"batch_size {global_batch} is not divisible by the process count {process_count}")
    return global_batch // process_count


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """Assembles process-local numpy batches into global jax.Arrays sharded by `sharding`."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def put(tree: Any, shardings: Any) -> Any:
    """Host values (numpy, or arrays of this process) placed as global arrays with `shardings`.

    `jax.device_put` cannot do this in a multi-process run: it refuses arrays committed to a
    device (a cross-host transfer) and checks numpy inputs equal across processes with one
    collective a leaf. Here each process cuts its own shards from its copy, so every process
    must pass the same values (frozen weights read from the same files). `shardings` is one
    sharding for every leaf or a tree of them.
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def place(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, tree, shardings)


def per_device_bytes(abstract: Any) -> int:
    """Bytes the largest-loaded device holds for a tree of sharded ShapeDtypeStructs."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(abstract):
        shard_shape = leaf.sharding.shard_shape(leaf.shape)
        nbytes = math.prod(shard_shape) * jnp.dtype(leaf.dtype).itemsize
        for device in leaf.sharding.device_set:
            totals[device] = totals.get(device, 0) + nbytes
    return max(totals.values()) if totals else 0
