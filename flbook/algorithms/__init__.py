"""Federated algorithms, one file per method, each citing its paper and the equations it implements."""
from .base import Algorithm, Batches, LocalContext, RoundInfo
from .dfedsam import DFedSAM
from .fal import FAL
from .fedamd import FedAMD, anchor_table
from .fedavg import FedAvg
from .fedfix import AsyncFedAvg, FedBuff, FedFix
from .fedld import FedLD
from .fedlex import Exploration, FedLEx, explore, guidance_matrix
from .fedprox import FedProx
from .fedspeed import FedSpeed
from .fedstale import FedStale, FedVARP
from .monna import MomentumSGD, NNAMixer
from .robust_fedavg import RobustFedAvg
from .scaffold import Scaffold
from .server_opt import FedAdam, FedAvgM
from .sfprompt import PartialFedAvg, SFPrompt
from .staleness_inversion import GradientInversion, StaleFedAvg

BASELINES = {"FedAvg": FedAvg, "FedProx": FedProx, "SCAFFOLD": Scaffold, "FedAvgM": FedAvgM, "FedAdam": FedAdam}

__all__ = ["Algorithm", "Batches", "LocalContext", "RoundInfo", "FedAvg", "FedProx", "Scaffold", "FedAvgM",
           "FedAdam", "BASELINES", "FedLD", "FedLEx", "Exploration", "explore", "guidance_matrix", "FedSpeed",
           "FedAMD", "anchor_table", "FedStale", "FedVARP", "AsyncFedAvg", "FedBuff", "FedFix",
           "GradientInversion", "StaleFedAvg", "RobustFedAvg", "SFPrompt", "PartialFedAvg", "DFedSAM",
           "MomentumSGD", "NNAMixer", "FAL"]
