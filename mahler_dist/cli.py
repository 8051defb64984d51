"""The `mahler` command: parses arguments and calls one library function per subcommand."""

from __future__ import annotations

import argparse
import sys

from mahler_dist.errors import MahlerError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from mahler_dist.inspect import inspect_file

    print(inspect_file(args.file, write_midi=args.write_midi))
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
    summary = preprocess(args.root, data, workers=args.workers, force=args.force)
    print(summary)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mahler_dist.train.launch import train

    summary = train(args.name, args.root, args.config, workers=args.workers, gpus=args.gpus,
                    epochs=args.epochs, restart=args.restart, yes=args.yes, max_failures=args.max_failures)
    print(summary)
    return 0


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
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("preprocess", help="ROOT/input/**.mid -> WebDataset shards, manifest and pieces (Ray Data)")
    p.add_argument("root", help="the project folder: reads ROOT/input, writes ROOT/shards, ROOT/pieces, ROOT/manifest.jsonl")
    p.add_argument("--workers", type=int, default=None, help="parallel encoders (default: the cluster's CPUs)")
    p.add_argument("--force", action="store_true", help="rebuild even if the input and config are unchanged")
    p.add_argument("--shard-samples", type=int, default=None, help="bar samples per shard")
    p.add_argument("--val", type=float, default=None, help="fraction of pieces for validation (default 0.05)")
    p.add_argument("--test", type=float, default=None, help="fraction of pieces for test (default 0.05)")
    p.add_argument("--config", default=None, help="a YAML config whose `data` section is used")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", help="train the C-VAE with Ray Train (re-run the same command to resume)")
    p.add_argument("name", help="run name: ROOT/runs/NAME holds its config, checkpoints and metrics")
    p.add_argument("--root", required=True, help="the project folder (with shards from `mahler preprocess`)")
    p.add_argument("--config", default=None, help="YAML file or preset (tiny, small, mahlernet); new runs only")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    p.add_argument("--epochs", type=int, default=None, help="train until this many epochs in total")
    p.add_argument("--restart", action="store_true", help="delete the run and start over")
    p.add_argument("--yes", action="store_true", help="do not ask before --restart deletes the run")
    p.add_argument("--max-failures", type=int, default=3, help="worker restarts from the latest checkpoint")
    p.set_defaults(func=_cmd_train)

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
