"""attnkit against what a user would pick instead, in one process on the same inputs.

    python -m attnkit.bench            # the README's table (several minutes on 2 cores)
    python -m attnkit.bench --quick    # small shapes, a smoke test

Each row times attnkit and its peer alternately (warm-up, then the median of --reps runs) and
prints the ratio peer time / attnkit time: above 1 means attnkit is faster. For the sparse
modules it also prints the peak memory one forward adds, each side in a child process of its own. Peers: PyTorch's
``scaled_dot_product_attention`` (ATen's CPU flash attention), PyTorch's ``flex_attention``
compiled for the CPU (forward only: it has no CPU backward), and the reference library's module
for the sparse mechanisms when attnhut is installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

import attnkit


def median_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired(ours: Callable, peer: Callable, reps: int):
    """Medians of alternating runs (ours, peer, ours, ...) so drift hits both alike."""
    ours(), peer()
    a, b = [], []
    for _ in range(reps):
        t0 = time.perf_counter(); ours(); a.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); peer(); b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


class Table:
    def __init__(self):
        self.rows: List[tuple] = []

    def add(self, row: str, peer: str, ours_s: float, peer_s: Optional[float]):
        self.rows.append((row, peer, ours_s, peer_s))
        if peer_s is None:
            print(f"| {row} | {peer} | {ours_s * 1e3:.1f} | not run | |", flush=True)
        else:
            print(f"| {row} | {peer} | {ours_s * 1e3:.1f} | {peer_s * 1e3:.1f} | "
                  f"**{peer_s / ours_s:.2f}x** |", flush=True)


def qkv(B, Hq, Hkv, Tq, Tk, D, dtype, grad=False):
    g = torch.Generator().manual_seed(0)
    mk = lambda H, T: torch.randn(B, H, T, D, generator=g).to(dtype).requires_grad_(grad)
    return mk(Hq, Tq), mk(Hkv, Tk), mk(Hkv, Tk)


def dense_rows(t: Table, shapes, reps):
    for (H, T, D) in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for causal in (False, True):
                name = f"H{H} T{T} D{D} {'causal' if causal else 'full'} {str(dtype)[6:]}"
                q, k, v = qkv(1, H, H, T, T, D, dtype)
                with torch.no_grad():
                    o, p = paired(lambda: attnkit.flex_attention(q, k, v, causal=causal),
                                  lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                  reps)
                t.add(f"{name} fwd", "SDPA", o, p)
                q, k, v = qkv(1, H, H, T, T, D, dtype, grad=True)
                dout = torch.randn(1, H, T, D).to(dtype)

                def step(fn):
                    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

                o, p = paired(step(lambda q, k, v: attnkit.flex_attention(q, k, v, causal=causal)),
                              step(lambda q, k, v: F.scaled_dot_product_attention(
                                  q, k, v, is_causal=causal)), reps)
                t.add(f"{name} fwd+bwd", "SDPA", o, p)


def compiled_flex():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        return torch.compile(flex_attention, dynamic=False), create_block_mask
    except Exception as e:  # noqa: BLE001 - report, don't fail the other rows
        print(f"(torch flex_attention unavailable: {e})")
        return None, None


def flex_rows(t: Table, T_causal, T_window, window, reps):
    flex, cbm = compiled_flex()
    if flex is None:
        return
    for T, win in ((T_causal, None), (T_window, window)):
        q, k, v = qkv(1, 8, 8, T, T, 64, torch.float32)
        if win is None:
            mod = lambda b, h, qi, ki: qi >= ki
            ours = lambda: attnkit.flex_attention(q, k, v, causal=True)
            name = f"causal H8 T{T} D64"
        else:
            mod = lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= win)
            ours = lambda: attnkit.flex_attention(q, k, v, causal=True, window_left=win)
            name = f"window {win} H8 T{T} D64"
        bm = cbm(mod, 1, 1, T, T, device="cpu")
        peer = lambda: flex(q, k, v, block_mask=bm)
        with torch.no_grad():
            try:
                o, p = paired(ours, peer, reps)
            except Exception as e:  # noqa: BLE001
                print(f"| {name} fwd | compiled flex_attention | failed: {type(e).__name__}: {e} |")
                continue
        t.add(f"{name} fwd", "torch flex_attention (compiled)", o, p)


def decode_rows(t: Table, Tk, reps):
    # One new token against a Tk-long cache, GQA 32:8, through each library's attention call.
    q, k, v = qkv(1, 32, 8, 1, Tk, 128, torch.float32)
    with torch.no_grad():
        o, p = paired(lambda: attnkit.flex_attention(q, k, v),
                      lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps)
    t.add(f"decode Hq32 Hkv8 Tk{Tk} D128", "SDPA", o, p)


# The sparse modules, as attnhut builds them (dim 256, 8 heads, causal where it is an option).
SPARSE_REFS = {
    "DeepSeekSparseAttention":
        lambda L: L.DeepSeekSparseAttention(256, 8, top_k=64, causal=True),
    "MiniMaxSparseAttention":
        lambda L: L.MiniMaxSparseAttention(256, 8, 2, block_size=64, top_k=8, causal=True),
    "CompressedSparseAttention": lambda L: L.CompressedSparseAttention(256, 8, top_k=16),
}


def _status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1e3
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_case(spec: str) -> None:
    """Child process: the peak memory one forward adds, for attnkit or the reference.
    (Not getrusage's ru_maxrss: Linux carries it over fork and exec from the parent.)"""
    import attnhut
    from attnkit import compat
    side, name, T = spec.split(":")
    torch.manual_seed(0)
    ref = SPARSE_REFS[name](attnhut).eval()
    module = compat.from_reference(ref).eval() if side == "attnkit" else ref
    x = torch.randn(1, int(T), 256)
    with torch.no_grad():
        module(x[:, :64])  # first-call costs (thread pools, BLAS buffers) before the baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident size (VmHWM) to the current one
        base = _status_mb("VmRSS")
        module(x)
    print(_status_mb("VmHWM") - base)


def peak_mb(side: str, name: str, T: int) -> float:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "attnkit.bench", "--memory-case",
                          f"{side}:{name}:{T}"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def sparse_rows(t: Table, seqs, reps, ref_max_T):
    """The sparse modules against attnhut's. The references are masked dense attention, O(T^2)
    in time and memory, so above ref_max_T only attnkit runs and the reference's memory is
    extrapolated (x (T / T_measured)^2) from its largest measured length."""
    try:
        import attnhut
    except ImportError:
        print("(attnhut not installed: the sparse rows are skipped)")
        return
    from attnkit import compat
    version = getattr(attnhut, "__version__", "")
    memory, ref_peak = [], {}
    for T in seqs:
        x = torch.randn(1, T, 256)
        run_ref = T <= ref_max_T
        peer = f"attnhut {version}" if run_ref else f"attnhut {version} (O(T^2): not run)"
        for name, make_ref in SPARSE_REFS.items():
            torch.manual_seed(0)
            ref = make_ref(attnhut).eval()
            ours = compat.from_reference(ref).eval()
            xg = x.clone().requires_grad_()
            fwd = lambda: ours(x)
            step = lambda: ours(xg).sum().backward()
            with torch.no_grad():
                o, p = (paired(fwd, lambda: ref(x), reps) if run_ref
                        else (median_time(fwd, reps), None))
            t.add(f"{name} T{T} fwd", peer, o, p)
            o, p = (paired(step, lambda: ref(xg).sum().backward(), reps) if run_ref
                    else (median_time(step, reps), None))
            t.add(f"{name} T{T} train step", peer, o, p)
            if run_ref:
                ref_peak[name] = (T, peak_mb("reference", name, T))
                ref_mb, how = ref_peak[name][1], ""
            else:
                T0, mb0 = ref_peak.get(name, (None, None))
                ref_mb = mb0 * (T / T0) ** 2 if T0 else None
                how = f" (est. from T{T0})" if T0 else ""
            memory.append((f"{name} T{T}", peak_mb("attnkit", name, T), ref_mb, how))
    print("\n| forward, peak memory added | attnkit MB | attnhut MB | ratio |\n|---|---|---|---|")
    for row, ours_mb, ref_mb, how in memory:
        if ref_mb is None:
            print(f"| {row} | {ours_mb:.0f} | not run | |")
        else:
            print(f"| {row} | {ours_mb:.0f} | {ref_mb:.0f}{how} | "
                  f"**{ref_mb / max(ours_mb, 1e-9):.0f}x** |")


def main(argv: Optional[list] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--only", default="dense,flex,decode,sparse")
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: one child process
    a = ap.parse_args(argv)
    if a.memory_case:
        _memory_case(a.memory_case)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    only = set(a.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratio = peer / attnkit "
          f"(above 1: attnkit faster), medians of {a.reps}")
    print("| row | peer | attnkit ms | peer ms | ratio |\n|---|---|---|---|---|")
    t = Table()
    if a.quick:
        shapes, tc, tw, win, tk, seqs, ref_max = [(2, 256, 32)], 256, 512, 32, 1024, [128, 256], 128
    else:
        shapes, tc, tw, win, tk = [(8, 4096, 128), (8, 2048, 64)], 4096, 16384, 256, 32768
        seqs, ref_max = [4096, 16384], 4096
    if "dense" in only:
        dense_rows(t, shapes, a.reps)
    if "flex" in only:
        flex_rows(t, tc, tw, win, a.reps)
    if "decode" in only:
        decode_rows(t, tk, a.reps)
    if "sparse" in only:
        sparse_rows(t, seqs, a.reps, ref_max)


if __name__ == "__main__":
    main()
