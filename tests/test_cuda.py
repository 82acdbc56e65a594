"""The same code on a GPU: both executors agree there and learn.

Minibatches are drawn by a generator on the device, so CPU and GPU runs see different batches."""
import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAdam, FedAvg, FedProx, Scaffold
from flbook.executors import BatchedExecutor, LoopExecutor
from flbook.partition import dirichlet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("algorithm", [FedAvg(), FedProx(mu=0.1), Scaffold(), FedAdam()], ids=str)
def test_executors_agree_on_cuda(digits_data, algorithm):
    parts = dirichlet(digits_data.y_train, 8, 0.3, seed=0)
    losses = {}
    for executor in (LoopExecutor(), BatchedExecutor()):
        fed = Federation(digits_data, parts, "mlp", participation=0.5, device="cuda", executor=executor)
        losses[executor.name] = fed.run(algorithm, 5, progress=False).test_loss.to_numpy()
    assert np.allclose(losses["loop"], losses["batched"], atol=1e-4)
    assert losses["batched"][-1] < losses["batched"][0]


def test_default_device_is_cuda_without_override(monkeypatch):
    from flbook.runtime import default_device

    monkeypatch.delenv("FLBOOK_DEVICE")
    assert default_device().type == "cuda"
