import pytest

from discohead import smoke

from conftest import LEARNING_SEED


@pytest.mark.learning
def test_smoke_run_trains_a_variant(capsys, record_property):
    """Passes when the loss went down in 8 steps (the mean of the last three below the first)."""
    assert smoke.main(["--variant", "tps-nm", "--steps", "8", "--batch-size", "2", "--seed", str(LEARNING_SEED)]) == 0
    out = capsys.readouterr().out
    assert "all variants train." in out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("tps-nm ")]
    record_property("margin", float(row[2]) / float(row[1]))  # last / first loss; passes below 1
