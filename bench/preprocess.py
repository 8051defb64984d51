"""The Ray preprocessing pipeline vs the same encode function in a plain single-process loop.

    .venv/bin/python bench/preprocess.py [--cpus 2] [--corpora piano_midi_de classical_multitrack]

Measured in one run, on copies of the corpora in a temporary ROOT/input:
1. the machine: how much faster N busy processes finish N units of pure-Python work than one does
   (2.0 on two free cores; less when the cores are shared or busy - read the ratios against it);
2. Ray on `--cpus` logical CPUs: ray.init, a 5-file corpus cold (new worker processes) and warm
   (the fixed overhead of the pipeline = its wall time minus the loop's time for those files);
3. `--rounds` rounds of: the single-process loop (`encode_bytes` over every file, bytes already in
   memory, in a fresh child process, with its peak RSS), then `preprocess --force` on the whole
   corpus (warm workers). The speed of these virtual machines drifts by 20-30% within minutes, so
   each round's ratio compares two runs made back to back, and the figure is their median; the
   first Ray round samples the RSS of the driver and of every Ray process;
4. the output: shard bytes per event row (tar), pieces/*.npz bytes per row, what gzip would make
   of the shards.
For scale, the original MahlerNet preprocessor: ~15k input notes/s on one core, 1.5 GiB to bin
classical_multitrack, ~1,100 bytes per event row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "midi"


# --------------------------------------------------------------------------------------------------
# Children (spawned: a fresh interpreter each, so that their memory is theirs alone)


def _busy(n: int) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def _loop(paths: list[str]) -> dict:
    """The single-process baseline: encode_bytes over every file, bytes read first."""
    from mahler_dist.errors import MidiReadError
    from mahler_dist.music.encode import encode_bytes

    files = [(p, Path(p).read_bytes()) for p in paths]
    notes = ok = rows = 0
    t = time.perf_counter()
    for name, data in files:
        try:
            enc = encode_bytes(data, name)
        except MidiReadError:
            continue
        ok += 1
        notes += enc.stats["source notes"]
        rows += len(enc.rows.rows)
    wall = time.perf_counter() - t
    return {"wall": wall, "files": len(files), "ok": ok, "notes": notes, "rows": rows,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def machine_parallelism(procs: int, n: int = 6_000_000) -> float:
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_busy, [1000] * procs)            # start the workers
        t = time.perf_counter()
        pool.map(_busy, [n])
        one = time.perf_counter() - t
        t = time.perf_counter()
        pool.map(_busy, [n] * procs, chunksize=1)
        many = time.perf_counter() - t
    return procs * one / many


def _serial_pipeline(root: str) -> dict:
    """The Ray pipeline's whole work in one process, without Ray: the same functions (encode_record
    and its pieces/*.npz, the shard plan, write_shard) over every file of ROOT/input, files read
    first. Ray's speed-up over this is its parallel efficiency on the same work."""
    from mahler_dist.config import DataConfig
    from mahler_dist.data.build_tasks import encode_record, write_shard
    from mahler_dist.data.corpus_plan import plan_corpus
    from mahler_dist.data import shards as S
    from mahler_dist.storage import Store

    config, store = DataConfig(), Store(root)
    input_dir = store.path(S.INPUT_DIR)
    out = f"{store.base}-serial"   # beside ROOT, so that the Ray runs never see it
    pieces_dir = f"{out}/{S.PIECES_DIR}"
    store.mkdir(pieces_dir)
    store.mkdir(f"{out}/{S.SHARDS_DIR}")
    files = [(rel, store.read(f"{input_dir}/{rel}")) for rel, _ in store.list_midi(input_dir)]
    t = time.perf_counter()
    records = []
    for rel, data in files:
        rec, npz = encode_record(data, rel, config)
        if npz is not None:
            store.write(f"{pieces_dir}/{rec['piece']}.npz", npz)
        records.append(rec)
    encode_s = time.perf_counter() - t
    _, plans, _ = plan_corpus(records, config)
    samples = 0
    for split in S.SPLITS:
        for i, items in enumerate(plans[split]):
            path = f"{out}/{S.SHARDS_DIR}/{S.shard_name(split, i)}"
            samples += write_shard(store, pieces_dir, path, [tuple(x) for x in items], config.max_rows_per_bar)["nsamples"]
    wall = time.perf_counter() - t
    store.remove(out)
    return {"wall": wall, "encode_s": encode_s, "shards_s": wall - encode_s, "samples": samples}


def run_loop(paths: list[Path]) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_loop, ([str(p) for p in paths],))


def run_serial_pipeline(root: Path) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_serial_pipeline, (str(root),))


# --------------------------------------------------------------------------------------------------
# Memory sampling of the driver and every Ray process


class RssSampler(threading.Thread):
    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.interval = psutil, interval
        self.stop_event = threading.Event()
        self.peak_total = self.peak_driver = self.peak_worker = 0

    def run(self) -> None:
        me = self.psutil.Process()
        while not self.stop_event.is_set():
            try:
                procs = [me, *me.children(recursive=True)]
                rss = {}
                for p in procs:
                    try:
                        rss[p.pid] = (p.memory_info().rss, " ".join(p.cmdline()[:2]))
                    except self.psutil.Error:
                        pass
                self.peak_total = max(self.peak_total, sum(r for r, _ in rss.values()))
                self.peak_driver = max(self.peak_driver, rss.get(me.pid, (0, ""))[0])
                workers = [r for pid, (r, cmd) in rss.items() if "default_worker" in cmd or cmd.startswith("ray::")]
                self.peak_worker = max([self.peak_worker, *workers])
            except self.psutil.Error:
                pass
            time.sleep(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


# --------------------------------------------------------------------------------------------------


def make_root(base: Path, name: str, sources: list[tuple[Path, Path]]) -> Path:
    root = base / name
    for src, rel in sources:
        dest = root / "input" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray (and processes compared)")
    ap.add_argument("--corpora", nargs="+", default=["piano_midi_de", "classical_multitrack"])
    ap.add_argument("--rounds", type=int, default=3, help="loop / Ray pairs measured back to back (median ratio)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    sources = []
    for corpus in args.corpora:
        folder = Path(corpus) if Path(corpus).is_dir() else SHARED / corpus
        sources += [(p, Path(folder.name) / p.relative_to(folder)) for p in sorted(folder.rglob("*"))
                    if p.suffix.lower() in (".mid", ".midi")]
    small = sources[:5]
    base = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    fig: dict = {"cpus": args.cpus, "corpora": args.corpora, "files": len(sources),
                 "load_average_before": os.getloadavg()}
    try:
        big_root = make_root(base, "big", sources)
        small_root = make_root(base, "small", small)
        print(f"corpus: {', '.join(args.corpora)}: {len(sources)} files, "
              f"{sum(s.stat().st_size for s, _ in sources) / 2**20:.1f} MiB; load average {os.getloadavg()[0]:.1f}")

        fig["machine_parallelism"] = machine_parallelism(args.cpus)
        print(f"machine: {args.cpus} busy processes do {fig['machine_parallelism']:.2f}x the work of one "
              f"(ideal {args.cpus:.1f}; the ceiling for any parallel speedup on this box right now)")

        loop_small = run_loop([small_root / "input" / rel for _, rel in small])

        import ray

        from mahler_dist.config import DataConfig
        from mahler_dist.data import shards as S
        from mahler_dist.data.preprocess import preprocess

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        fig["ray_init_s"] = time.perf_counter() - t
        config = DataConfig()
        t = time.perf_counter()
        preprocess(small_root, config, progress=False)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        preprocess(small_root, config, force=True, progress=False)
        warm = time.perf_counter() - t
        fig["overhead"] = {"ray_init_s": fig["ray_init_s"], "five_files_cold_s": cold, "five_files_warm_s": warm,
                           "five_files_loop_s": loop_small["wall"], "fixed_cold_s": cold - loop_small["wall"],
                           "fixed_warm_s": warm - loop_small["wall"]}
        print(f"Ray fixed overhead: ray.init {fig['ray_init_s']:.1f} s; 5-file corpus {cold:.1f} s cold "
              f"(new worker processes), {warm:.1f} s warm, vs {loop_small['wall']:.2f} s in the loop "
              f"-> {warm - loop_small['wall']:.1f} s fixed per run (warm), {cold - loop_small['wall']:.1f} s (cold)")

        rounds = []
        for r in range(args.rounds):
            loop = run_loop([big_root / "input" / rel for _, rel in sources])
            print(f"round {r + 1}: single-process loop {loop['wall']:.1f} s  {loop['files'] / loop['wall']:.1f} files/s  "
                  f"{loop['notes'] / loop['wall']:,.0f} notes/s  peak RSS {loop['maxrss_mib']:.0f} MiB", flush=True)
            serial = run_serial_pipeline(big_root)
            print(f"round {r + 1}: the same pipeline in one process (no Ray) {serial['wall']:.1f} s: encode + pieces "
                  f"{serial['encode_s']:.1f} s, shards {serial['shards_s']:.1f} s", flush=True)
            sampler = RssSampler() if r == 0 else None
            if sampler:
                sampler.start()
            t = time.perf_counter()
            summary = preprocess(big_root, config, force=True, progress=r == 0)
            wall = time.perf_counter() - t
            if sampler:
                sampler.stop()
                peaks = sampler
            rounds.append({"loop_s": loop["wall"], "serial_s": serial["wall"], "serial_shards_s": serial["shards_s"],
                           "ray_s": wall, "ratio": loop["wall"] / wall, "ratio_vs_serial": serial["wall"] / wall,
                           "loop": loop})
            print(f"round {r + 1}: Ray pipeline {wall:.1f} s -> {loop['wall'] / wall:.2f}x the loop, "
                  f"{serial['wall'] / wall:.2f}x the same pipeline in one process", flush=True)
        ray.shutdown()
        print(summary)
        median = sorted(rounds, key=lambda x: x["ratio"])[len(rounds) // 2]
        loop, wall, sampler = median["loop"], median["ray_s"], peaks
        fig["rounds"] = [{k: v for k, v in x.items() if k != "loop"} for x in rounds]
        fig["loop"] = loop

        index = S.read_index(big_root)
        shard_bytes = sum(s["filesize"] for s in index["shardlist"])
        shard_rows = sum(s["rows"] for s in index["shardlist"])
        build = Path(S.build_root(big_root, index["build"]))
        piece_bytes = sum(p.stat().st_size for p in (build / "pieces").iterdir())
        first = build / "shards" / index["shardlist"][0]["url"]
        gzip_ratio = len(zlib.compress(first.read_bytes(), 6)) / first.stat().st_size
        ratio = loop["wall"] / wall
        fig["ray"] = {"wall_s": wall, "files_per_s": len(sources) / wall, "notes_per_s": summary.notes_in / wall,
                      "speedup_vs_loop": ratio, "share_of_machine_ceiling": ratio / fig["machine_parallelism"],
                      "peak_rss_driver_mib": sampler.peak_driver / 2**20,
                      "peak_rss_worker_mib": sampler.peak_worker / 2**20,
                      "peak_rss_all_ray_processes_mib": sampler.peak_total / 2**20}
        fig["output"] = {"samples": shard_rows and sum(s["nsamples"] for s in index["shardlist"]),
                         "event_rows": shard_rows, "shard_bytes_per_row": shard_bytes / shard_rows,
                         "shard_bytes_per_sample": shard_bytes / sum(s["nsamples"] for s in index["shardlist"]),
                         "gzip_shard_bytes_per_row": gzip_ratio * shard_bytes / shard_rows,
                         "piece_npz_bytes_per_row": piece_bytes / index["stats"]["rows"]}
        fig["load_average_after"] = os.getloadavg()
        r, o = fig["ray"], fig["output"]
        print()
        print(f"single process : {loop['files'] / loop['wall']:7.1f} files/s  {loop['notes'] / loop['wall']:9,.0f} notes/s"
              f"  ({loop['notes'] / loop['wall'] / 15000:.1f}x the original's ~15k notes/s per core)")
        print(f"Ray, {args.cpus} CPUs    : {r['files_per_s']:7.1f} files/s  {r['notes_per_s']:9,.0f} notes/s"
              f"  (whole pipeline: encode, pieces, shards, manifest, index)")
        each = ", ".join(f"{x['ratio']:.2f}" for x in rounds)
        vs_serial = sorted(x["ratio_vs_serial"] for x in rounds)[len(rounds) // 2]
        fig["ray"]["speedup_vs_serial_pipeline"] = vs_serial
        print(f"ratio          : {ratio:.2f}x the single-process loop (goal >= 1.6x; median of {each}); this machine's ceiling "
              f"{fig['machine_parallelism']:.2f}x -> {100 * r['share_of_machine_ceiling']:.0f}% of it")
        print(f"same work      : {vs_serial:.2f}x the whole pipeline (encode, pieces, shards) run in one process "
              f"without Ray (median) -> {100 * vs_serial / fig['machine_parallelism']:.0f}% of the machine's ceiling")
        print(f"fixed overhead : ray.init {fig['ray_init_s']:.1f} s + {fig['overhead']['fixed_warm_s']:.1f} s per run "
              f"(warm), {fig['overhead']['fixed_cold_s']:.1f} s the first time (worker start-up)")
        print(f"bytes per row  : shards {o['shard_bytes_per_row']:.0f} B ({o['shard_bytes_per_sample']:.0f} B per bar "
              f"sample, {o['event_rows'] / o['samples']:.1f} rows per bar; gzip would make it "
              f"{o['gzip_shard_bytes_per_row']:.0f} B); pieces/*.npz {o['piece_npz_bytes_per_row']:.1f} B")
        print(f"peak memory    : loop {loop['maxrss_mib']:.0f} MiB; Ray driver {r['peak_rss_driver_mib']:.0f} MiB, "
              f"largest worker {r['peak_rss_worker_mib']:.0f} MiB, all Ray processes {r['peak_rss_all_ray_processes_mib']:.0f} MiB "
              "(RSS sum, shared pages counted per process)")
        print(f"load average   : {fig['load_average_before'][0]:.1f} before, {fig['load_average_after'][0]:.1f} after "
              f"({os.cpu_count()} CPUs; other work on the box skews every figure above)")
        if args.json:
            Path(args.json).write_text(json.dumps(fig, indent=1))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
