"""Config: YAML in with safe_load, one error per bad field, named by its path."""

import pytest

from hardneg.cli import build_parser, overrides_from
from hardneg.config import load_config, parse_config
from hardneg.errors import ConfigError


def test_unknown_key_names_path_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        parse_config({"embed": {"batchsize": 3}})
    assert "embed.batchsize: unknown key; allowed keys: batch_size, block_size" in str(err.value)


def test_bad_values_are_all_reported_with_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"embed": {"dtype": "int8", "batch_size": 0}, "index": {"backend": "annoy"}})
    message = str(err.value)
    assert "embed.dtype: Input should be 'float16' or 'float32' (got 'int8')" in message
    assert "embed.batch_size: Input should be greater than or equal to 1 (got 0)" in message
    assert "index.backend: Input should be 'exact', 'flat', 'ivf', 'ivfpq', 'hnsw' or 'kdtree'" in message


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("run_dir: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))


def test_cli_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mine:\n  num_negatives: 3\nembed:\n  batch_size: 16\n")
    args = build_parser().parse_args(["run", str(path), "--num-negatives", "7", "--embed-batch-size", "8", "--no-model-normalize"])
    cfg = load_config(args.config, overrides_from(args))
    assert (cfg.mine.num_negatives, cfg.embed.batch_size, cfg.model.normalize) == (7, 8, False)


def test_embed_flags_use_bare_names():
    args = build_parser().parse_args(["embed", "c.jsonl", "out", "--model", "/m", "--batch-size", "4", "--dtype", "float16", "--no-normalize", "--drop-invalid"])
    overrides = overrides_from(args)
    assert overrides == {"model.path": "/m", "embed.batch_size": 4, "embed.dtype": "float16", "model.normalize": False, "corpus.drop_invalid": True}


def test_range_max_must_exceed_range_min():
    with pytest.raises(ConfigError, match="range_min must be smaller than range_max, got range_min=5 and range_max=3"):
        parse_config({"mine": {"range_min": 5, "range_max": 3}})


def test_nan_and_infinite_floats_are_refused_by_their_path():
    with pytest.raises(ConfigError) as err:
        parse_config({"mine": {"absolute_margin": float("nan"), "max_score": float("nan"), "min_score": float("-inf")},
                      "train": {"learning_rate": float("inf")}})
    message = str(err.value)
    assert "mine.absolute_margin: Input should be a finite number (got nan)" in message
    assert "mine.max_score: Input should be a finite number (got nan)" in message
    assert "mine.min_score: Input should be a finite number (got -inf)" in message
    assert "train.learning_rate: Input should be a finite number (got inf)" in message


def test_nan_from_a_flag_or_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mine:\n  max_score: .nan\n")
    args = build_parser().parse_args(["run", str(path), "--absolute-margin", "nan"])
    with pytest.raises(ConfigError) as err:
        load_config(args.config, overrides_from(args))
    assert "mine.max_score: Input should be a finite number (got nan)" in str(err.value)
    assert "mine.absolute_margin: Input should be a finite number (got nan)" in str(err.value)


def test_the_old_mine_batch_size_key_is_refused_with_its_new_name():
    with pytest.raises(ConfigError, match=r"mine.batch_size: renamed; use mine.composed_batch_size"):
        parse_config({"mine": {"batch_size": 16}})


def test_batch_size_of_mine_is_the_encoding_batch_size_as_in_sentence_transformers():
    args = build_parser().parse_args(["mine", "pairs.jsonl", "runs/x", "--batch-size", "8", "--composed-batch-size", "16",
                                      "--format", "labeled-list", "--output-scores"])
    assert overrides_from(args) == {"embed.batch_size": 8, "mine.composed_batch_size": 16, "mine.format": "labeled-list",
                                    "mine.output_scores": True}
