import pytest

from discohead import smoke


@pytest.mark.learning
def test_smoke_run_trains_a_variant(capsys):
    assert smoke.main(["--variant", "tps-nm", "--steps", "8", "--batch-size", "2"]) == 0
    assert "all variants train." in capsys.readouterr().out
