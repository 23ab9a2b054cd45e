"""Bad corpora fail at the door with file, row and column; nothing is written."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import in_process, write_jsonl

from hardneg import storage
from hardneg.config import parse_config
from hardneg.corpus import validate_corpus
from hardneg.errors import InputError
from hardneg.pipelines.embed import embed_corpus


def corpus_cfg(path, **extra):
    return parse_config({"corpus": {"path": str(path), **extra}}).corpus


def test_duplicate_ids_name_both_files_rows(ray_session, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": 3, "text": "three"}, {"id": 2, "text": "two again"}])
    with pytest.raises(InputError, match=r"b\.jsonl: row 1, column id: duplicate id 2"):
        validate_corpus(corpus_cfg(tmp_path))


def test_missing_columns_are_named(ray_session, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"doc_id": 1, "body": "x"}])
    with pytest.raises(InputError, match=r"c\.jsonl: missing column\(s\) id, text .*columns found: doc_id, body"):
        validate_corpus(corpus_cfg(tmp_path))
    ok = validate_corpus(corpus_cfg(tmp_path, id_column="doc_id", text_column="body"))
    assert ok.num_valid == 1


def test_empty_and_null_text(ray_session, tmp_path):
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["fine", "", None, "   "]}), tmp_path / "c.parquet")
    with pytest.raises(InputError) as err:
        validate_corpus(corpus_cfg(tmp_path))
    message = str(err.value)
    assert "c.parquet: row 1, column text: empty text" in message
    assert "c.parquet: row 2, column text: null text" in message
    assert "c.parquet: row 3, column text: empty text" in message
    assert "nothing was written" in message


def test_non_string_text(ray_session, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "ok"}, {"id": 2, "text": 42}])
    with pytest.raises(InputError, match=r"c\.jsonl: row 1, column text: int value where earlier rows hold str"):
        validate_corpus(corpus_cfg(tmp_path))


def test_null_id(ray_session, tmp_path):
    pq.write_table(pa.table({"id": pa.array([1, None], pa.int64()), "text": ["a", "b"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"c\.parquet: row 1, column id: null id"):
        validate_corpus(corpus_cfg(tmp_path))


def test_rejected_corpus_writes_nothing(ray_session, tiny_model_path, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    cfg = parse_config({"corpus": {"path": str(tmp_path / "c.jsonl")}, "model": {"path": tiny_model_path}})
    with pytest.raises(InputError, match="duplicate id 1"):
        embed_corpus(cfg, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_drop_invalid_drops_and_counts(ray_session, tiny_model_path, tmp_path):
    rows = [{"id": 1, "text": "a"}, {"id": 1, "text": "dup"}, {"id": 2, "text": ""}, {"id": 3, "text": "c"}]
    write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = parse_config({"corpus": {"path": str(tmp_path / "c.jsonl"), "drop_invalid": True}, "model": {"path": tiny_model_path}})
    with in_process(cfg):  # what is dropped is the point: embedded in this process
        manifest = embed_corpus(cfg, str(tmp_path / "out"))
    assert manifest["rows"] == 2 and manifest["dropped"] == {"invalid": 1, "duplicate_id": 1}
    assert sorted(storage.read_table(str(tmp_path / "out")).column("id").to_pylist()) == [1, 3]


def test_no_corpus_files(ray_session, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no Parquet"):
        validate_corpus(corpus_cfg(tmp_path))


def test_float_ids_are_refused_with_file_row_and_column(ray_session, tmp_path):
    write_jsonl(tmp_path / "c.jsonl", [{"id": None, "text": "none"}, {"id": 0.0, "text": "zero"}, {"id": 1.0, "text": "one"}])
    with pytest.raises(InputError, match=r"c\.jsonl: row 1, column id: float id 0\.0 .*ids must be strings or integers"):
        validate_corpus(corpus_cfg(tmp_path, drop_invalid=True))  # a column type, not a row: dropping does not help


def test_files_giving_ids_different_types_name_both_files(ray_session, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "one"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "ex"}])
    with pytest.raises(InputError, match=r"a\.jsonl and .*b\.jsonl: column id holds integer values in the first and string "
                                         r"values in the second"):
        validate_corpus(corpus_cfg(tmp_path))


def test_int32_and_int64_ids_or_string_and_large_string_texts_agree(ray_session, tmp_path):
    pq.write_table(pa.table({"id": pa.array([1], pa.int32()), "text": ["one"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([2], pa.int64()), "text": pa.array(["two"], pa.large_string())}), tmp_path / "b.parquet")
    assert validate_corpus(corpus_cfg(tmp_path)).num_valid == 2


def test_invalid_utf8_names_row_and_column(ray_session, tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'{"id": 1, "text": "fine"}\n{"id": 2, "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl: row 1, column text: not valid UTF-8 \(unexpected end of data at byte 3"):
        validate_corpus(corpus_cfg(tmp_path))


def test_a_json_line_longer_than_arrows_block_is_read_whole(tmp_path):
    long_text = "word " * (2 << 20)  # 10 MiB, ten times Arrow's default block
    write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "text": long_text}, {"id": 2, "text": "short"}])
    table = storage.read_table_file(storage.resolve(str(tmp_path / "c.jsonl")), ["id", "text"])
    assert table.column("text").to_pylist() == [long_text, "short"]


def test_rows_past_the_first_scan_batch_are_named_by_their_file_row(tmp_path):
    """The door scans a Parquet file SCAN_ROWS rows at a time (no Ray: the driver's threads); a bad row
    in a later batch, and an id repeated across batches, are named by their row in the file."""
    from hardneg.corpus import SCAN_ROWS

    rows = 2 * SCAN_ROWS + 100
    texts = [f"text {i}" for i in range(rows)]
    ids = [f"d{i}" for i in range(rows)]
    texts[SCAN_ROWS + 7] = "  "
    ids[2 * SCAN_ROWS + 50] = "d3"
    pq.write_table(pa.table({"id": ids, "text": texts}), tmp_path / "big.parquet", row_group_size=SCAN_ROWS // 2)
    with pytest.raises(InputError) as err:
        validate_corpus(corpus_cfg(tmp_path))
    assert f"big.parquet: row {SCAN_ROWS + 7}, column text: empty text" in str(err.value)
    assert f"big.parquet: row {2 * SCAN_ROWS + 50}, column id: duplicate id 'd3'" in str(err.value)
    kept = validate_corpus(corpus_cfg(tmp_path, drop_invalid=True))
    assert kept.drop_rows[0].tolist() == [SCAN_ROWS + 7, 2 * SCAN_ROWS + 50]
    assert len(kept.id_hashes) == rows - 2  # the valid ids' hashes, what positives and own embeddings are matched against


def test_invalid_utf8_past_the_first_scan_batch_names_its_file_row(tmp_path):
    from hardneg.corpus import SCAN_ROWS

    rows = SCAN_ROWS + 10
    texts = pa.array([f"text {i}".encode() for i in range(rows - 1)] + [b"caf\xe9"], pa.binary()).cast(pa.string(), safe=False)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(rows)], "text": texts}), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=rf"bad\.parquet: row {rows - 1}, column text: not valid UTF-8"):
        validate_corpus(corpus_cfg(tmp_path))


def test_a_file_that_is_not_parquet_is_named_by_the_streaming_scan(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError, match=r"broken\.parquet: cannot be read as Parquet"):
        validate_corpus(corpus_cfg(tmp_path))
