"""Forward+backward time and peak memory of `ctlesion.ops.align_shift` against a plain reference.

Usage: python benchmarks/shift_speed.py [--device cpu|cuda] [--repeats N] [--shape 2,256,7,128,128]
                                        [--padding zero|keep] [--no-compile]

Variants, all timed in this one process with alternating repeats (median reported):

* reference: the straightforward formulation (SPEC section 5, AlignShift Algorithm 1), written
  below: allocate the output, copy all channels, then blend the two shifted groups into it
  (``torch.lerp``), autograd through it;
* align_shift: ``ctlesion.ops.align_shift`` (hand-written forward and adjoint backward);
* compiled: ``torch.compile(align_shift)`` (compile time reported separately; skipped with a
  message if compilation fails or with ``--no-compile``).

One repeat is ``out = f(x); torch.autograd.grad(out, x, g)``, which is the gradient of
sum(out * g) without materialising the product (that product and its backward would add the
same two output-sized temporaries to every variant).

Peak memory: on CUDA, torch.cuda.max_memory_allocated minus the memory held by the inputs. On
CPU, each variant runs once in its own fresh child process (multiprocessing spawn; the children
run side by side): the peak extra memory is the peak resident set size (VmHWM; ru_maxrss where
/proc is absent) after one forward+backward minus the same after creating the inputs; the child
warms the kernels up on a tiny tensor first. The number of output-sized allocations
(torch.profiler, profile_memory=True, allocations of at least the output's bytes) is counted
separately for the forward and the backward.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ctlesion.ops import align_shift
from ctlesion.ops.shift import shift_weight

MIB = 2**20
INTERVALS_MM = (0.8, 5.0)  # thinner than r (a = 1) and thicker (a = 0.4), cycled over the batch


def reference_align_shift(x, slice_interval_mm, ref_interval_mm=2.0, fold_div=8, padding="zero"):
    """Straightforward AlignShift: allocate, copy all channels, blend the shifted groups (autograd).

    Same arguments and result as ``ctlesion.ops.align_shift`` (SPEC section 5).
    """
    fold = x.shape[1] // fold_div
    a = shift_weight(slice_interval_mm, ref_interval_mm, x.shape[0], x)
    out = torch.empty_like(x)
    out.copy_(x)
    first, second = x[:, :fold], x[:, fold : 2 * fold]
    out[:, :fold, :-1] = torch.lerp(first[:, :, :-1], first[:, :, 1:], a)
    out[:, fold : 2 * fold, 1:] = torch.lerp(second[:, :, 1:], second[:, :, :-1], a)
    if padding == "zero":
        out[:, :fold, -1:] = (1 - a) * first[:, :, -1:]
        out[:, fold : 2 * fold, :1] = (1 - a) * second[:, :, :1]
    return out


def make_inputs(shape, device, dtype=torch.float32, seed=0):
    """x (requires grad), upstream gradient g (both ``shape``) and the (B,) intervals in mm."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    g = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    s = torch.tensor([INTERVALS_MM[i % len(INTERVALS_MM)] for i in range(shape[0])], dtype=dtype, device=device)
    return x, g, s


def forward_backward(fn, x, g, s, padding):
    """One forward and backward; returns (out, grad_x)."""
    out = fn(x, s, padding=padding)
    (grad_x,) = torch.autograd.grad(out, x, g)
    return out, grad_x


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, x, g, s, padding, device):
    """Seconds for one forward+backward (results dropped before the clock stops)."""
    sync(device)
    start = time.perf_counter()
    forward_backward(fn, x, g, s, padding)
    sync(device)
    return time.perf_counter() - start


def count_big_allocations(fn, x, g, s, padding, nbytes):
    """(forward, backward) counts of single allocations >= ``nbytes`` seen by torch.profiler."""
    counts = []
    with profile(activities=[ProfilerActivity.CPU, *cuda_activity(x.device.type)], profile_memory=True) as prof:
        out = fn(x, s, padding=padding)
    counts.append(sum(big_allocation(e, nbytes) for e in prof.events()))
    with profile(activities=[ProfilerActivity.CPU, *cuda_activity(x.device.type)], profile_memory=True) as prof:
        torch.autograd.grad(out, x, g)
    counts.append(sum(big_allocation(e, nbytes) for e in prof.events()))
    return tuple(counts)


def cuda_activity(device_type):
    return [ProfilerActivity.CUDA] if device_type == "cuda" else []


def big_allocation(event, nbytes):
    return event.self_cpu_memory_usage >= nbytes or event.self_device_memory_usage >= nbytes


def cpu_peak_child(name, shape, padding, queue):
    """Child process: peak extra resident memory (bytes) of one forward+backward of variant ``name``."""
    fn = variant_functions(compile_it=name == "compiled")[name]
    small_x, small_g, small_s = make_inputs((shape[0], 16, 3, 4, 4), "cpu")
    forward_backward(fn, small_x, small_g, small_s, padding)  # load kernels / thread pool / compile
    x, g, s = make_inputs(shape, "cpu")
    before = peak_rss_bytes()
    forward_backward(fn, x, g, s, padding)
    queue.put(peak_rss_bytes() - before)


