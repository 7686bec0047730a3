"""What a dataset's records cost in forked loader workers: a list of VideoRecord against a RecordTable
(``tools/benchmark.py records``: ``report``).

For each layout, in a fresh process forked for it (so that one layout's objects never sit in the other's
workers): read a synthetic Kinetics CSV with the project's reader (timed; no video files are needed, the reader
keeps a row whose file it cannot find), build the layout (timed), trace what it holds in that process, then let a
torch DataLoader's forked workers read every record once in a shuffled order, as an epoch does, and read each
worker's /proc/PID/smaps_rollup while the workers are still alive after their pass. RSS counts every resident
page a worker maps, and a forked worker maps all of its parent's heap, touched or not: summed over workers it
counts shared pages again and again. PSS divides each shared page among the processes sharing it, so the main
process's PSS plus the workers' is what the loader really costs; USS is the pages only that worker holds (what
copy-on-write has copied for it). Linux only.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import random
import statistics
import string
import tempfile
import time
import tracemalloc
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..data.annotations import VideoRecord, read_k400_csv
from ..data.records import RecordTable
from .tables import markdown_table

LAYOUTS = ("list", "table")  # list: the records as the readers return them (before); table: data.records (after)
_YOUTUBE_ID = string.ascii_letters + string.digits + "-_"


@dataclass(frozen=True)
class LayoutMemory:
    layout: str
    read_s: float  # read_k400_csv
    build_s: float  # the reader's list -> the layout (0 for the list itself)
    main_mb: float  # traced bytes the records hold in the main process once built
    peak_mb: float  # traced peak while reading and building
    workers: int
    rss_mb: float  # summed over the workers, after their pass
    pss_mb: float
    uss_mb: float
    main_pss_mb: float  # the main process's own PSS then: with the workers' PSS, what the whole loader costs


def write_k400_csv(path: str, rows: int, *, classes: int = 400, seed: int = 0) -> None:
    """A Kinetics-400-style train CSV: ``rows`` clips over ``classes`` labels, 11-character YouTube ids, 10 s."""
    rng = random.Random(seed)
    labels = [f"class {i:03d}" for i in range(classes)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("label,youtube_id,time_start,time_end,split\n")
        for i in range(rows):
            start = rng.randrange(0, 290)
            f.write(f"{labels[i % classes]},{''.join(rng.choices(_YOUTUBE_ID, k=11))},{start},{start + 10},train\n")


def _smaps_mb(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, USS) of ``pid`` in MB, from the kernel's one-line-per-measure summary of its mappings."""
    kb = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                kb[key] = int(value.split()[0])
    return kb["Rss"] / 1e3, kb["Pss"] / 1e3, (kb["Private_Clean"] + kb["Private_Dirty"]) / 1e3


