"""``hardneg`` command line: run | embed | mine | train | remine | inspect | report.

Every config value is a flag. The sections a command is about take bare names
(``--num-negatives``, ``--batch-size``); every field of every section is also
reachable as ``--SECTION-FIELD`` (``--embed-batch-size``, ``--index-nprobe``).
Flags override the ``--config`` YAML, which overrides the defaults.

Exit codes: 0 done (or nothing to do), 1 failure, 2 bad input or config.
A run directory locked by another live writer exits 1 (nothing was written; retry when it ends).

Before anything else a command applies the storage settings (``--endpoint-url``, ``--region``, else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), so even the config file is read from the right
endpoint, and an endpoint that does not answer is one line naming it (exit 1). Then the door checks
(``hardneg.door``) refuse bad config, models and inputs before Ray starts, writing nothing, and the
writing commands (run, mine, train, remine) take the run directory's lock
(``hardneg.lease``) for their whole run. ``embed`` writes no run directory and takes no lock.

``hardneg train CONFIG`` runs the re-mining loop (round 0, then blocks of ``train.remine_every``
epochs, each followed by a round re-mined with the new checkpoint). ``hardneg remine RUN_DIR`` is
the orchestrator's step: the newest checkpoint (or ``--checkpoint PATH``) becomes the next round;
it prints ``done`` or ``nothing to do`` (exit 0 both), and with ``--json`` only the round manifest
goes to stdout. ``hardneg inspect RUN_DIR`` lists the committed rounds and checkpoints and names the
report. ``run``, ``mine``, ``train`` and ``remine`` (re)write ``RUN_DIR/report.html`` (``hardneg.report``);
``hardneg report RUN_DIR [-o FILE]`` writes it on demand. ``-q`` keeps only warnings and the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import typing
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel

from hardneg import console
from hardneg.config import RunConfig, load_config, parse_config
from hardneg.errors import HardnegError, InputError

logger = logging.getLogger("hardneg")

EXIT_CODES = "exit codes: 0 done or nothing to do, 1 failure (or the run directory is locked by another writer), 2 bad input or config"

SECTIONS = {name: field.annotation for name, field in RunConfig.model_fields.items() if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
OWN_EMBEDDINGS = ("embed.corpus_embeddings", "embed.query_embeddings")  # a round's, not `hardneg embed`'s
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


def add_config_flags(parser: argparse.ArgumentParser, primary: Sequence[str], exclude: Sequence[str] = ()) -> None:
    """Add a flag for every config field but ``exclude`` (dotted names); ``primary`` sections also get bare names."""
    taken: set[str] = {"config", "output", "json"}
    group = parser.add_argument_group("config values (override --config)")
    for section in list(primary) + [s for s in SECTIONS if s not in primary]:
        for field_name, field in SECTIONS[section].model_fields.items():
            dotted = f"{section}.{field_name}"
            if dotted in exclude:
                continue
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
    parser = argparse.ArgumentParser(prog="hardneg", description="Hard-negative mining for contrastive embedding models.",
                                     epilog=EXIT_CODES)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the final summary")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser("embed", help="embed a corpus into Parquet shards")
    embed.add_argument("corpus", help="corpus file, folder or glob (Parquet/JSONL; local or s3://)")
    embed.add_argument("output", help="output folder (local or s3://)")
    embed.add_argument("--config", help="YAML config file")
    add_config_flags(embed, ["model", "embed", "corpus", "storage", "ray"], exclude=OWN_EMBEDDINGS)

    mine = commands.add_parser("mine", help="embed -> index -> mine INPUT into the run directory OUTPUT")
    mine.add_argument("input", help="pairs (anchor, positive) or queries file; the places corpus for --miner geographic or mixed")
    mine.add_argument("output", help="run directory (local or s3://); the Parquet goes to OUTPUT/rounds/00000/mined")
    mine.add_argument("--config", help="YAML config file")
    _add_new_round_flag(mine)
    add_config_flags(mine, ["mine", "index", "queries", "corpus", "model", "embed", "storage", "ray"])

    run = commands.add_parser("run", help="embed -> index -> mine into a run directory")
    run.add_argument("config", help="YAML config file (local or s3://)")
    _add_new_round_flag(run)
    add_config_flags(run, ["corpus", "queries", "mine", "index", "embed", "model", "storage", "ray"])

    train = commands.add_parser("train", help="the re-mining loop: mine, train a block, re-mine, ... to train.epochs",
                                epilog=EXIT_CODES)
    train.add_argument("config", help="YAML config file (local or s3://), or a run directory to continue (its run.yaml)")
    train.add_argument("--max-blocks", type=int, default=None, help="train at most this many blocks now (orchestrators: 1; 0 only makes round 0)")
    add_config_flags(train, ["train", "model", "mine", "index", "queries", "corpus", "embed", "storage", "ray"])

    remine = commands.add_parser("remine", help="turn the newest checkpoint into the next round (idempotent)", epilog=EXIT_CODES)
    remine.add_argument("run_dir", help="run directory (local or s3://) holding run.yaml")
    remine.add_argument("--checkpoint", default="latest", help="'latest' (the newest recorded) or a checkpoint folder")
    remine.add_argument("--json", action="store_true", help="print only the round manifest as JSON on stdout")
    _add_storage_flags(remine)

    inspect = commands.add_parser("inspect", help="committed rounds (encoder, counts, figures, eval) and checkpoints",
                                  epilog=EXIT_CODES)
    inspect.add_argument("run_dir", help="run directory (local or s3://)")
    inspect.add_argument("--json", action="store_true", help="print the rounds and checkpoints as JSON")
    _add_storage_flags(inspect)

    report = commands.add_parser("report", help="write the run's HTML report (RUN_DIR/report.html)", epilog=EXIT_CODES)
    report.add_argument("run_dir", help="run directory (local or s3://)")
    report.add_argument("-o", "--output", help="where to write it (local or s3://; default RUN_DIR/report.html)")
    _add_storage_flags(report)
    return parser


def _add_new_round_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-round", action="store_true",
                        help="mine the next round of an existing run directory with these options (without it, options "
                             "other than the run directory's run.yaml are refused, exit 2)")


def _add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """``--endpoint-url`` / ``--region`` for the commands that take no config flags (they read run.yaml)."""
    for field_name in ("endpoint_url", "region"):
        field = SECTIONS["storage"].model_fields[field_name]
        parser.add_argument(f"--{field_name}".replace("_", "-"), f"--storage-{field_name}".replace("_", "-"),
                            dest=f"storage.{field_name}", default=None, help=field.description)


def _configure_storage(args: argparse.Namespace) -> None:
    """Apply ``--endpoint-url`` / ``--region`` (else the AWS_ENDPOINT_URL* variables) before the first byte is read."""
    from hardneg import storage

    storage.configure(getattr(args, "storage.endpoint_url", None), getattr(args, "storage.region", None))


def _load(args: argparse.Namespace, path: Optional[str], overrides: dict) -> RunConfig:
    """The config at ``path`` read through the flags' storage settings; then its own settings apply."""
    from hardneg import storage

    _configure_storage(args)
    if path:
        storage.check_reachable(path)
    cfg = load_config(path, overrides)
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)  # flags are overrides: they still win
    return cfg