def peak_rss_bytes():
    """This process's peak resident set size in bytes.

    VmHWM of /proc/self/status where available: ru_maxrss on Linux carries the parent's peak over
    fork + exec, so in a spawned child it can start at the parent's high-water mark.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def cpu_peaks(names, shape, padding):
    """Run :func:`cpu_peak_child` for each variant in its own fresh spawned process.

    The children run concurrently (each one's peak is its own address space's, so they do not
    disturb each other's figure). Returns {name: bytes, or None if that child failed}.
    """
    ctx = multiprocessing.get_context("spawn")
    queues = {name: ctx.Queue() for name in names}
    procs = {name: ctx.Process(target=cpu_peak_child, args=(name, shape, padding, queues[name])) for name in names}
    for proc in procs.values():
        proc.start()
    return {name: queues[name].get() if proc_ok(procs[name]) else None for name in names}


def proc_ok(proc):
    """Wait for ``proc``; True if it exited cleanly (its queue then holds one result)."""
    proc.join()
    return proc.exitcode == 0


def cuda_peak(fn, shape, padding, device):
    """Peak bytes allocated by one forward+backward beyond the inputs (torch.cuda statistics)."""
    x, g, s = make_inputs(shape, device)
    forward_backward(fn, x, g, s, padding)  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    forward_backward(fn, x, g, s, padding)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def variant_functions(compile_it):
    fns = {"reference": reference_align_shift, "align_shift": align_shift}
    if compile_it:
        fns["compiled"] = torch.compile(align_shift)
    return fns


def machine(device):
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    text = f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        text += f"; GPU: {torch.cuda.get_device_name(device)}"
    return text


def try_compile(fns, x, g, s, padding, device):
    """Compile (first call) and check the compiled variant; drop it with a message on failure."""
    if "compiled" not in fns:
        return None
    try:
        start = time.perf_counter()
        time_once(fns["compiled"], x, g, s, padding, device)
        seconds = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - report any compiler failure and go on without it
        print(f"torch.compile failed, skipping the compiled variant: {type(exc).__name__}: {exc}")
        del fns["compiled"]
        return None
    return seconds


def check_agreement(fns, x, g, s, padding):
    """All variants give the reference's output and gradient (float32 round-off)."""
    expected = forward_backward(fns["reference"], x, g, s, padding)
    for name, fn in fns.items():
        got = forward_backward(fn, x, g, s, padding)
        for want, have in zip(expected, got):
            torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5, msg=f"{name} disagrees with the reference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shape", default="2,256,7,128,128", help="B,C,D,H,W")
    parser.add_argument("--padding", default="zero", choices=("zero", "keep"))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    device, padding = args.device, args.padding

    started = time.perf_counter()
    print(machine(device))
    x, g, s = make_inputs(shape, device)
    out_bytes = x.numel() * x.element_size()
    print(f"shape {shape} float32 on {device}, padding {padding!r}, intervals {s.tolist()} mm, "
          f"output {out_bytes / MIB:.1f} MiB; forward + backward = out = f(x); autograd.grad(out, x, g)")

    fns = variant_functions(compile_it=not args.no_compile)
    compile_s = try_compile(fns, x, g, s, padding, device)
    if compile_s is not None:
        print(f"torch.compile: first call (compile + run) {compile_s:.1f} s")
    check_agreement(fns, x, g, s, padding)

    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, x, g, s, padding, device))
    allocations = {name: count_big_allocations(fn, x, g, s, padding, out_bytes) for name, fn in fns.items()}
    del x, g, s

    if device.startswith("cuda"):
        how = "torch.cuda.max_memory_allocated minus the inputs"
        peaks = {name: cuda_peak(fn, shape, padding, device) for name, fn in fns.items()}
    else:
        how = "peak RSS (VmHWM) of a fresh child process after one forward+backward minus after creating the inputs"
        peaks = cpu_peaks(list(fns), shape, padding)

    ref_ms = statistics.median(times["reference"]) * 1e3
    print(f"\nmedian of {args.repeats} alternating repeats; peak memory = {how}")
    print(f"{'variant':<12} {'fwd+bwd ms':>11} {'vs ref':>7} {'peak MiB':>9} {'x output':>9} {'allocs>=out fwd/bwd':>20}")
    for name in fns:
        ms = statistics.median(times[name]) * 1e3
        peak = peaks[name]
        peak_text = f"{peak / MIB:9.1f} {peak / out_bytes:9.2f}" if peak is not None else f"{'n/a':>9} {'n/a':>9}"
        fwd, bwd = allocations[name]
        print(f"{name:<12} {ms:11.1f} {ms / ref_ms:7.2f} {peak_text} {f'{fwd} / {bwd}':>20}")
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
