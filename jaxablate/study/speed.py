"""How fast this machine is right now, measured in well under a second before a study runs:
the float32 matmul rate of the default device at the model's sizes, and how loaded the host
is (compilation runs on the host, on one core, whatever the device).

    speed = measure_speed(model.cfg)      # Speed(flops=4.1e10, host=1.3, seconds=0.2)
    seconds = work_flops / speed.flops    # what `jaxablate.study.cost` does with it

Both are measured, not looked up, because the same machine differs from run to run: on the
2 shared CPU cores this was written on, other processes made the same study take 53 s in one
run and 150 s in another, almost all of the difference in compilation. A matmul timed just
before the plan sees the load the run that follows will; compilation is priced by the load
average (a 10 ms timing of one thread misses most of it: the scheduler hands a short burst
a whole core).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jaxablate.model.config import GPT2Config

# The matmul probe: the rows of a chunk of the model's sweeps, at most _PROBE_FLOPS per call
# (1.2 GFLOP: [256, 768] x [768, 3072], ~20 ms on 2 CPU cores) and at least _PROBE_MIN_ROWS.
# On those cores a d_model-64 matmul ran at 36 GFLOP/s over 512 rows and 85 over 8192,
# a d_model-768 one at 55-65 over 256 to 4096 rows.
_PROBE_FLOPS = 1.2e9
_PROBE_MIN_ROWS = 256


@dataclasses.dataclass(frozen=True)
class Speed:
    """The machine's speed now. flops: float32 FLOP/s of a `[rows, d_model] x [d_model,
    d_mlp]` matmul on the default device (median of 7 timed calls); host: how many times
    slower than alone compilation and host work run now (`host_load`, >= 1); seconds:
    what measuring took.

    Example:
        >>> Speed(flops=4e10, host=1.0, seconds=0.2).flops
        40000000000.0
    """

    flops: float
    host: float
    seconds: float


def host_load() -> float:
    """How many times slower than on an idle host compilation runs now: the processes
    running (the 1-minute load average) plus the compiling thread, per core, at least 1.
    Compiling a program is one thread's work: on 2 cores with a load of 8 it gets about
    2/9 of the machine, 4.5 times less than alone. 1.0 where the load average is not known
    (not POSIX)."""
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    except (AttributeError, OSError):
        return 1.0
    return max(1.0, (load + 1.0) / cores)


def matmul_rate(d_model: int, d_mlp: int, rows: int = 1024) -> float:
    """float32 FLOP/s of a jitted `[rows, d_model] x [d_model, d_mlp]` matmul on the default
    device: the median of 7 timed calls after one that compiles it.

    Example:
        >>> matmul_rate(768, 3072) / 1e9          # GPT-2 small on 2 CPU cores: about 40
    """
    a = jnp.ones((rows, d_model), jnp.float32)
    b = jnp.full((d_model, d_mlp), 1e-3, jnp.float32)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * rows * d_model * d_mlp / max(statistics.median(times), 1e-9)


def measure_speed(cfg: GPT2Config, rows: int = 4096) -> Speed:
    """The machine's `Speed` now, at the model's sizes (well under a second: one matmul
    compiled and run 8 times, and the host's load). rows: those of a typical chunk of the
    sweeps (masks x prompts x tokens), capped so that a call stays near 20 ms.

    Example:
        >>> speed = measure_speed(model.cfg, rows=6 * 8 * 32)
        >>> speed.flops / 1e9, speed.host                 # e.g. 58.1, 3.2
    """
    start = time.perf_counter()
    rows = int(max(_PROBE_MIN_ROWS, min(rows, _PROBE_FLOPS / (2 * cfg.d_model * cfg.d_mlp))))
    flops = matmul_rate(cfg.d_model, cfg.d_mlp, rows)
    host = host_load()
    return Speed(flops=flops, host=host, seconds=time.perf_counter() - start)
