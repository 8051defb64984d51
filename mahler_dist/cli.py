"""The `mahler` command: parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import argparse
import sys

from mahler_dist.errors import MahlerError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from mahler_dist.config import load_config, resolve_config_path
    from mahler_dist.music_report import inspect_file

    options = load_config(resolve_config_path(args.config)).data.quantize
    print(inspect_file(args.file, write_midi=args.write_midi, options=options))
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from mahler_dist.config import load_config, resolve_config_path
    from mahler_dist.model.summary import describe_text

    print(describe_text(load_config(resolve_config_path(args.config))))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from mahler_dist.config import load_config, resolve_config_path
    from mahler_dist.data.preprocess import preprocess

    data = load_config(resolve_config_path(args.config)).data
    overrides = {"shard_samples": args.shard_samples, "val_fraction": args.val, "test_fraction": args.test}
    for key, value in overrides.items():
        if value is not None:
            setattr(data, key, value)
    summary = preprocess(args.root, data, workers=args.workers, force=args.force, address=args.address,
                         wait_s=args.wait)
    print(summary)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mahler_dist.train.launch import train

    summary = train(args.name, args.root, args.config, workers=args.workers, gpus=args.gpus,
                    cpus_per_worker=args.cpus_per_worker, loader_workers=args.loader_workers,
                    epochs=args.epochs, restart=args.restart, yes=args.yes, max_failures=args.max_failures,
                    placement="SPREAD" if args.spread else "PACK", address=args.address)
    print(summary)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from mahler_dist.generate.modes import GenerateOptions, run_generate

    opts = GenerateOptions(
        types=args.type, checkpoint=args.model, file=args.file, units=args.units or [],
        samples=args.samples, length=args.length, meter=args.meter, use_start_ctx=args.use_start_ctx,
        zero_ctx=args.zero_ctx, no_ctx=args.no_ctx, steps=args.steps,
        teacher_forcing=args.use_teacher_forcing,
        slerp=args.use_slerp, seed=args.seed, split=args.split, batch_size=args.batch_size,
        device=args.device, plot=not args.no_plot, max_bars=args.max_bars, max_rows=args.max_rows,
        temperatures={"offset": args.offset_temperature, "duration": args.duration_temperature,
                      "pitch": args.pitch_temperature, "instrument": args.instrument_temperature},
        decoding={"top_p": args.top_p, "top_k": args.top_k, "max_polyphony": args.max_polyphony})
    run_generate(args.root, args.name, opts)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mahler_dist.evaluate.run import evaluate

    print(evaluate(args.name, args.root, args.split, args.model, args.pieces, generated=args.generated,
                   bars=args.bars, max_bars=args.max_bars, seed=args.seed, address=args.address,
                   log_wandb=not args.no_wandb))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from mahler_dist.serve.launch import ServeOptions, run_server

    run_server(args.name, args.root, ServeOptions(
        host=args.host, port=args.port, replicas=args.replicas, num_gpus=args.num_gpus,
        cpus_per_replica=args.cpus_per_replica, device=args.device, max_batch_size=args.max_batch_size,
        request_timeout_s=args.request_timeout, detach=args.detach), address=args.address)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mahler_dist.plots import training_curves
    from mahler_dist.train.tracking import read_metrics

    pairs = args.runs
    if len(pairs) % 2:
        raise MahlerError("give pairs of NAME RUNDIR, e.g. mahler plot l small demo/runs/small")
    runs = []
    for label, run_dir in zip(pairs[::2], pairs[1::2]):
        metrics = Path(run_dir) / "metrics.jsonl"
        if not metrics.exists():
            raise MahlerError(f"{run_dir}: no metrics.jsonl (is it a run folder, ROOT/runs/NAME?)")
        runs.append((label, read_metrics(metrics)))
    out = args.out or f"curves_{args.mode}.png"
    print(f"wrote {training_curves(args.mode, runs, out)}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from mahler_dist.submit import submit

    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    return submit(entrypoint, address=args.address, working_dir=args.working_dir, env_names=args.env,
                  wait=not args.no_wait, submission_id=args.submission_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mahler",
        description="MahlerNet on Ray: preprocess MIDI, train the C-VAE, generate and serve music.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("inspect", help="show what the representation makes of a MIDI file")
    p.add_argument("file", help="a .mid/.midi file")
    p.add_argument("--write-midi", metavar="OUT.mid", help="also write the round-tripped MIDI here")
    p.add_argument("--config", help="a YAML file or preset whose data.quantize switches to use (default: the defaults)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("preprocess", help="ROOT/input/**.mid -> WebDataset shards, manifest and pieces (Ray Data)")
    p.add_argument("root", help="the project folder: reads ROOT/input, publishes ROOT/builds/<id>/ "
                   "(shards, pieces, manifest.jsonl) and points ROOT/CURRENT at it")
    p.add_argument("--workers", type=int, default=None, help="parallel encoders (default: the cluster's CPUs)")
    p.add_argument("--force", action="store_true", help="rebuild even if the input and config are unchanged")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another preprocess run holds ROOT/.lock, wait this long for it (default 0: fail at once)")
    p.add_argument("--shard-samples", type=int, default=None, help="bar samples per shard")
    p.add_argument("--val", type=float, default=None, help="fraction of pieces for validation (default 0.05)")
    p.add_argument("--test", type=float, default=None, help="fraction of pieces for test (default 0.05)")
    p.add_argument("--config", default=None, help="a YAML config whose `data` section is used")
    p.add_argument("--address", default=None,
                   help="a Ray cluster HOST:PORT to run on (default: $RAY_ADDRESS, else a new local Ray)")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", help="train the C-VAE with Ray Train (re-run the same command to resume)")
    p.add_argument("name", help="run name: ROOT/runs/NAME holds its config, checkpoints and metrics")
    p.add_argument("--root", required=True, help="the project folder (with shards from `mahler preprocess`)")
    p.add_argument("--config", default=None, help="YAML file or preset (tiny, small, mahlernet); new runs only")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="processes building batches beside each worker (train.loader_workers; a resumed run may change it)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs Ray reserves per worker (default: 1 + train.loader_workers, for its loader processes)")
    p.add_argument("--epochs", type=int, default=None, help="train until this many epochs in total")
    p.add_argument("--restart", action="store_true", help="delete the run and start over")
    p.add_argument("--yes", action="store_true", help="do not ask before --restart deletes the run")
    p.add_argument("--max-failures", type=int, default=3, help="worker restarts from the latest checkpoint")
    p.add_argument("--spread", action="store_true", help="place workers on different nodes (default: pack)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster HOST:PORT to run on (default: $RAY_ADDRESS, else a new local Ray)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="sample, reconstruct or interpolate bars with a trained run -> MIDI",
                       description="Modes as the original MahlerNet (pred, recon, n_recon, intpol, n_pred). "
                       "Units: '<bar><c and/or z>' such as 10cz, 9z, 3c (0-based), '-' for none. "
                       "Output: ROOT/runs/NAME/generated/*.mid with a piano-roll PNG beside each.")
    p.add_argument("name", help="run name (ROOT/runs/NAME)")
    p.add_argument("--root", required=True, help="the project folder")
    p.add_argument("-t", "--type", nargs="+", required=True, metavar="MODE",
                   help="one or more of pred, recon, n_recon, intpol, n_pred")
    p.add_argument("-m", "--model", default="best",
                   help="checkpoint: best (lowest val_score, default), latest, or a folder name "
                        "such as checkpoint_epoch0003")
    p.add_argument("-f", "--file", default=None,
                   help="piece: an id from ROOT/manifest.jsonl or an input file's name")
    p.add_argument("-u", "--units", nargs="+", default=None, metavar="UNIT",
                   help="units such as 10cz 9z 3c, or -")
    p.add_argument("-s", "--samples", type=int, default=1, help="samples per unit (default 1)")
    p.add_argument("-l", "--length", type=int, default=1, help="bars per generated sample (pred, n_pred)")
    p.add_argument("-M", "--meter", default=None,
                   help="2, 3, 4 (x/4), 6 (6/8) or N/D; default: the seed bar's metre, else 4/4")
    ctx = p.add_mutually_exclusive_group()
    ctx.add_argument("-C", "--use-start-ctx", action="store_true",
                     help="default context = the START row, the context of a training piece's first bar "
                          "(the default now; kept for old command lines)")
    ctx.add_argument("-Z", "--zero-ctx", action="store_true",
                     help="default context = an all-zero summary, as the original (never seen in training)")
    p.add_argument("-U", "--no-ctx", action="store_true",
                   help="n_recon: use the default context (START; zeros with --zero-ctx), not the true one")
    p.add_argument("-S", "--steps", type=int, default=10, help="interpolation steps (intpol)")
    p.add_argument("-F", "--use-teacher-forcing", action="store_true", help="recon/n_recon: teacher-forced")
    p.add_argument("-e", "--use-slerp", action="store_true", help="intpol: spherical interpolation")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    for prop in ("offset", "duration", "pitch", "instrument"):
        p.add_argument(f"--{prop}-temperature", type=float, default=None,
                       help=f"{prop} sampling temperature, 0 = argmax (default: the run's config)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus sampling, every property: draw only from the likeliest classes holding "
                        "P of the probability, 0 < P <= 1, 1 = off (default: the run's generate.top_p)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="draw only from the K likeliest classes of each property, 0 = off, 1 = argmax "
                        "(default: the run's generate.top_k)")
    p.add_argument("--max-polyphony", type=int, default=None, metavar="N",
                   help="at most N notes at one onset, no (pitch, instrument) twice at one onset; 0 = off "
                        "(default: the run's generate.max_polyphony, 12)")
    p.add_argument("--split", default=None, help="n_recon without --file: train, val, test or all (default)")
    p.add_argument("--max-bars", type=int, default=None, help="n_recon: stop after this many bars")
    p.add_argument("--batch-size", type=int, default=64, help="bars decoded together (n_recon)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="row cap per generated bar (default: the run's data.max_rows_per_bar)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-plot", action="store_true", help="do not write piano-roll PNGs")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("evaluate", help="how good a run's model is: reconstruction, baselines, generated vs real "
                       "statistics -> JSON report + PNG (Ray)")
    p.add_argument("name", help="the run name (ROOT/runs/NAME)")
    p.add_argument("--root", required=True, help="the project folder of the run")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to evaluate")
    p.add_argument("--model", default="best", help="best | latest | a checkpoint folder name of the run")
    p.add_argument("--pieces", default=None, metavar="OTHER_ROOT",
                   help="evaluate on this preprocessed ROOT's split instead (e.g. a held-out corpus)")
    p.add_argument("--generated", type=int, default=16, help="pieces generated for the statistics (0: none)")
    p.add_argument("--bars", type=int, default=16, help="bars per generated piece")
    p.add_argument("--max-bars", type=int, default=20_000, help="evaluate at most about this many bars (whole shards)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wandb", action="store_true", help="do not log the report to the run's W&B run")
    p.add_argument("--address", default=None,
                   help="a Ray cluster HOST:PORT to run on (default: $RAY_ADDRESS, else a new local Ray)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("serve", help="serve a run's model over HTTP with Ray Serve: JSON/MIDI API and a web page")
    p.add_argument("name", help="the run to serve by default (ROOT/runs/NAME; every run of ROOT is servable)")
    p.add_argument("--root", required=True, help="the project folder of the run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="Serve replicas of the model")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (0: CPU)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto (cuda with --num-gpus, else cpu), cpu or cuda")
    p.add_argument("--max-batch-size", type=int, default=16,
                   help="pred/continue requests decoded together (1: no batching)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets HTTP 408")
    p.add_argument("--detach", action="store_true",
                   help="deploy and return, leaving the app on the cluster (with --address)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster HOST:PORT to deploy on (default: $RAY_ADDRESS, else a new local Ray)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("plot", help="training curves of runs: l (loss), p (accuracy), d (distance), ls (step loss)")
    p.add_argument("mode", choices=["l", "p", "d", "ls"])
    p.add_argument("runs", nargs="+", metavar="NAME RUNDIR", help="pairs of a label and a run folder")
    p.add_argument("--out", default=None, help="PNG file to write (default curves_MODE.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("submit", help="run a job on a Ray cluster (ray job submit --working-dir . with this "
                       "project's excludes and W&B credentials from the environment)",
                       description="e.g. mahler submit --address http://127.0.0.1:8265 -- python jobs/train.py "
                       "big --root s3://BUCKET/mahler --gpus. WANDB_API_KEY, WANDB_ENTITY, WANDB_PROJECT, WANDB_MODE "
                       "and WANDB_BASE_URL are copied from this environment into the job's when set.")
    p.add_argument("--address", default=None, help="the cluster's Jobs API (default RAY_ADDRESS, else "
                   "http://127.0.0.1:8265, where `ray dashboard ray_cluster.yaml` forwards it)")
    p.add_argument("--working-dir", default=".", help="the folder uploaded as the job's working dir (default .)")
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="also copy this environment variable into the job's (its value is read here; repeatable)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    p.add_argument("--submission-id", default=None, help="the job's id (default: Ray picks one)")
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- then the job's command, e.g. python jobs/train.py ...")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("describe", help="print a configuration's architecture and parameter counts")
    p.add_argument("--config", default=None, help="a YAML file or a preset name (tiny, small, mahlernet)")
    p.set_defaults(func=_cmd_describe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MahlerError as e:
        print(f"mahler {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mahler {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
