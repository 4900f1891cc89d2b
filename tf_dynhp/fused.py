"""The fused CPU kernel of the per-example hard-concrete input gates (`L0Dense` training step).

Composed of TensorFlow ops, one gated layer's training step makes about twenty
memory-bound passes over (batch, gates) floats, and TensorFlow's uniform noise
(scalar Philox) is as slow as all of them together: at batch 512 on the
784-300-100 MLP the gates cost more than Keras' whole dense step
(`tools/benchmark_step.py`, part 3). `csrc/hard_concrete_gate.cc` does the same
work in one pass forward (noise, Eq. 2 sample, stretch and clip, `x * z`, the
open counts of Eq. 6) and one backward (the gradient of the gate logits), with
counter-based noise computed in place (`noise_reference` gives the same bits in
NumPy).

The kernel is compiled on first use with the C++ compiler (`$CXX`, else `g++`)
against the installed TensorFlow's headers (`tf.sysconfig`), for this CPU
(`-march=native`), into a cache folder (`$TF_DYNHP_KERNEL_DIR`, else
`~/.cache/tf_dynhp/kernels`) keyed by the source, the TensorFlow version, the
compiler and the CPU: about 10 s once, then loaded. `tf_dynhp.fit(...,
gate_kernel="auto")` uses it when it builds and falls back to the TensorFlow-op
path (`gates.gated_product`) otherwise, logging why.

The two paths draw different noise, so a run gives the same numbers again only
with the same `gate_kernel` (and, for "fused", on a CPU of the same kind: the
kernel is compiled for it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "GATE_KERNELS",
    "KernelBuildError",
    "build_kernel",
    "gated_product_fused",
    "load_kernel",
    "noise_reference",
    "resolve_gate_kernel",
]

_LOG = logging.getLogger("tf_dynhp")
SOURCE = Path(__file__).with_name("csrc") / "hard_concrete_gate.cc"
#: Accepted values of `gate_kernel`: the fused kernel, TensorFlow ops, or the first that works.
GATE_KERNELS = ("auto", "fused", "tf")
_MASK64 = (1 << 64) - 1


class KernelBuildError(RuntimeError):
    """The fused gate kernel could not be compiled or loaded (the message says why)."""


def _cpu_signature() -> str:
    """What `-march=native` depends on: the CPU's model name and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


def _build_flags() -> tuple[list[str], list[str]]:
    import tensorflow as tf

    # -mno-avx512fp16: TensorFlow's bundled Eigen headers do not compile with it (GCC 12).
    opt = ["-O3", "-march=native", "-mno-avx512fp16", "-fno-math-errno", "-fPIC", "-shared", "-w"]
    return opt + list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("TF_DYNHP_KERNEL_DIR"):
        return Path(os.environ["TF_DYNHP_KERNEL_DIR"])
    return Path.home() / ".cache" / "tf_dynhp" / "kernels"


