"""Launch geometry and path selection of the cupy backend's kernels (pure Python, no CuPy).

Kept apart from :mod:`fptq.backends.cupy_backend` so that every decision about
grids, tiles and paths is unit-tested on machines without a GPU
(``tests/test_cupy_launch.py``).

W4A8 matmul paths (all give the spec's bits; they differ in speed only):

* ``decode`` (``gemm_decode.cu``): M <= :data:`DECODE_MAX_M` (16). Streams the
  packed weights with 16-byte loads and ``__dp4a``; the template parameter MT
  (activation rows per warp) is the smallest of :data:`DECODE_MT` >= M.
* ``prefill`` (``gemm_prefill.cu``): M > 16, int8 tensor cores (mma.sync
  m16n8k32). M from 17 to 63 also takes this path (the brief's open band):
  a 64-row tile wastes at most 47 rows of tensor-core work, while the decode
  kernel would re-read the whole weight once per 16 rows.
* ``generic`` (``matmul.cu``): any other shape (K or G not a multiple of 32,
  misaligned pointers): one thread per (m, n, g) group sum, then the epilogue
  kernel. Also what ``w4a8_group_sums`` / ``w4a8_epilogue`` run.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DECODE_MAX_M", "DECODE_MT", "DECODE_WARPS", "DECODE_ROWS", "PrefillTile", "PREFILL_TILES",
           "ELEMENTWISE_THREADS", "ROW_THREADS", "SM_COUNT_DEFAULT", "decode_kernel_name", "prefill_kernel_name",
           "fast_path_ok", "choose_path", "decode_mt", "decode_grid", "choose_prefill_tile", "prefill_grid",
           "elementwise_grid", "warp_per_item_grid"]

#: Largest M of the decode path.
DECODE_MAX_M = 16
#: The instantiations of gemm_decode<MT> (activation rows per warp).
DECODE_MT = (1, 2, 4, 8, 16)
#: gemm_decode.cu's DEC_WARPS (warps per block) and DEC_ROWS (output rows per warp).
DECODE_WARPS = 4
DECODE_ROWS = 4
#: Threads per block of the elementwise kernels and of quantize_act_per_token (FPTQ_ROW_THREADS).
ELEMENTWISE_THREADS = 256
ROW_THREADS = 256
#: The H200's (and H100 SXM's) multiprocessor count; the backend reads the real one off the device.
SM_COUNT_DEFAULT = 132
#: The alignment (bytes) the fast paths' 16-byte loads and cp.async need.
_ALIGN = 16


@dataclass(frozen=True)
class PrefillTile:
    """A gemm_prefill<WM, WN, MT, NT> configuration: WM x WN warps, each MT x NT mma tiles of 16 x 8."""

    wm: int
    wn: int
    mt: int
    nt: int

    @property
    def bm(self) -> int:
        return self.wm * self.mt * 16

    @property
    def bn(self) -> int:
        return self.wn * self.nt * 8

    @property
    def threads(self) -> int:
        return self.wm * self.wn * 32


#: The instantiated tiles, largest first: 128 x 128 (8 warps of 64 x 32), 64 x 64 (4 warps of 32 x 32).
PREFILL_TILES = (PrefillTile(2, 4, 4, 4), PrefillTile(2, 2, 2, 4))


def decode_kernel_name(mt: int) -> str:
    return f"gemm_decode<{mt}>"


def prefill_kernel_name(t: PrefillTile) -> str:
    return f"gemm_prefill<{t.wm}, {t.wn}, {t.mt}, {t.nt}>"


def fast_path_ok(k: int, group_size: int, pointers: tuple[int, ...] = ()) -> str | None:
    """None when the decode/prefill kernels can run on this shape, else why not.

    They need K % 32 == 0 and G % 32 == 0 (every group is whole 16-byte chunks of
    packed weights, every activation chunk 32 bytes) and 16-byte aligned base
    pointers (``pointers``: the device addresses of qx and packed).
    """
    if k % 32:
        return f"K={k} is not a multiple of 32"
    if group_size % 32:
        return f"G={group_size} is not a multiple of 32"
    bad = [p for p in pointers if p % _ALIGN]
    if bad:
        return f"a base pointer is not {_ALIGN}-byte aligned ({hex(bad[0])})"
    return None


def choose_path(m: int, n: int, k: int, group_size: int, pointers: tuple[int, ...] = (),
                force: str | None = None) -> str:
    """``"decode"``, ``"prefill"`` or ``"generic"`` for a W4A8 matmul of this shape (module docstring).

    ``force`` names a path to use when it can run (tests use it to cover every path);
    a forced fast path on a shape it cannot run is a ValueError.
    """
    why = fast_path_ok(k, group_size, pointers)
    if force is not None:
        if force not in ("decode", "prefill", "generic"):
            raise ValueError(f"force: expected 'decode', 'prefill' or 'generic', got {force!r}")
        if force == "decode" and m > DECODE_MAX_M:
            raise ValueError(f"force='decode': M={m} is above {DECODE_MAX_M}")
        if force != "generic" and why:
            raise ValueError(f"force={force!r}: {why}")
        return force
    if why or m == 0 or n == 0 or k == 0:
        return "generic"
    return "decode" if m <= DECODE_MAX_M else "prefill"


def decode_mt(m: int) -> int:
    """The gemm_decode template parameter for M rows: the smallest of :data:`DECODE_MT` >= M."""
    for mt in DECODE_MT:
        if m <= mt:
            return mt
    raise ValueError(f"M={m} is above the decode path's {DECODE_MAX_M}")


def decode_grid(n: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of gemm_decode: one warp per DECODE_ROWS output rows, DECODE_WARPS warps a block."""
    rows_per_block = DECODE_WARPS * DECODE_ROWS
    return (-(-n // rows_per_block),), (DECODE_WARPS * 32,)


def choose_prefill_tile(m: int, n: int, sm_count: int = SM_COUNT_DEFAULT) -> PrefillTile:
    """The largest tile that still gives every multiprocessor a block; else the smallest tile.

    128 x 128 tiles re-read less (the weights once per 128 rows of M) but at
    M = 64, N = 4096 they make 32 blocks for 132 SMs; 64 x 64 tiles make 64 x more.
    """
    for t in PREFILL_TILES:
        if -(-m // t.bm) * -(-n // t.bn) >= sm_count:
            return t
    return PREFILL_TILES[-1]


def prefill_grid(m: int, n: int, tile: PrefillTile) -> tuple[tuple[int, int], tuple[int]]:
    """(grid, block) of gemm_prefill: x over N tiles (neighbours share activation rows), y over M tiles."""
    gy = -(-m // tile.bm)
    if gy > 65535:
        raise ValueError(f"M={m} needs {gy} row tiles, above CUDA's grid limit of 65535")
    return (-(-n // tile.bn), gy), (tile.threads,)


def elementwise_grid(n: int, sm_count: int = SM_COUNT_DEFAULT) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of a grid-stride elementwise kernel over n items (n > 0): at most 32 blocks per SM."""
    if n <= 0:
        raise ValueError(f"an elementwise launch needs n > 0, got {n}")
    blocks = min(-(-n // ELEMENTWISE_THREADS), 32 * sm_count)
    return (blocks,), (ELEMENTWISE_THREADS,)


def warp_per_item_grid(items: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) giving one warp to each of ``items`` (weight_scales: one warp per (row, group))."""
    if items <= 0:
        raise ValueError(f"a launch needs items > 0, got {items}")
    warps = ELEMENTWISE_THREADS // 32
    return (-(-items // warps),), (ELEMENTWISE_THREADS,)
