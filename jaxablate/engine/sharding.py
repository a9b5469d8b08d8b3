"""Spreading a sweep over devices: one `Mesh` with one axis, the mask axis (or, for
`attribute`, the example axis) of every per-chunk array split over it, the weights, prompts
and replacement values replicated once.

    place = placement(devices=None)          # every local device; one device: no sharding
    model = place.replicate(model)           # once, before the chunks
    chunk = place.split(masks_chunk)         # leading axis divided among the devices

Every mask (or example) is computed whole on one device: the per-device programs are the
single-device program on fewer rows, so sharded results equal single-device ones up to float32
rounding of the changed shapes (the tests bound the difference at 1e-5; nothing is summed
across devices). The chunk size is rounded up to a multiple of the device count; the padding
masks are keep-all masks whose results are dropped.

Several hosts (`jax.distributed.initialize`): each process uses its own local devices, and the
results store divides the sweep's files among processes (`jaxablate.store`), so no two hosts
compute the same masks.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxablate.errors import InputError, InputTypeError

AXIS = "devices"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a sweep's arrays go: `mesh` None means one device and no sharding at all (the
    single-device program, untouched)."""

    mesh: Mesh | None = None

    @property
    def n_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    def round_up(self, size: int) -> int:
        """`size` rounded up to a multiple of the device count."""
        n = self.n_devices
        return -(-int(size) // n) * n

    def replicate(self, tree: Any) -> Any:
        """Every array leaf copied to every device (once; jit then reuses the copies)."""
        if self.mesh is None or tree is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def split(self, tree: Any) -> Any:
        """Every array leaf's leading axis divided among the devices (its length must be a
        multiple of the device count)."""
        if self.mesh is None or tree is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec(AXIS)))


def placement(devices: Any = None, mesh: Any = None) -> Placement:
    """The placement of a sweep: over `mesh` (a `jax.sharding.Mesh`; its devices are used
    along one axis), or `devices` (None: every local device; an int n: the first n local
    devices; or a list of `jax.Device`). One device gives `Placement(None)`: no sharding.

    Example:
        >>> placement(4).n_devices            # with XLA_FLAGS=--xla_force_host_platform_device_count=4
        4
    """
    if mesh is not None:
        if devices is not None:
            raise InputError("give devices= or mesh=, not both")
        if not isinstance(mesh, Mesh):
            raise InputTypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
        chosen = list(mesh.devices.flat)
    else:
        chosen = _devices(devices)
    if len(chosen) == 1:
        return Placement(None)
    return Placement(Mesh(chosen, (AXIS,)))


def _devices(devices: Any) -> list[Any]:
    local = jax.local_devices()
    if devices is None:
        return list(local)
    if isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise InputError(f"devices: expected a count in [1, {len(local)}] (the local "
                             f"devices: {len(local)} {local[0].platform.upper()}), got "
                             f"{devices}")
        return list(local[:int(devices)])
    if isinstance(devices, Sequence) and not isinstance(devices, str) and devices:
        chosen = list(devices)
        bad = [d for d in chosen if not isinstance(d, jax.Device)]
        if bad:
            raise InputTypeError(f"devices: expected jax devices (jax.devices()), got {bad[0]!r}")
        if len({d.id for d in chosen}) != len(chosen):
            raise InputError("devices: the same device is listed twice")
        if any(d.process_index != jax.process_index() for d in chosen):
            raise InputError("devices: only this process's devices (jax.local_devices()) can "
                             "run its sweep; other hosts take their share of a stored sweep")
        return chosen
    raise InputError(f"devices: expected None, a count or a list of jax devices, got "
                     f"{devices!r}")