def _locked(cfg: RunConfig, command: str):
    """Hold the run directory's lock (``RUN_DIR/LOCK.json``) for a writing command's whole run."""
    from hardneg.lease import hold_run_dir

    return hold_run_dir(cfg.run_dir, cfg.storage.lease_ttl, command)


def cmd_embed(args: argparse.Namespace) -> int:
    overrides = overrides_from(args)
    overrides["corpus.path"] = args.corpus
    cfg = _load(args, args.config, overrides)
    from hardneg.summary import embed_summary

    print(embed_summary(embed_into(cfg, args.output), args.output))
    return 0


def embed_into(cfg: RunConfig, output: str) -> dict:
    """The door, Ray, then the corpus embedded into ``output`` (``hardneg embed``, ``hardneg.embed``); its manifest."""
    from hardneg import door

    corpus = door.check_embed(cfg, output)
    from hardneg.pipelines.embed import embed_corpus  # torch and Ray Data load only past the door
    from hardneg.ray_runtime import round_executor

    with round_executor(cfg, [cfg.corpus.path]):
        return embed_corpus(cfg, output, corpus, cfg.model.corpus_prompt)


def cmd_mine(args: argparse.Namespace) -> int:
    overrides = overrides_from(args)
    overrides["run_dir"] = args.output
    cfg = _load(args, args.config, overrides)
    where = "corpus.path" if cfg.mine.miner in ("geographic", "mixed") else "queries.path"
    cfg = parse_config(cfg.model_dump(mode="json", exclude_unset=True), overrides={where: args.input})
    return _run_round(cfg, "mine", args.new_round)


def cmd_run(args: argparse.Namespace) -> int:
    return _run_round(_load(args, args.config, overrides_from(args)), "run", args.new_round)


def _run_round(cfg: RunConfig, command: str, new_round: bool = False) -> int:
    from hardneg.report import report_line
    from hardneg.summary import round_summary

    manifest = mine_round(cfg, command, new_round)
    print(round_summary(manifest))
    print(report_line(cfg.run_dir))
    return 0


