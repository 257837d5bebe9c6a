"""Real-hardware drivers behind the substrate interface (guide: ``docs/hardware.md``).

- :class:`LabSTOArray`: an STO-array station driven over PyVISA (current source, field-pulse
  source, digitizer) as a non-differentiable :class:`~stosim.substrates.base.Substrate`.
- :func:`load_station`, :class:`Station`: station files (``devices/stations/*.toml``): which
  instrument class sits at which VISA address, with the station's limits.
- :mod:`stosim.hardware.instruments`: :class:`Command` (SCPI template, unit, limits) and the
  instrument classes (limits checked before sending, bounded retries on timeouts).
- :class:`DigitalTwin`, :class:`Mismatch`: fake instruments that answer by running the simulator
  with parameters that differ from the model's, as a lab's do.
- :class:`StationModel`: the differentiable simulator model of a station.
- :class:`PhysicsAwareSubstrate`: hardware forward, simulator backward (the training and the
  comparison that use it are a study: :mod:`stosim.studies.physics_aware`).
- Transport wrappers for tests: :class:`RecordingTransport`, :class:`JournalTransport` (to a file),
  :class:`FaultInjectingTransport`,
  :class:`Fault`, :class:`WrappingResourceManager`.

pyvisa-sim definitions of the instruments live in ``devices/instruments/*.yaml``.
"""

from stosim.hardware.instruments import (
    INSTRUMENTS,
    Command,
    CurrentSource2400,
    FieldPulseSource,
    Instrument,
    InstrumentError,
    InstrumentFaultError,
    InstrumentIdentityError,
    InstrumentTimeoutError,
    ListCommand,
    SegmentedDigitizer,
)
from stosim.hardware.lab_array import DriverClosedError, HardwareSafetyError, LabSTOArray, physical_voltage_window
from stosim.hardware.model import StationModel, projection_from_voltage, tmr_voltage
from stosim.hardware.physics_aware_substrate import PhysicsAwareSubstrate, physics_aware
from stosim.hardware.station import (
    INSTRUMENTS_DIR,
    STATIONS_DIR,
    InstrumentSpec,
    Station,
    StationFileError,
    load_station,
    station_from_dict,
)
from stosim.hardware.transport import (
    Fault,
    FaultInjectingTransport,
    JournalTransport,
    RecordingTransport,
    WrappingResourceManager,
    is_timeout,
    read_journal,
)
from stosim.hardware.twin import DigitalTwin, Mismatch, TwinResourceManager

__all__ = [
    "LabSTOArray",
    "HardwareSafetyError",
    "DriverClosedError",
    "physical_voltage_window",
    "Station",
    "InstrumentSpec",
    "StationFileError",
    "load_station",
    "station_from_dict",
    "STATIONS_DIR",
    "INSTRUMENTS_DIR",
    "Command",
    "ListCommand",
    "Instrument",
    "InstrumentError",
    "InstrumentTimeoutError",
    "InstrumentFaultError",
    "InstrumentIdentityError",
    "CurrentSource2400",
    "FieldPulseSource",
    "SegmentedDigitizer",
    "INSTRUMENTS",
    "DigitalTwin",
    "Mismatch",
    "TwinResourceManager",
    "StationModel",
    "tmr_voltage",
    "projection_from_voltage",
    "PhysicsAwareSubstrate",
    "physics_aware",
    "RecordingTransport",
    "JournalTransport",
    "read_journal",
    "FaultInjectingTransport",
    "Fault",
    "WrappingResourceManager",
    "is_timeout",
]
