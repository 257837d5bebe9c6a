"""Tunnel magnetoresistance readout (docs/physics.md section 2).

R(m) = R_P + (R_AP - R_P) (1 - m.p) / 2 = R_P [1 + TMR (1 - m.p) / 2],  TMR = (R_AP - R_P)/R_P.

At a fixed bias the output is affine in m.p: V = I_bias R(m) at a bias current (A -> V),
I = V_bias / R(m) at a bias voltage (V -> A).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resistance_ohm", "voltage_at_bias_current_v", "current_at_bias_voltage_a"]


def resistance_ohm(m_dot_p: np.ndarray, parallel_resistance_ohm: float, tmr_ratio: float) -> np.ndarray:
    """MTJ resistance in Ohm for the projection m.p in [-1, 1]: R_P at m.p = 1, R_AP = R_P (1 + TMR) at -1."""
    return parallel_resistance_ohm * (1.0 + 0.5 * tmr_ratio * (1.0 - np.asarray(m_dot_p)))


def voltage_at_bias_current_v(m_dot_p: np.ndarray, parallel_resistance_ohm: float, tmr_ratio: float,
                              bias_current_a: float) -> np.ndarray:
    """Output voltage V = I_bias R(m) in V."""
    return bias_current_a * resistance_ohm(m_dot_p, parallel_resistance_ohm, tmr_ratio)


def current_at_bias_voltage_a(m_dot_p: np.ndarray, parallel_resistance_ohm: float, tmr_ratio: float,
                              bias_voltage_v: float) -> np.ndarray:
    """Output current I = V_bias / R(m) in A."""
    return bias_voltage_v / resistance_ohm(m_dot_p, parallel_resistance_ohm, tmr_ratio)
