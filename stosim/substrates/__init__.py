"""Substrates behind one interface: coupled STO arrays, FFESN, Lorenz 96 (and hardware drivers)."""

from stosim.substrates.base import Capabilities, Substrate, SubstrateDescription
from stosim.substrates.ffesn import FFESN
from stosim.substrates.lorenz96 import Lorenz96
from stosim.substrates.sto_array import CoupledSTOArray

__all__ = ["Capabilities", "Substrate", "SubstrateDescription", "CoupledSTOArray", "FFESN", "Lorenz96"]