def mine_round(cfg: RunConfig, command: str = "mine", new_round: bool = False) -> dict:
    """The door, the run directory's lock, Ray, then round 0 (or, with ``new_round``, the round after the newest
    committed one); the round's manifest. What ``hardneg mine`` / ``run`` and ``hardneg.mine_hard_negatives`` run."""
    from hardneg import door

    door.check_round(cfg, new_round=new_round)
    from hardneg.pipelines.run import run_round  # torch and Ray Data load only past the door
    from hardneg.ray_runtime import round_executor
    from hardneg.rundir import new_round as next_round

    with _locked(cfg, command), round_executor(cfg, [cfg.queries.path, cfg.corpus.path]):
        return run_round(cfg, next_round(cfg.run_dir) if new_round else 0)


def cmd_train(args: argparse.Namespace) -> int:
    from hardneg import door, storage

    overrides = overrides_from(args)
    _configure_storage(args)
    storage.check_reachable(args.config)
    is_run_dir = storage.exists(storage.resolve(args.config).join("run.yaml"))
    cfg = load_run(args.config, overrides) if is_run_dir else _load(args, args.config, overrides)
    if cfg.run_dir:
        cfg.run_dir = storage.resolve(cfg.run_dir).url  # Ray Train's storage_path must be absolute
    door.check_round(cfg, training=True)
    from hardneg.pipelines.loop import train_loop  # torch and Ray Train load only past the door
    from hardneg.pipelines.remine import run_state
    from hardneg.ray_runtime import start_ray
    from hardneg.report import report_line
    from hardneg.summary import run_summary

    with _locked(cfg, "train"):
        start_ray(cfg)  # Ray Train: never in process
        train_loop(cfg, args.max_blocks)
        print(run_summary(run_state(cfg.run_dir)))
        print(report_line(cfg.run_dir))
    return 0


def load_run(run_dir: str, overrides: Optional[dict] = None) -> RunConfig:
    """The config of an existing run directory (its ``run.yaml``), with ``run_dir`` pointing at it."""
    from hardneg import storage

    storage.check_reachable(run_dir)
    loc = storage.resolve(run_dir)
    if not storage.exists(loc.join("run.yaml")):
        raise InputError(f"{run_dir}: not a hardneg run directory (no run.yaml); make one with `hardneg run` or `hardneg train`")
    cfg = load_config(loc.join("run.yaml").url, {**(overrides or {}), "run_dir": loc.url})
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    return cfg


def cmd_remine(args: argparse.Namespace) -> int:
    _configure_storage(args)
    cfg = load_run(args.run_dir, overrides_from(args))
    from hardneg.report import report_line

    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        status, manifest = remine_run(cfg, args.checkpoint)
        report = report_line(cfg.run_dir)
    line = f"hardneg remine: {status}: round {manifest['round']} (encoder {manifest['encoder']})\n{report}"
    if args.json:
        print(line, file=sys.stderr)
        print(json.dumps(manifest, sort_keys=True, default=str))
    else:
        print(line)
    return 0


def remine_run(cfg: RunConfig, checkpoint: str = "latest") -> tuple[str, dict]:
    """The door, the lock, Ray, then ``pipelines.remine.remine`` (``hardneg remine``, ``hardneg.remine``)."""
    from hardneg import door

    door.check_round(cfg, checkpoint=None if checkpoint == "latest" else checkpoint)
    from hardneg.pipelines.remine import remine  # torch and Ray Data load only past the door
    from hardneg.ray_runtime import round_executor

    with _locked(cfg, "remine"), round_executor(cfg, [cfg.queries.path, cfg.corpus.path]):
        return remine(cfg, checkpoint)


def cmd_inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hardneg import storage
    from hardneg.pipelines.remine import run_state
    from hardneg.report import report_location
    from hardneg.summary import run_summary

    _configure_storage(args)
    state = run_state(load_run(args.run_dir, overrides_from(args)).run_dir)
    report = report_location(state.run_dir)
    report_url = report.url if storage.exists(report) else None
    if args.json:
        print(json.dumps({**asdict(state), "report": report_url}, sort_keys=True, default=str))
    else:
        print(run_summary(state))
        print(f"  report: {report_url or f'none yet (make it with `hardneg report {state.run_dir}`)'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hardneg.report import write_report

    _configure_storage(args)
    cfg = load_run(args.run_dir, overrides_from(args))
    print(f"hardneg report: {write_report(cfg.run_dir, args.output)}")
    return 0


COMMANDS = {"embed": cmd_embed, "mine": cmd_mine, "run": cmd_run, "train": cmd_train, "remine": cmd_remine, "inspect": cmd_inspect,
            "report": cmd_report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from hardneg import storage

    args = build_parser().parse_args(argv)
    console.setup(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except HardnegError as err:
        print(f"hardneg {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except storage.CONNECTION_ERRORS as err:  # the endpoint went away after the door checked it
        print(f"hardneg {args.command}: error: {storage.unreachable('an s3:// path', err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hardneg {args.command}: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
