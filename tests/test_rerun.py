"""A re-run never answers with a stale round: other options are refused (exit 2), the same options resume."""

import os
import shutil

import pytest

from conftest import write_jsonl
from hardneg import storage
from hardneg.cli import main

PAIRS = [
    {"question": "What is the capital of France?", "answer": "Paris is the capital of France."},
    {"question": "Who wrote the novel 1984?", "answer": "George Orwell wrote Nineteen Eighty-Four."},
    {"question": "What is the largest planet?", "answer": "Jupiter is the largest planet in the solar system."},
    {"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci painted the Mona Lisa."},
    {"question": "What is the speed of light?", "answer": "Light travels at about 300,000 km per second."},
    {"question": "What is the symbol for gold?", "answer": "The chemical symbol for gold is Au."},
]


def negatives_per_row(run_dir, round_index):
    mined = storage.read_table(storage.resolve(run_dir).join("rounds", f"{round_index:05d}", "mined").url)
    return {len(negatives) for negatives in mined.column("negatives").to_pylist()}


def mine_args(tmp_path, tiny_model_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = str(tmp_path / "run")
    # In process: which options resume and which are refused is the point, not how Ray runs the stages.
    return out, ["mine", pairs, out, "--model", tiny_model_path, "--anchor-column", "question", "--positive-column", "answer",
                 "--ray-in-process", "always"]


def test_other_options_are_refused_and_the_same_options_resume_a_crashed_round(ray_session, tiny_model_path, tmp_path, capsys):
    out, base = mine_args(tmp_path, tiny_model_path)
    assert main(base + ["--num-negatives", "1"]) == 0
    assert negatives_per_row(out, 0) == {1}

    capsys.readouterr()
    assert main(base + ["--num-negatives", "2", "--relative-margin", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "mine.num_negatives: 1 -> 2" in err and "mine.relative_margin: None -> 0.05" in err and "--new-round" in err
    assert negatives_per_row(out, 0) == {1}

    # A crash before the mined table was committed: the same options resume and commit the round again.
    here = storage.resolve(out).join("rounds", "00000")
    os.remove(here.join("MANIFEST.json").path)
    shutil.rmtree(here.join("mined").path)
    assert main(base + ["--num-negatives", "1", "--embed-batch-size", "4"]) == 0  # a speed knob is not an option that differs
    assert storage.is_committed(here) and negatives_per_row(out, 0) == {1}


@pytest.mark.slow
def test_a_new_round_takes_other_options_and_keeps_the_committed_one(ray_session, tiny_model_path, tmp_path):
    out, base = mine_args(tmp_path, tiny_model_path)
    assert main(base + ["--num-negatives", "1"]) == 0
    assert main(base + ["--num-negatives", "2", "--new-round"]) == 0
    assert negatives_per_row(out, 1) == {2}
    assert negatives_per_row(out, 0) == {1}  # the committed round is never rewritten
