"""``hardneg`` command line: run | embed | mine | train | remine | inspect.

Every config value is a flag. The sections a command is about take bare names
(``--num-negatives``, ``--batch-size``); every field of every section is also
reachable as ``--SECTION-FIELD`` (``--embed-batch-size``, ``--index-nprobe``).
Flags override the ``--config`` YAML, which overrides the defaults.

Exit codes: 0 done (or nothing to do), 1 failure, 2 bad input or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel

from hardneg.config import RunConfig, load_config, parse_config
from hardneg.errors import HardnegError

logger = logging.getLogger("hardneg")

SECTIONS = {name: field.annotation for name, field in RunConfig.model_fields.items() if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
RENAMED = {"model.path": "model", "index.backend": "index", "corpus.path": "corpus", "queries.path": "queries"}


def _flag_type(annotation: Any) -> tuple[Optional[Callable], Optional[list], bool]:
    """(type, choices, is_bool) for a pydantic field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation)), False
    if annotation is bool:
        return None, None, True
    if annotation in (int, float, str):
        return annotation, None, False
    return str, None, False


def add_config_flags(parser: argparse.ArgumentParser, primary: Sequence[str]) -> None:
    """Add a flag for every config field; ``primary`` sections also get bare names."""
    taken: set[str] = {"config", "output", "json"}
    group = parser.add_argument_group("config values (override --config)")
    for section in list(primary) + [s for s in SECTIONS if s not in primary]:
        for field_name, field in SECTIONS[section].model_fields.items():
            dotted = f"{section}.{field_name}"
            flag_type, choices, is_bool = _flag_type(field.annotation)
            names = [f"--{section}-{field_name}".replace("_", "-")]
            bare = RENAMED.get(dotted, field_name)
            if section in primary and bare not in taken:
                taken.add(bare)
                names.insert(0, f"--{bare}".replace("_", "-"))
            kwargs: dict[str, Any] = {"dest": dotted, "default": None, "help": field.description if section in primary else argparse.SUPPRESS}
            if is_bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=flag_type, choices=choices)
            group.add_argument(*names, **kwargs)


def overrides_from(args: argparse.Namespace) -> dict:
    return {key: value for key, value in vars(args).items() if "." in key and value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hardneg", description="Hard-negative mining for contrastive embedding models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a corpus into Parquet shards")
    embed.add_argument("corpus", help="corpus file, folder or glob (Parquet/JSONL; local or s3://)")
    embed.add_argument("output", help="output folder (local or s3://)")
    embed.add_argument("--config", help="YAML config file")
    add_config_flags(embed, ["model", "embed", "corpus", "storage", "ray"])

    mine = commands.add_parser("mine", help="embed -> index -> mine INPUT into the run directory OUTPUT")
    mine.add_argument("input", help="pairs (anchor, positive) or queries file; the places corpus for --miner geographic or mixed")
    mine.add_argument("output", help="run directory (local or s3://); the Parquet goes to OUTPUT/rounds/00000/mined")
    mine.add_argument("--config", help="YAML config file")
    add_config_flags(mine, ["mine", "index", "queries", "corpus", "model", "embed", "storage", "ray"])

    run = commands.add_parser("run", help="embed -> index -> mine into a run directory")
    run.add_argument("config", help="YAML config file (local or s3://)")
    add_config_flags(run, ["corpus", "queries", "mine", "index", "embed", "model", "storage", "ray"])
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "s3fs", "aiobotocore", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _start(cfg: RunConfig) -> None:
    from hardneg import storage
    from hardneg.ray_runtime import init_ray
    from hardneg.resources import describe, plan_resources

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.object_store_memory)
    logger.info("resources:\n  %s", describe(plan_resources(cfg)).replace("\n", "\n  "))


def cmd_embed(args: argparse.Namespace) -> int:
    from hardneg.pipelines.embed import embed_corpus
    from hardneg.summary import embed_summary

    overrides = overrides_from(args)
    overrides["corpus.path"] = args.corpus
    cfg = load_config(args.config, overrides)
    _start(cfg)
    manifest = embed_corpus(cfg, args.output)
    print(embed_summary(manifest, args.output))
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    overrides = overrides_from(args)
    overrides["run_dir"] = args.output
    cfg = load_config(args.config, overrides)
    where = "corpus.path" if cfg.mine.miner in ("geographic", "mixed") else "queries.path"
    return _run_round(parse_config(cfg.model_dump(mode="json", exclude_unset=True), overrides={where: args.input}))


def cmd_run(args: argparse.Namespace) -> int:
    return _run_round(load_config(args.config, overrides_from(args)))


def _run_round(cfg: RunConfig) -> int:
    from hardneg.pipelines.run import run_round
    from hardneg.summary import round_summary

    _start(cfg)
    print(round_summary(run_round(cfg)))
    return 0


COMMANDS = {"embed": cmd_embed, "mine": cmd_mine, "run": cmd_run}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except HardnegError as err:
        print(f"hardneg {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"hardneg {args.command}: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
