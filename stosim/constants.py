"""Physical constants in the units the kernels use (from scipy.constants, never hand-typed).

- ``HBAR_ERG_S``: reduced Planck constant in erg s (1 J = 1e7 erg).
- ``ELEMENTARY_CHARGE_C``: elementary charge in C (I/e is a rate in 1/s, docs/physics.md section 1).
- ``BOLTZMANN_ERG_K``: Boltzmann constant in erg/K.
- ``BOHR_MAGNETON_ERG_G``: Bohr magneton in erg/G (1 J/T = 1e3 erg/G).
"""

from scipy import constants as _c

HBAR_ERG_S: float = _c.hbar * 1e7
ELEMENTARY_CHARGE_C: float = _c.e
BOLTZMANN_ERG_K: float = _c.k * 1e7
BOHR_MAGNETON_ERG_G: float = _c.physical_constants["Bohr magneton"][0] * 1e3

__all__ = ["HBAR_ERG_S", "ELEMENTARY_CHARGE_C", "BOLTZMANN_ERG_K", "BOHR_MAGNETON_ERG_G"]
