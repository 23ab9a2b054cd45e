"""The console: bars only in a terminal, stage lines in a log, --quiet and -v."""

import logging

import pytest
from tqdm import tqdm

from hardneg import console
from hardneg.cli import build_parser


@pytest.fixture
def as_log(monkeypatch):
    """stdout/stderr are not terminals (what pytest's capture gives too); progress allowed by the env."""
    monkeypatch.setattr(console, "interactive", lambda: False)
    monkeypatch.setitem(console._state, "quiet", False)


def test_in_a_log_there_are_no_bars_and_stages_log_start_and_end(as_log, caplog):
    assert not console.show_progress()
    items = range(3)
    assert console.progress(items, "mine") is items  # no tqdm wrapper
    caplog.set_level(logging.INFO, logger="hardneg")
    with console.stage("embed corpus", rows=2428):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "hardneg"]
    assert lines[0] == "embed corpus (2,428 rows): started" and lines[1].startswith("embed corpus: done in ")
    assert len(lines) == 2  # the heartbeat logs only after HEARTBEAT_SECONDS
    assert console.worker_env() == console.QUIET_WORKER_ENV  # transformers' weight-loading bars off in workers


def test_in_a_terminal_bars_unless_quiet(monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: True)
    monkeypatch.setenv("HARDNEG_PROGRESS", "1")
    monkeypatch.setitem(console._state, "quiet", False)
    assert console.show_progress() and console.worker_env() == {}
    assert isinstance(console.progress(range(3), "mine"), tqdm)
    monkeypatch.setitem(console._state, "quiet", True)
    assert not console.show_progress()


def test_ray_data_logs_no_status_blocks_in_a_log(as_log):
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars
    try:
        console.configure_ray_data()
        assert ctx.enable_progress_bars is False and ctx.print_on_execution_start is False
    finally:
        ctx.enable_progress_bars = before


@pytest.mark.parametrize("flags, level", [([], logging.INFO), (["-q"], logging.WARNING), (["-v"], logging.DEBUG)])
def test_quiet_and_verbose_set_the_log_level(flags, level, monkeypatch):
    monkeypatch.setitem(console._state, "quiet", False)
    for key in console.QUIET_WORKER_ENV:  # setup() sets them for the driver; give them back afterwards
        monkeypatch.delenv(key, raising=False)
    root = logging.getLogger()
    before = root.level
    try:
        args = build_parser().parse_args(flags + ["inspect", "somewhere"])
        console.setup(args.verbose, args.quiet)
        assert root.level == level
    finally:
        root.setLevel(before)