def build_kernel(cache_dir: str | os.PathLike | None = None, announce: Callable[[str], Any] | None = None) -> Path:
    """Compiles `csrc/hard_concrete_gate.cc` (once per source, TensorFlow, compiler and CPU).

    Args:
        cache_dir: folder for the compiled library; default `$TF_DYNHP_KERNEL_DIR`,
            else `~/.cache/tf_dynhp/kernels`.
        announce: called with a one-line message before a compilation starts
            (e.g. `print`); the library is otherwise silent.

    Returns:
        Path of the shared library.

    Raises:
        KernelBuildError: no compiler, an unwritable cache folder, or a failed
            compilation (with the compiler's last lines).
    """
    import tensorflow as tf

    cxx = _compiler()
    if cxx is None:
        raise KernelBuildError(
            f"No C++ compiler found (looked for $CXX, else g++; CXX={os.environ.get('CXX')!r}). "
            "Install one (Debian: apt-get install g++) or use gate_kernel='tf'."
        )
    compile_flags, link_flags = _build_flags()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelBuildError(f"The C++ compiler {cxx} does not run: {err}") from err
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in [SOURCE.read_text(), tf.__version__, version, " ".join(compile_flags + link_flags), _cpu_signature()]
        )
    ).hexdigest()[:16]
    folder = _cache_dir(cache_dir)
    target = folder / f"hard_concrete_gate-{key}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
    except OSError as err:
        raise KernelBuildError(f"Cannot write the kernel cache folder {folder}: {err}") from err
    cmd = [cxx, str(SOURCE), "-o", tmp, *compile_flags, *link_flags]
    if announce is not None:
        announce(f"tf_dynhp: compiling the fused gate kernel for this CPU into {target} (once, ~10 s)")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as err:
        os.unlink(tmp)
        raise KernelBuildError(f"Compiling {SOURCE.name} failed: {err}") from err
    if done.returncode != 0:
        os.unlink(tmp)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise KernelBuildError(f"Compiling {SOURCE.name} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same file
    return target


_LOADED: dict[str, Any] = {}  # per cache folder: the op module loaded in this process


def load_kernel(cache_dir: str | os.PathLike | None = None, announce: Callable[[str], Any] | None = None) -> Any:
    """Builds (if needed) and loads the kernel; returns the op module (loaded once per process:
    the training step's trace calls this for every gated layer).

    Raises:
        KernelBuildError: as `build_kernel`, or the library does not load.
    """
    folder = str(_cache_dir(cache_dir))
    if folder in _LOADED:
        return _LOADED[folder]
    import tensorflow as tf

    path = build_kernel(cache_dir, announce)
    try:
        module = tf.load_op_library(str(path))
    except Exception as err:  # tf.errors.NotFoundError and friends
        raise KernelBuildError(f"Loading {path} failed: {err}") from err
    _LOADED[folder] = module
    return module


_FAILED: dict[str, str] = {}  # per cache folder: why the kernel did not build (not retried in this process)


def _availability(announce: Callable[[str], Any] | None = None) -> str | None:
    """None when the kernel loads, else the reason."""
    folder = str(_cache_dir(None))
    if folder in _FAILED:
        return _FAILED[folder]
    try:
        load_kernel(announce=announce)
    except KernelBuildError as err:
        _FAILED[folder] = str(err)
        return str(err)
    return None


def resolve_gate_kernel(gate_kernel: str, announce: Callable[[str], Any] | None = None) -> str:
    """Resolves `gate_kernel` ("auto", "fused" or "tf") to the path used: "fused" or "tf".

    `announce` (e.g. `print`) hears of a compilation before it starts.

    Raises:
        ValueError: an unknown name.
        KernelBuildError: "fused" asked for and the kernel does not build.
    """
    if gate_kernel not in GATE_KERNELS:
        raise ValueError(
            f"Invalid value received for argument `gate_kernel`. Expected one of {list(GATE_KERNELS)}. "
            f"Received: gate_kernel={gate_kernel!r}"
        )
    if gate_kernel == "tf":
        return "tf"
    reason = _availability(announce)
    if reason is None:
        return "fused"
    if gate_kernel == "fused":
        raise KernelBuildError(f"gate_kernel='fused' asked for, but the kernel is not available: {reason}")
    _LOG.warning("tf_dynhp: the fused gate kernel is not available, using TensorFlow ops (slower): %s", reason)
    return "tf"


def gated_product_fused(inputs, key, log_alpha, temperature: float = 2.0 / 3.0, limit_l: float = -0.1, limit_r: float = 1.1):
    """`inputs * z` for per-example hard-concrete gates drawn from `key`, and the open counts.

    The fused counterpart of `gates.gated_product` (same distribution, other noise):
    z as `gates.sample_gates(u, log_alpha, ...)` for the counter-based uniforms u of
    `noise_reference(key, batch, gates)`. Gradients: `d(x z)/dx = z`, and for the
    gate logits `(r - l) / T * sum_i upstream x s (1 - s)` where the clip did not act.

    Args:
        inputs: (batch, gates) float32 tensor.
        key: (2,) int64 noise key (a Keras `SeedGenerator.next()`).
        log_alpha: (gates,) gate logits.
        temperature, limit_l, limit_r: see `gates.prob_open`.

    Returns:
        `(gated, open_count)`: `inputs * z` (batch, gates) and, per gate, the number of
        examples whose sample is non-zero (gates,), as float32.

    Raises:
        KernelBuildError: the kernel is not available.
    """
    import tensorflow as tf

    module = load_kernel()
    attrs = {"temperature": float(temperature), "limit_l": float(limit_l), "limit_r": float(limit_r)}
    key = tf.cast(key, tf.int64)

    @tf.custom_gradient
    def _gated(x, la):
        gated, z, open_count = module.tf_dynhp_hard_concrete_gate(x, la, key, **attrs)

        def grad(upstream, _upstream_count):
            d_la = module.tf_dynhp_hard_concrete_gate_grad(x, z, upstream, **attrs)
            return upstream * z, d_la

        return (gated, open_count), grad

    return _gated(tf.convert_to_tensor(inputs, tf.float32), tf.cast(log_alpha, tf.float32))


# ----------------------------------------------------------------------------- NumPy reference
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(16)
    return x


def noise_reference(key, batch: int, gates: int) -> np.ndarray:
    """The kernel's uniform noise for `key`, (batch, gates) float64, in NumPy (see the C++ header).

    `K = splitmix64(splitmix64(k0) + k1)`; element (i, j) has counter `c = i * gates + j`,
    `h = lowbias32(lowbias32(c ^ K_lo) + K_hi)` and `u = (2 * (h >> 9) + 1) / 2**24`.
    """
    k0, k1 = (int(v) & _MASK64 for v in np.asarray(key).reshape(-1)[:2])
    stream = _splitmix64((_splitmix64(k0) + k1) & _MASK64)
    lo, hi = np.uint64(stream & 0xFFFFFFFF), np.uint64(stream >> 32)
    counter = np.arange(batch * gates, dtype=np.uint64).reshape(batch, gates)
    h = _lowbias32((_lowbias32(counter ^ lo) + hi) & np.uint64(0xFFFFFFFF))
    return (2.0 * (h >> np.uint64(9)).astype(np.float64) + 1.0) / 2.0**24
