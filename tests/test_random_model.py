import pytest
import torch

from dinoscope.errors import ModelError
from dinoscope.models import load_model


@pytest.mark.slow
def test_random_models_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_model("random:vits16", device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    b = load_model("random:vits16", device="cpu")
    assert a.revision == "random-seed0" and a.num_registers == 4 and a.hidden_size == 384 and a.num_layers == 12
    for (name, pa), (_, pb) in zip(a.module.named_parameters(), b.module.named_parameters()):
        assert torch.equal(pa, pb), name


def test_unknown_random_architecture():
    with pytest.raises(ModelError, match="random:NAME"):
        load_model("random:convnext-tiny", device="cpu")
