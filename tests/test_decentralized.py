import numpy as np
import pytest
import torch

from flbook import DivergenceError, Federation, make_model
from flbook import topology as T
from flbook.algorithms import FedAvg
from flbook.algorithms.base import Algorithm
from flbook.decentralized import Decentralized, Gossip, MixInfo
from flbook.participation import Uniform

SIZES = (20, 55, 90, 35, 130, 60, 25, 75)  # unequal on purpose: FedAvg's size weights must matter


def _parts(n_samples, sizes=SIZES, seed=0):
    ids = np.random.default_rng(seed).permutation(n_samples)
    cuts = np.cumsum((0,) + sizes)
    return [np.sort(ids[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def _fed(data, **kwargs):
    model = make_model("mlp", data.input_shape, data.n_classes, hidden=(32,))
    settings = dict(local_steps=3, batch_size=16, lr=0.1, seed=3)
    return Federation(data, _parts(len(data.y_train)), model, **(settings | kwargs))


def _fedavg_mixing(fed):
    return T.uniform_weights(T.complete(fed.n_clients), sizes=fed.client_sizes)


@pytest.mark.parametrize("settings", [{"executor": "batched"}, {"executor": "loop"},
                                      {"executor": "batched", "local_epochs": 0.5, "local_steps": 1}])
def test_complete_graph_with_size_weights_q1_full_participation_equals_fedavg(digits_data, settings):
    fed = _fed(digits_data, **settings)
    assert len(set(fed.client_sizes.tolist())) == len(SIZES)
    server = fed.run(FedAvg(), rounds=4, progress=False, label="FedAvg")
    net = Decentralized(fed, _fedavg_mixing(fed))
    network = net.run(FedAvg(), rounds=4, progress=False, label="FedAvg")
    X = net.final_models["FedAvg"]  # (N, P)
    assert torch.allclose(X, fed.final_models["FedAvg"].expand_as(X), atol=1e-5)
    assert np.allclose(network["test_acc"], server["test_acc"])
    assert np.allclose(network["test_loss"], server["test_loss"], atol=1e-5)
    assert np.allclose(network["local_acc"], server["test_acc"])  # every node holds the FedAvg model
    assert (network["consensus_distance"] < 1e-10).all()
    P = fed.model.n_params
    assert network["bytes_sent"].tolist() == [t * 8 * 7 * P * 4 for t in range(5)]  # every node to all 7 others


def test_complete_graph_with_uniform_weights_is_the_unweighted_average_not_fedavg(digits_data):
    fed = _fed(digits_data)
    fed.run(FedAvg(), rounds=3, progress=False, label="FedAvg")
    net = Decentralized(fed, T.metropolis_hastings(T.complete(fed.n_clients)))
    history = net.run(FedAvg(), rounds=3, progress=False, label="FedAvg")
    X = net.final_models["FedAvg"]
    assert (history["consensus_distance"] < 1e-10).all()  # still one exact (unweighted) average per round
    assert not torch.allclose(X[0], fed.final_models["FedAvg"], atol=1e-3)


def test_sparse_graph_keeps_nodes_apart_and_more_gossip_steps_bring_them_together(digits_data):
    fed = _fed(digits_data)
    W = T.metropolis_hastings(T.ring(fed.n_clients))
    one = Decentralized(fed, W).run(FedAvg(), rounds=5, progress=False)
    four = Decentralized(fed, W, gossip_steps=4).run(FedAvg(), rounds=5, progress=False)
    assert one["consensus_distance"].iloc[0] == 0.0  # all nodes start from x^0
    assert (one["consensus_distance"].iloc[1:] > 1e-6).all()
    assert (four["consensus_distance"].iloc[1:] < one["consensus_distance"].iloc[1:]).all()
    P = fed.model.n_params
    assert one["bytes_sent"].iloc[-1] == 5 * 16 * P * 4 and four["bytes_sent"].iloc[-1] == 4 * 5 * 16 * P * 4
    # the averaged model is evaluated besides the node models
    assert one["test_acc"].iloc[-1] != one["local_acc"].iloc[-1]


def test_same_seed_same_history(digits_data):
    fed = _fed(digits_data)
    net = Decentralized(fed, T.metropolis_hastings(T.torus(2, 4)), availability=0.5)
    first, second = (net.run(FedAvg(), rounds=3, progress=False).drop(columns="wall_time") for _ in range(2))
    assert first.equals(second)


def test_unavailable_nodes_keep_their_model_and_state_and_send_nothing(digits_data):
    fed = _fed(digits_data)
    W = T.metropolis_hastings(T.ring(fed.n_clients))
    net = Decentralized(fed, W, availability=Uniform(count=3))
    algorithm = _Counting()
    state = net.start(algorithm)
    state.X = state.X + torch.randn(state.X.shape, generator=torch.Generator().manual_seed(0))  # distinct models
    before = state.X.clone()
    net.train_round(state)
    trained = state.client_state["rounds"] == 1
    assert trained.sum() == 3 == state.active
    assert torch.equal(state.X[~trained], before[~trained])
    active = torch.zeros(fed.n_clients, dtype=torch.bool)
    active[trained] = True
    assert state.bytes_sent == T.gossip_bytes(T.restrict(W, active), fed.model.n_params)
    assert 0 < state.bytes_sent < T.gossip_bytes(W, fed.model.n_params)


class _Counting(FedAvg):
    """FedAvg whose nodes count the rounds they trained in: a persistent per-node state."""

    def init_client_state(self, x):
        return {"rounds": torch.zeros((), dtype=torch.long)}

    def client_update(self, down, client_state, batches, ctx):
        message, _ = super().client_update(down, client_state, batches, ctx)
        return message, {"rounds": client_state["rounds"] + 1}


class _NoCommunication:
    """A mixer that keeps every half-step model (local training only) and records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, X, W, info):
        self.seen.append(info)
        return X

    def bytes_sent(self, W, n_params, dtype):
        return 0


def test_custom_mixer_sees_half_step_models_round_and_availability(digits_data):
    fed = _fed(digits_data)
    mixer = _NoCommunication()
    history = Decentralized(fed, T.metropolis_hastings(T.ring(fed.n_clients)), mixer=mixer,
                            availability=0.5).run(FedAvg(), rounds=3, progress=False)
    assert [info.round for info in mixer.seen] == [1, 2, 3]
    assert all(isinstance(info, MixInfo) and int(info.active.sum()) == 4 for info in mixer.seen)
    assert (history["bytes_sent"] == 0).all() and (history["consensus_distance"].iloc[1:] > 0).all()


def test_time_varying_one_peer_exponential_sends_one_model_per_node_per_round(digits_data):
    fed = _fed(digits_data)
    history = Decentralized(fed, T.one_peer_exponential(fed.n_clients)).run(FedAvg(), rounds=3, progress=False)
    assert history["bytes_sent"].iloc[-1] == 3 * fed.n_clients * fed.model.n_params * 4


class _NoDelta(Algorithm):
    name = "NoDelta"

    def client_update(self, down, client_state, batches, ctx):
        return {"x": down["x"]}, client_state

    def aggregate(self, x, server_state, messages, weights, info):
        return x, server_state


def test_bad_input(digits_data):
    fed = _fed(digits_data)
    W = T.metropolis_hastings(T.ring(fed.n_clients))
    with pytest.raises(ValueError, match="federation's 8 nodes, got 5"):
        Decentralized(fed, T.metropolis_hastings(T.ring(5)))
    with pytest.raises(ValueError, match=r"eval_nodes must be in \[1, 8\].*got 9"):
        Decentralized(fed, W, eval_nodes=9)
    with pytest.raises(ValueError, match="gossip_steps applies to the default Gossip mixer"):
        Decentralized(fed, W, mixer=Gossip(2), gossip_steps=2)
    with pytest.raises(ValueError, match=r"steps \(gossip steps per round, Q\) must be an integer >= 1, got 0"):
        Gossip(0)
    with pytest.raises(ValueError, match=r"participation fraction must be in \(0, 1\], got 0"):
        Decentralized(fed, W, availability=0)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1, got 0"):
        Decentralized(fed, W).run(FedAvg(), rounds=0)
    with pytest.raises(ValueError, match="rows summing to 1"):
        Decentralized(fed, 2 * W).run(FedAvg(), rounds=1, progress=False)
    with pytest.raises(ValueError, match="must return a message with 'delta'"):
        Decentralized(fed, W).run(_NoDelta(), rounds=1, progress=False)


def test_eval_nodes_picks_evenly_spaced_nodes(digits_data):
    fed = _fed(digits_data)
    net = Decentralized(fed, T.metropolis_hastings(T.ring(fed.n_clients)), eval_nodes=3)
    assert net.eval_ids.tolist() == [0, 4, 7]


class _Exploding(FedAvg):
    """Local updates that turn non-finite: what a too-large learning rate does."""

    def client_update(self, down, client_state, batches, ctx):
        message, state = super().client_update(down, client_state, batches, ctx)
        return {"delta": message["delta"] * float("inf")}, state


def test_divergence_is_reported_not_silent(digits_data):
    fed = _fed(digits_data)
    net = Decentralized(fed, T.metropolis_hastings(T.ring(fed.n_clients)))
    with pytest.warns(RuntimeWarning, match="diverged at round 1"):
        history = net.run(_Exploding(), rounds=5, progress=False, on_divergence="stop")
    assert history.attrs["diverged_at"] == 1 and history["round"].tolist() == [0]
    with pytest.raises(DivergenceError, match="lr=0.1"):
        net.run(_Exploding(), rounds=5, progress=False)
