"""Tunnel magnetoresistance readout (docs/physics.md section 2): the one definition in stosim.

R(m) = R_P + (R_AP - R_P) (1 - m.p) / 2 = R_P [1 + TMR (1 - m.p) / 2],  TMR = (R_AP - R_P)/R_P.

At a fixed bias the output is affine in m.p: V = I_bias R(m) at a bias current (A -> V),
I = V_bias / R(m) at a bias voltage (V -> A); :func:`projection_from_voltage` inverts the first,
m.p = 1 - (2/TMR) (V/(I R_P) - 1).

Every function takes numpy arrays or torch tensors (autograd flows through them) and broadcasts
its parameters, so per-device R_P, TMR ratio or current arrays may be given.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resistance_ohm", "voltage_at_bias_current_v", "current_at_bias_voltage_a", "projection_from_voltage"]


def _array(x):
    """numpy arrays and torch tensors as they are; lists and numbers as numpy arrays."""
    return x if hasattr(x, "shape") else np.asarray(x)


def resistance_ohm(m_dot_p, parallel_resistance_ohm, tmr_ratio):
    """MTJ resistance in Ohm for the projection m.p in [-1, 1]: R_P at m.p = 1, R_AP = R_P (1 + TMR) at -1."""
    return parallel_resistance_ohm * (1.0 + 0.5 * tmr_ratio * (1.0 - _array(m_dot_p)))


def voltage_at_bias_current_v(m_dot_p, parallel_resistance_ohm, tmr_ratio, bias_current_a):
    """Output voltage V = I_bias R(m) in V."""
    return bias_current_a * resistance_ohm(m_dot_p, parallel_resistance_ohm, tmr_ratio)


def current_at_bias_voltage_a(m_dot_p, parallel_resistance_ohm, tmr_ratio, bias_voltage_v):
    """Output current I = V_bias / R(m) in A."""
    return bias_voltage_v / resistance_ohm(m_dot_p, parallel_resistance_ohm, tmr_ratio)


def projection_from_voltage(voltage_v, bias_current_a: float, parallel_resistance_ohm: float, tmr_ratio: float):
    """m.p = 1 - (2/TMR) (V/(I R_P) - 1), the inverse of :func:`voltage_at_bias_current_v` (scalar parameters).

    Raises ``ValueError`` when the relation cannot be inverted (I = 0, TMR = 0 or R_P <= 0).
    """
    if bias_current_a == 0 or tmr_ratio == 0 or parallel_resistance_ohm <= 0:
        raise ValueError(
            f"cannot infer m.p from a voltage with I = {bias_current_a!r} A, TMR ratio = {tmr_ratio!r}, "
            f"R_P = {parallel_resistance_ohm!r} Ohm (I and TMR must be non-zero, R_P > 0)"
        )
    return 1.0 - (2.0 / tmr_ratio) * (_array(voltage_v) / (bias_current_a * parallel_resistance_ohm) - 1.0)
