"""Devices for the engine-consistency tests: the seed pMTJ and one where every term is non-zero.

The seed device has p = e_x, so every term of the right-hand side with p_y or p_z is zero
there; a consistency test run only on it cannot see such a term missing or wrong in one
engine. :func:`all_terms_array` switches everything on: a tilted reference layer (p_x, p_y,
p_z all non-zero), spin-torque asymmetry, an applied field, a larger damping, Ampere coupling
and device-to-device variability of H_K, alpha and I.
"""

from __future__ import annotations

import dataclasses
import math

from stosim.config import DeviceParameters, load_device
from stosim.physics.array import STOArray, Variability

__all__ = ["ARRAYS", "all_terms_array", "all_terms_device", "seed_array"]

_TILT = (0.6, -0.48, 0.64)  # |p| = 1: p_x, p_y, p_z all non-zero


def all_terms_device() -> DeviceParameters:
    """The seed pMTJ with a tilted reference layer, lambda = 0.35, H_appl = 350 Oe, alpha = 0.02, I = 1.5 mA."""
    norm = math.sqrt(sum(c * c for c in _TILT))
    return dataclasses.replace(
        load_device(),
        name="all-terms",
        reference_direction=tuple(c / norm for c in _TILT),
        torque_asymmetry=0.35,
        applied_field_oe=350.0,
        damping=0.02,
        current_a=1.5e-3,
    )


def seed_array(n: int) -> STOArray:
    """The seed device, mu = 500 Oe, identical devices (p = e_x: the p_y, p_z terms vanish)."""
    return STOArray.generate(load_device(), n, 500.0, seed=3)


def all_terms_array(n: int) -> STOArray:
    """The all-terms device, mu = 400 Oe, 20 % variability of H_K, alpha and I."""
    return STOArray.generate(
        all_terms_device(),
        n,
        400.0,
        seed=3,
        variability=Variability(anisotropy_field=0.2, damping=0.2, current=0.2, seed=5),
    )


ARRAYS = {"seed": seed_array, "all-terms": all_terms_array}