class _PathLengths(torch.utils.data.Dataset):
    """What a video dataset does with its records, minus the decoding: build the record, read its path."""

    def __init__(self, records: Sequence[VideoRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return os.getpid(), len(self.records[index].path)


def _collate(batch: list[tuple[int, int]]) -> tuple[set[int], int]:
    return {pid for pid, _ in batch}, sum(n for _, n in batch)


def _build(csv_path: str, root: str, layout: str, *, reads: int = 1) -> tuple[Sequence[VideoRecord], float, float]:
    """The layout, the median seconds of ``reads`` reads of the CSV, and the seconds of building the layout."""
    times = []
    for _ in range(reads):
        records = None  # the previous read's list goes first, as in a process that reads once
        start = time.perf_counter()
        records, _ = read_k400_csv(csv_path, root)
        times.append(time.perf_counter() - start)
    read_s = statistics.median(times)
    if layout == "list":
        return records, read_s, 0.0
    start = time.perf_counter()
    table = RecordTable.from_records(records)
    return table, read_s, time.perf_counter() - start


def measure_layout(csv_path: str, root: str, *, layout: str, workers: int, reads: int = 3, seed: int = 0,
                   ) -> LayoutMemory:
    """One layout's start-up time (the CSV read: the median of ``reads``), its size in this process and its
    workers' memory after one shuffled pass."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    # Timed without tracing (tracemalloc slows allocation); the median, as other jobs share the machine.
    held, read_s, build_s = _build(csv_path, root, layout, reads=reads)
    # The size from a second, traced build (then dropped): the reader's list is garbage once a table is built.
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    traced = _build(csv_path, root, layout)[0]
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced
    gc.collect()
    expected = sum(len(r.path) for r in held)
    batch = max(1, min(256, len(held) // (4 * workers)))  # several batches per worker: every worker takes part
    pids, total = set(), 0
    with warnings.catch_warnings():
        # More workers than this machine's cores is the point here (a node's count), not a mistake to warn of.
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        loader = torch.utils.data.DataLoader(
            _PathLengths(held), batch_size=batch, num_workers=workers, multiprocessing_context="fork",
            sampler=torch.utils.data.RandomSampler(held, generator=torch.Generator().manual_seed(seed)),
            collate_fn=_collate, persistent_workers=True)  # persistent: the workers outlive the pass, to be read
        for batch_pids, lengths in loader:
            pids |= batch_pids
            total += lengths
    if total != expected:
        raise RuntimeError(f"the workers read {total} path characters, the records hold {expected}")
    memory = [_smaps_mb(pid) for pid in sorted(pids)]
    main_pss = _smaps_mb(os.getpid())[1]
    del loader  # shuts the workers down
    return LayoutMemory(layout=layout, read_s=read_s, build_s=build_s, main_mb=(current - base) / 1e6,
                        peak_mb=(peak - base) / 1e6, workers=len(memory), rss_mb=sum(m[0] for m in memory),
                        pss_mb=sum(m[1] for m in memory), uss_mb=sum(m[2] for m in memory), main_pss_mb=main_pss)


def _child(conn, kwargs: dict) -> None:
    try:
        conn.send(("ok", measure_layout(**kwargs)))
    except Exception:  # the parent raises it, with this traceback
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _in_own_process(**kwargs) -> LayoutMemory:
    # Forked, not spawned: the child starts with torch already imported (seconds saved per layout), and the two
    # layouts' children share the same parent pages, so the difference between them is the records alone.
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, kwargs))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:  # it died before it could answer
        process.join()
        raise RuntimeError(f"measuring {kwargs['layout']!r}: the process died (exit code {process.exitcode})") from None
    process.join()
    if status != "ok":
        raise RuntimeError(f"measuring {kwargs['layout']!r} failed:\n{value}")
    return value


def measure_layouts(*, rows: int, workers: int, layouts: Sequence[str] = LAYOUTS, seed: int = 0,
                    ) -> list[LayoutMemory]:
    """Each layout measured in its own process over the same synthetic CSV of ``rows`` rows."""
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown or workers < 1 or rows < workers:  # fewer rows than workers would leave a worker without any
        raise ValueError(f"layouts from {LAYOUTS}, workers at least 1, rows at least workers; got {list(layouts)}, "
                         f"{rows} rows, {workers} workers")
    with tempfile.TemporaryDirectory(prefix="video_st-records-") as tmp:
        csv_path = os.path.join(tmp, "train.csv")
        write_k400_csv(csv_path, rows, seed=seed)
        root = os.path.join(tmp, "kinetics400", "videos")  # need not exist: no row's file does
        return [_in_own_process(csv_path=csv_path, root=root, layout=x, workers=workers, seed=seed) for x in layouts]


COLUMNS = {"read_s": "read CSV s", "build_s": "into layout s", "main_mb": "records MB (main)",
           "peak_mb": "start-up peak MB (main)", "rss_mb": "workers RSS MB", "pss_mb": "workers PSS MB",
           "uss_mb": "workers USS MB", "main_pss_mb": "main PSS MB", "total_pss_mb": "main + workers PSS MB"}


def report(*, rows: int = 240_000, workers: int = 8, layouts: Sequence[str] = LAYOUTS) -> str:
    """The records table: per layout the start-up times, the records' size in the main process and the
    summed RSS / PSS / USS of ``workers`` forked DataLoader workers after one pass over ``rows`` K400 records;
    then each measure of the table over the list's, when both were measured."""
    results = {m.layout: {**asdict(m), "total_pss_mb": m.main_pss_mb + m.pss_mb}
               for m in measure_layouts(rows=rows, workers=workers, layouts=layouts)}
    table = [{"layout": name, **{label: m[key] for key, label in COLUMNS.items()}} for name, m in results.items()]
    if {"list", "table"} <= results.keys():
        ratio = {"layout": "table / list"}
        for key, label in COLUMNS.items():
            before, after = results["list"][key], results["table"][key]
            ratio[label] = after / before if before > 0 else "-"
        table.append(ratio)
    return (f"{rows} K400 CSV rows (synthetic), {workers} forked DataLoader workers, one shuffled pass reading each "
            f"record's path; {os.cpu_count()} CPUs, torch {torch.__version__}; read CSV: median of 3 reads; memory "
            "after the pass, summed over the workers (/proc/PID/smaps_rollup); records MB traced (tracemalloc)\n"
            + markdown_table(table, ["layout", *COLUMNS.values()]))
