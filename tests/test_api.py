"""hardneg.embed / run / remine: the commands in Python, over the same steps."""

import os
import tempfile

import pytest

import hardneg
from conftest import write_jsonl
from test_rerun import PAIRS


@pytest.mark.slow
def test_run_then_remine_and_embed_in_python(ray_session, tiny_model_path, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    config = {"run_dir": str(tmp_path / "run"), "model": {"path": tiny_model_path},
              "queries": {"path": pairs, "anchor_column": "question", "positive_column": "answer"}}
    manifest = hardneg.run(config, {"mine.num_negatives": 2, "mine.format": "n-tuple"})
    assert manifest["round"] == 0 and manifest["counts"]["rows"] == len(PAIRS)
    assert "n-tuple" in manifest["outputs"]

    status, again = hardneg.remine(str(tmp_path / "run"))  # no checkpoint yet: round 0 stands
    assert status == "nothing to do" and again["round"] == 0

    with pytest.raises(ValueError, match="mine.num_negatives: 2 -> 3"):
        hardneg.run(config, {"mine.num_negatives": 3})

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": p["answer"]} for i, p in enumerate(PAIRS)])
    embedded = hardneg.embed(corpus, str(tmp_path / "embeddings"), model=tiny_model_path, options={"embed.batch_size": 4})
    assert embedded["rows"] == len(PAIRS) and embedded["dim"] == 32


def test_the_temporary_run_directories_of_a_process_are_removed_when_it_exits(tmp_path):
    """Calls without run_dir or cache_folder mine into one temporary folder per process; it goes when the process does."""
    import subprocess
    import sys

    code = ("from hardneg import api; import os; folder = api._process_cache(); "
            "open(os.path.join(folder, 'marker'), 'w').close(); print(folder)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = result.stdout.strip().splitlines()[-1]
    assert folder.startswith(tempfile.gettempdir()) and not os.path.exists(folder)
