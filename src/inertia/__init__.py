"""computational-inertia: the physics of learning dynamics.

Computational inertia I = ½ vᵀMv + L(θ) is conserved by frictionless training dynamics,
decays under damping and is heated by noise. This package simulates those dynamics with
structure-preserving integrators and books every change of I in an energy ledger.
"""

from . import optim, systems, theory
from .dynamics import CallablePotential, Dynamics, Potential
from .energy import BOOKS, COLUMNS, ENERGIES, CompensatedSum, Ledger, kinetic
from .integrators import ALIASES, METHODS, SCHEMES, Scheme
from .monitor import InertiaMonitor
from .reporting import EnergyReport, ReportsEnergy
from .simulate import SimulationDiverged, simulate
from .trajectory import Estimate, Trajectory

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "BOOKS",
    "COLUMNS",
    "ENERGIES",
    "METHODS",
    "SCHEMES",
    "CallablePotential",
    "CompensatedSum",
    "Dynamics",
    "EnergyReport",
    "Estimate",
    "InertiaMonitor",
    "Ledger",
    "Potential",
    "ReportsEnergy",
    "Scheme",
    "SimulationDiverged",
    "Trajectory",
    "__version__",
    "kinetic",
    "optim",
    "simulate",
    "systems",
    "theory",
]
