"""Hardware safety guarantees: the safe state without close(), readings that are faults, *IDN? checks.

- An exception in user code, outside a ``with`` block and without ``close()``: the interpreter exits
  and the current source is still ramped to 0 A and switched off (checked in a subprocess, from a
  journal of what the instruments received); the same when the driver is garbage-collected.
- Readings beyond the digitizer's configured range, or outside the voltage the junctions can
  physically produce, raise InstrumentFaultError naming the reading, the range and the instrument.
- An instrument whose ``*IDN?`` is not the station file's model is refused before it is driven.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import pyvisa
import torch

from stosim.hardware import (
    INSTRUMENTS_DIR,
    STATIONS_DIR,
    DigitalTwin,
    InstrumentFaultError,
    InstrumentIdentityError,
    JournalTransport,
    LabSTOArray,
    WrappingResourceManager,
    load_station,
    physical_voltage_window,
    read_journal,
)
from stosim.simulation import DeviceLimitError

pytestmark = pytest.mark.hardware_sim

REPO = Path(__file__).resolve().parents[2]
SIM_STATION = STATIONS_DIR / "sim-lab.toml"
CS, FS, DG = "GPIB0::24::INSTR", "TCPIP0::192.168.1.20::inst0::INSTR", "TCPIP0::192.168.1.21::inst0::INSTR"
_VISA_RESOURCE_MANAGER = pyvisa.ResourceManager


def sim_definitions(folder: Path, idn: dict[str, str] | None = None) -> Path:
    """Copy the pyvisa-sim definitions to ``folder`` (fresh instrument states), replacing *IDN? answers."""
    folder.mkdir(parents=True, exist_ok=True)
    replaced = set()
    for f in INSTRUMENTS_DIR.glob("*.yaml"):
        text = f.read_text()
        for old, new in (idn or {}).items():
            if old in text:
                replaced.add(old)
                text = text.replace(old, new)
        (folder / f.name).write_text(text)
    assert replaced == set(idn or {})
    return folder / "sim-lab.yaml"


def station(**array):
    return load_station(SIM_STATION, overrides={"current_source": {"ramp_dwell": "0 s"}, "array": array})


def writes(journal: list, address: str) -> list[str]:
    return [m for a, kind, m in journal if a == address and kind == "write"]


def assert_journal_safe(journal: list) -> None:
    """The last current setpoint was 0 A, then the output went off; the field source off; no write failed."""
    assert not [e for e in journal if e[1] == "error"], [e for e in journal if e[1] == "error"]
    cs = writes(journal, CS)
    currents = [float(m.split()[1]) for m in cs if m.startswith(":SOUR:CURR ")]
    assert max(currents) == pytest.approx(2.5e-3) and currents[-1] == 0.0
    assert cs[-1] == ":OUTP OFF"
    assert cs.index(":OUTP OFF") > max(i for i, m in enumerate(cs) if m.startswith(":SOUR:CURR"))
    assert writes(journal, FS)[-1] == ":OUTP OFF"
    assert [m for a, kind, m in journal if kind == "close"] == ["", "", ""]


# ---------------------------------------------------------------------------------------
# the safe state without close()
# ---------------------------------------------------------------------------------------

USER_SCRIPT = textwrap.dedent("""
    import sys
    import pyvisa
    from stosim.hardware import JournalTransport, LabSTOArray, WrappingResourceManager, load_station

    definitions, journal, mode = sys.argv[1:4]
    real = pyvisa.ResourceManager

    def sim_rm():
        return WrappingResourceManager(real(definitions + "@sim"), lambda a, r: JournalTransport(r, journal, a))

    st = load_station("sim-lab", overrides={"current_source": {"ramp_dwell": "0 s"}})
    if mode == "driver-opens-the-manager":
        pyvisa.ResourceManager = sim_rm
        hw = LabSTOArray(st)
    else:
        hw = LabSTOArray(st, sim_rm())
    hw.open()
    print("bias on", flush=True)

    def user_code():
        raise RuntimeError("user code failed")

    user_code()
