"""A checkpoint file cannot run code when it is loaded."""

import torch
import pytest

from hardneg.errors import StorageError
from hardneg.trainers.train_loop import OPTIMIZER_FILE, load_training_state


# --- 2: optimizer state loads with weights_only=True -----------------------------------------------


class WritesAFile:
    """What a malicious checkpoint could hold: unpickling it would create ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_payload_in_the_optimizer_state_is_refused(tmp_path):
    owned = tmp_path / "owned"
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"optimizer": WritesAFile(str(owned)), "logit_scale": {}}, checkpoint / OPTIMIZER_FILE)
    with pytest.raises(StorageError) as err:
        load_training_state(str(checkpoint))
    assert f"{checkpoint / OPTIMIZER_FILE}: refused to load" in str(err.value)
    assert "Unsupported global" in str(err.value)
    assert not owned.exists()


def test_a_real_optimizer_state_loads(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    torch.save({"optimizer": optimizer.state_dict(), "logit_scale": {"log_scale": torch.tensor(2.0)}}, tmp_path / OPTIMIZER_FILE)
    saved = load_training_state(str(tmp_path))
    fresh = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(saved["optimizer"])
    assert float(saved["logit_scale"]["log_scale"]) == 2.0 and fresh.state_dict()["state"][0]["step"] == 1
