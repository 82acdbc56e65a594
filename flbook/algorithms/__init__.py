"""Federated algorithms, one file per method, each citing its paper and the equations it implements."""
from .base import Algorithm, Batches, LocalContext, RoundInfo
from .fedavg import FedAvg
from .fedprox import FedProx
from .scaffold import Scaffold
from .server_opt import FedAdam, FedAvgM

BASELINES = {"FedAvg": FedAvg, "FedProx": FedProx, "SCAFFOLD": Scaffold, "FedAvgM": FedAvgM, "FedAdam": FedAdam}

__all__ = ["Algorithm", "Batches", "LocalContext", "RoundInfo", "FedAvg", "FedProx", "Scaffold", "FedAvgM",
           "FedAdam", "BASELINES"]