""")


@pytest.mark.parametrize("mode", ["manager-passed-in", "driver-opens-the-manager"])
def test_an_exception_in_user_code_without_close_still_ends_in_the_safe_state(tmp_path: Path, mode: str) -> None:
    """pyvisa closes its sessions in its own exit handler; the driver's must run first (it is registered after
    the resource manager was made), or the ramp-down would meet closed sessions and the current stay on."""
    definitions = sim_definitions(tmp_path / "sim")
    journal = tmp_path / "journal.txt"
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(definitions), str(journal), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == "bias on\n"
    assert proc.stderr.rstrip().endswith("RuntimeError: user code failed")
    assert "safe state could not be confirmed" not in proc.stderr
    entries = read_journal(journal)
    assert_journal_safe(entries)
    # the bias was on when the user's code failed: the ramp down came after it, from 2.5 mA in 0.5 mA steps
    cs = writes(entries, CS)
    on = cs.index(":OUTP ON")
    assert [float(m.split()[1]) for m in cs[on:] if m.startswith(":SOUR:CURR ")][-5:] == [2e-3, 1.5e-3, 1e-3, 5e-4, 0]


def test_a_driver_left_open_is_made_safe_when_it_is_garbage_collected(tmp_path: Path) -> None:
    st = load_station(
        "twin-lab",
        overrides={
            "array": {"n": 2, "duration": "30 ps", "sample_interval": "10 ps"},
            "current_source": {"ramp_dwell": "0 s"},
        },
    )
    twin = DigitalTwin(st)
    cs, fs = twin.current_source, twin.field_source
    journal = tmp_path / "journal.txt"
    hw = LabSTOArray(st, WrappingResourceManager(twin.resource_manager(), lambda a, r: JournalTransport(r, journal, a)))
    hw.open()
    hw(torch.ones(1, 6, dtype=torch.float64))
    assert (cs.values[":OUTP"], cs.values[":SOUR:CURR"], fs.values[":OUTP"]) == ("ON", 2.5e-3, "ON")
    del hw
    gc.collect()
    assert (cs.values[":OUTP"], cs.values[":SOUR:CURR"], fs.values[":OUTP"]) == ("OFF", 0.0, "OFF")
    assert cs.closed and fs.closed and twin.digitizer.closed
    entries = read_journal(journal)
    entries = [
        (CS if a == st.current_source.address else FS if a == st.field_source.address else DG, k, m)
        for a, k, m in entries
    ]
    assert_journal_safe(entries)


def test_a_closed_driver_leaves_nothing_to_do_at_exit_or_collection(tmp_path: Path) -> None:
    """close() detaches the finalizer: collecting the driver afterwards sends nothing more."""
    st = load_station(
        "twin-lab",
        overrides={
            "array": {"n": 2, "duration": "30 ps", "sample_interval": "10 ps"},
            "current_source": {"ramp_dwell": "0 s"},
        },
    )
    twin = DigitalTwin(st)
    hw = LabSTOArray(st, twin.resource_manager())
    with hw:
        pass
    finalizer = hw._finalizer
    assert finalizer is not None and not finalizer.alive
    sent = len(twin.current_source.log)
    del hw
    gc.collect()
    assert len(twin.current_source.log) == sent


# ---------------------------------------------------------------------------------------
# readings that are faults
# ---------------------------------------------------------------------------------------


class FakeRecord:
    """Delegates to a transport, but answers ``:FETC?`` with ``record``."""

    def __init__(self, inner, record: str) -> None:
        self.inner, self.record = inner, record

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def query(self, message: str) -> str:
        answer = self.inner.query(message)
        return self.record if message == ":FETC?" else answer


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (
            "1e6,1.375,1.65,1.925,2.2,1.65",
            (
                r"digitizer \(SegmentedDigitizer at TCPIP0::192.168.1.21::inst0::INSTR\): "
                r"reading 1e\+06 V on channel 0 "
                r"\(segment 0, sample 0\) is outside the configured input range \[-5 V, 5 V\] \(1 of 6 readings\)"
            ),
        ),
        (
            "-0.5,1.375,1.65,1.925,2.2,1.65",
            (
                r"digitizer \(SegmentedDigitizer at .*\): reading -0.5 V of device 0 \(sample 0, time 0\) "
                r"is outside the voltage the junctions can produce at I = 0.0025 A, \[0.3667 V, 6.6 V\] "
                r"\(I R_P = 1.1 V to I R_AP = 2.2 V"
            ),
        ),
        ("1.1,1.375,1.65,1.925,2.2,9.9E37", r"overload on channel 1 \(segment 0, sample 2\)"),
    ],
)
def test_readings_outside_the_range_or_the_physical_window_are_instrument_faults(
    tmp_path: Path, record: str, match: str
) -> None:
    rm = _VISA_RESOURCE_MANAGER(f"{sim_definitions(tmp_path / 'sim')}@sim")
    wrapped = WrappingResourceManager(rm, lambda a, r: FakeRecord(r, record) if a == DG else r)
    hw = LabSTOArray(station(), wrapped)
    with pytest.raises(InstrumentFaultError, match=match), hw:
        hw(torch.ones(1, 6, dtype=torch.float64))
    assert not hw.is_open  # the fault shut the setup down
    res = rm.open_resource(CS, read_termination="\n", write_termination="\n")
    assert float(res.query(":SOUR:CURR?")) == 0.0 and res.query(":OUTP?").strip() == "OFF"


def test_the_measured_state_refuses_voltages_the_devices_cannot_produce() -> None:
    st = station()
    hw = LabSTOArray(st, None)
    good = torch.tensor([[1.1, 1.375, 1.65, 1.925, 2.2, 1.65]], dtype=torch.float64)
    np.testing.assert_allclose(
        hw.state_from_measurement(good).numpy().ravel(), [1.0, 0.5, 0.0, -0.5, -1.0, 0.0], atol=1e-12
    )
    for v in (1e6, -0.5, 0.0, float("nan")):
        bad = good.clone()
        bad[0, 4] = v
        with pytest.raises(
            InstrumentFaultError,
            match=rf"station sim-lab: reading {re.escape(f'{v:g}')} V of device 1 "
            r"\(sample 0, time 1\) is outside",
        ):
            hw.state_from_measurement(bad)


def test_the_physical_window() -> None:
    # V = I R(m) in [I R_P, I R_AP], widened by (1 + tol); mirrored for a negative current
    assert physical_voltage_window(2.5e-3, 440.0, 1.0, 0.0) == pytest.approx((1.1, 2.2), rel=1e-15)
    assert physical_voltage_window(2.5e-3, 440.0, 1.0, 2.0) == pytest.approx((1.1 / 3, 6.6), rel=1e-15)
    assert physical_voltage_window(-2.5e-3, 440.0, 1.0, 0.0) == pytest.approx((-2.2, -1.1), rel=1e-15)
    with pytest.raises(ValueError, match="reading tolerance = -1 must be in"):
        physical_voltage_window(2.5e-3, 440.0, 1.0, -1)


# ---------------------------------------------------------------------------------------
# *IDN?
# ---------------------------------------------------------------------------------------


def test_a_wrong_instrument_at_an_address_is_refused_before_it_is_driven(tmp_path: Path) -> None:
    definitions = sim_definitions(tmp_path / "sim", {"MODEL 2400,SIM0001": "MODEL 2651A,SIM0001"})
    rm = _VISA_RESOURCE_MANAGER(f"{definitions}@sim")
    journal = tmp_path / "journal.txt"
    hw = LabSTOArray(station(), WrappingResourceManager(rm, lambda a, r: JournalTransport(r, journal, a)))
    with pytest.raises(
        InstrumentIdentityError,
        match=r"current_source \(CurrentSource2400 at GPIB0::24::INSTR\): \*IDN\? answered "
        r"'KEITHLEY INSTRUMENTS INC.,MODEL 2651A,SIM0001,C32 \(pyvisa-sim\)', manufacturer and "
        r"model 'KEITHLEY INSTRUMENTS INC.,MODEL 2651A'; the station expects "
        r"'KEITHLEY INSTRUMENTS INC.,MODEL 2400' \(\[current_source\] model\)",
    ):
        hw.open()
    # nothing but *IDN? reached it before the refusal, then the safe-state sequence
    cs = [m for a, kind, m in read_journal(journal) if a == CS and kind in ("write", "query")]
    assert cs[0] == "*IDN?" and not any(m.startswith((":SOUR:FUNC", ":SENS")) for m in cs)
    assert cs[-1] == ":OUTP OFF" and not hw.is_open


def test_the_station_file_names_the_model_it_expects(tmp_path: Path) -> None:
    definitions = sim_definitions(tmp_path / "sim", {"MODEL 2400,SIM0001": "MODEL 2410,SIM0001"})
    # the station names the instrument that is there: accepted (case and blanks do not matter)
    st = load_station(
        SIM_STATION,
        overrides={"current_source": {"model": "keithley instruments inc., model  2410", "ramp_dwell": "0 s"}},
    )
    with LabSTOArray(st, _VISA_RESOURCE_MANAGER(f"{definitions}@sim")) as hw:
        assert hw.identities["current_source"].startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2410")
    # the digitizer the station file names is not the one at the address
    st = load_station(SIM_STATION, overrides={"digitizer": {"model": "ACME,DIGI-9"}})
    fresh = sim_definitions(tmp_path / "sim2")
    with pytest.raises(InstrumentIdentityError, match=r"digitizer .* the station expects 'ACME,DIGI-9'"):
        LabSTOArray(st, _VISA_RESOURCE_MANAGER(f"{fresh}@sim")).open()


def test_every_station_file_names_its_models() -> None:
    for path in sorted(STATIONS_DIR.glob("*.toml")):
        st = load_station(path)
        assert all(spec.model for spec in st.instruments), path
        for spec in st.instruments:
            assert spec.model.upper() == spec.cls.idn  # the models the drivers were written for


def test_the_simulated_instruments_answer_the_station_models(tmp_path: Path) -> None:
    rm = _VISA_RESOURCE_MANAGER(f"{sim_definitions(tmp_path / 'sim')}@sim")
    st = load_station(SIM_STATION)
    for spec in st.instruments:
        res = rm.open_resource(spec.address, read_termination="\n", write_termination="\n")
        assert res.query("*IDN?").upper().startswith(spec.model.upper() + ",")


# ---------------------------------------------------------------------------------------
# device limits on the hardware
# ---------------------------------------------------------------------------------------


def test_a_station_biased_beyond_the_device_limits_is_refused(tmp_path: Path) -> None:
    device = tmp_path / "dev.toml"
    device.write_text((REPO / "devices" / "seed-pmtj.toml").read_text() + '\n[limits]\nmax_current = "2 mA"\n')
    st = load_station(SIM_STATION, overrides={"array": {"device": str(device)}})
    with pytest.raises(
        DeviceLimitError,
        match=r"station sim-lab refused: bias current \|I\| = 2.5 mA exceeds the "
        r"maximum current of device seed-pmtj, I_max = 2 mA \(limits.max_current\)",
    ):
        LabSTOArray(st, None)
    shutil.rmtree(tmp_path, ignore_errors=True)
