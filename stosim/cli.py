"""Command-line interface: the only place that parses flags, prints and shows progress.

stosim validate FILE...                 check device/experiment/sweep/station files without running
stosim describe [FILE]                  resolved device parameters with units
stosim simulate [options] --out FILE.h5 run a coupled STO array, write the trajectory
stosim train [options]                  train a reservoir model (default: coupled STOs on digits)
stosim lyapunov [options]               Lyapunov exponents, Kaplan-Yorke dimension, KS entropy
stosim ftmle [options] --out FILE.h5    per-sample FTMLE over a dataset (untrained or trained model)
stosim compare FILE.toml... --seeds ... several experiments over seeds -> Markdown table
stosim sweep SPEC.toml --out FILE.h5    a parameter sweep on dask.distributed (resumable)
stosim plot FILE.h5 --x DIM [--y DIM] --var NAME   heat map / line plot of a sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["main", "build_parser", "cli_message"]


class CLIError(Exception):
    """A user error reported as one line on stderr with exit status 2."""


PLAIN_PROGRESS_S = 30.0  # without a terminal, a long run reports its progress as a plain line this often (s)


class _Progress:
    """The one progress display of the CLI: a tqdm bar on stderr when it is a terminal; without one (a batch
    job, a log file; the bar is off there) a plain line every PLAIN_PROGRESS_S seconds, so that a long run
    shows it is alive and how far it got (a short one prints nothing). Call it as ``progress(done, total)``."""

    def __init__(self, desc: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.desc, self.unit = desc, unit
        self.bar = tqdm(total=total, unit=unit, desc=desc, disable=None, file=sys.stderr, leave=False)
        self.last_s = time.monotonic()

    def __call__(self, done: int, n_total: int) -> None:
        if not self.bar.disable:
            self.bar.total = n_total
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_s >= PLAIN_PROGRESS_S:
            self.last_s = now
            units = self.unit + ("es" if self.unit.endswith("ch") else "s")
            print(
                f"{self.desc}: {done} / {n_total} {units} ({100 * done / n_total:.0f} %)", file=sys.stderr, flush=True
            )

    def start(self, desc: str) -> None:
        """A new pass (an epoch): the bar starts again under ``desc``."""
        self.desc = desc
        self.bar.set_description(desc)
        self.bar.reset()

    def write(self, line: str, file=None) -> None:
        """Print a line without breaking the bar (stdout unless ``file``)."""
        self.bar.write(line, file=file)


@contextlib.contextmanager
def _step_progress(desc: str, total: int | None = None, unit: str = "step") -> Iterator[_Progress]:
    """A :class:`_Progress` for a run of ``unit`` s, closed at the end of the block."""
    progress = _Progress(desc, total, unit)
    try:
        yield progress
    finally:
        progress.bar.close()


COMPILATION_NOTICE = "compiling kernels for this run (first run only; cached for later runs) ..."
_COMPILING_COMMANDS = frozenset({"train", "simulate", "ftmle", "lyapunov", "compare"})  # run Numba kernels here


@contextlib.contextmanager
def _compilation_notice() -> Iterator[None]:
    """Print :data:`COMPILATION_NOTICE` once on stderr when, inside the block, a Numba kernel starts compiling.

    It listens to Numba's "numba:compile" event, which fires only for a real compilation (a kernel loaded
    from the on-disk cache fires none): the line appears exactly when a run compiles, whatever it compiles,
    and never on a warm cache. Printed through tqdm so that a progress bar on stderr stays whole."""
    from numba.core import event

    class _Notice(event.Listener):
        said = False

        def on_start(self, ev: event.Event) -> None:
            if not self.said:
                self.said = True
                from tqdm import tqdm

                tqdm.write(COMPILATION_NOTICE, file=sys.stderr)
                sys.stderr.flush()

        def on_end(self, ev: event.Event) -> None:
            pass

    listener = _Notice()
    event.register("numba:compile", listener)
    try:
        yield
    finally:
        event.unregister("numba:compile", listener)


def _quantity(name: str):
    """Parser of the flag of the quantity ``name`` (stosim.parameters: its dimension and flag)."""
    from stosim.parameters import get

    param = get(name)
    dimension, flag = param.dimension, param.flag

    def parse(text: str) -> float:
        from stosim.units import UnitError, parse_quantity

        try:
            return parse_quantity(text, dimension, name=flag)
        except UnitError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"{dimension} quantity"
    return parse


def _help(name: str, tail: str) -> str:
    """Help of the flag of the parameter ``name``: its long name (stosim.parameters), then ``tail``."""
    from stosim.parameters import get

    return f"{get(name).long_name}, {tail}"


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, tuple[str, bool]]:
    """Library parameter name -> (flag, is a switch) of ``command``'s options (from argparse: the dest, and
    the plural of an appending flag's dest: ``allow_drivers`` for ``--allow-driver``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.get(command)
    out: dict[str, tuple[str, bool]] = {}
    for action in sub._actions if sub is not None else ():
        if not action.option_strings or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        out[action.dest] = (flag, action.nargs == 0)
        if isinstance(action, argparse._AppendAction):
            out[action.dest + "s"] = (flag, False)
    return out


def cli_message(text: str, parser: argparse.ArgumentParser, command: str) -> str:
    """A library error as the command line says it: each parameter it names (``resume=True``, ``var='mle'``,
    ``allow_drivers=['pkg.mod:Cls']``) becomes the flag of ``command`` (``--resume``, ``--var 'mle'``,
    ``--allow-driver pkg.mod:Cls``). Keys of files (the parameters of stosim.parameters, written
    ``coupling = 500``) are left as they are unless they are switches (``download=True``)."""
    import re

    from stosim.parameters import parameters

    declared = parameters()
    for name, (flag, switch) in sorted(_flags(parser, command).items(), key=lambda item: -len(item[0])):
        if name in declared and not switch:
            continue
        before = rf"(?<![\w.-]){re.escape(name)}="
        text = re.sub(before + r"True\b", flag, text)
        text = re.sub(
            before + r"\[([^\]]*)\]",
            lambda m: flag + " " + " ".join(v.strip().strip("'\"") for v in m.group(1).split(",")),
            text,
        )
        text = re.sub(before + r"(?=\S)", flag + " ", text)
    return text


def _angles(text: str) -> tuple[float, float]:
    try:
        theta, phi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--initial-angles {text!r}: expected THETA_DEG,PHI_DEG such as 30,0"
        ) from None
    return theta, phi


def _seed(flag: str):
    """Parser of a seed flag: an integer >= 0 (the entropy of a numpy.random.SeedSequence), refused when
    parsed, before any work, with the flag named."""

    def parse(text: str) -> int:
        from stosim.checks import MAX_SEED

        try:
            value = int(text)
        except ValueError:
            value = -1
        if not 0 <= value <= MAX_SEED:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: a seed must be an integer >= 0 and <= 2**32 - 1")
        return value

    parse.__name__ = "seed"
    return parse


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default shown (unless its text already states it), examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, argparse.SUPPRESS)
            and not isinstance(default, bool)
            and "default" not in text
            and action.nargs != 0
        ):
            text += f" (default: {default})"
        return text


_EPILOGS = {
    "stosim": """examples:
  stosim simulate --n 10 --coupling "500 Oe" --duration "2 ns" --out data/traj.h5 --plot data/traj.png
  stosim train --substrate sto --n 50 --coupling "500 Oe" --epochs 5 --out data/train-sto
  stosim train --config experiments/digits-sto.toml
  stosim COMMAND --help     options, units and examples of one command

quantities take units: "500 Oe", "2.5 mA", "300 ps", "300 K" (Lorenz 96 times are plain model time)""",
    "validate": """examples:
  stosim validate devices/*.toml experiments/*.toml experiments/table1/*.toml""",
    "describe": """examples:
  stosim describe
  stosim describe devices/seed-pmtj.toml""",
    "simulate": """examples:
  stosim simulate --n 10 --coupling "500 Oe" --duration "20 ns" --dt "1 ps" --out data/traj.h5
  stosim simulate --n 4 --temperature "300 K" --initial-angles 30,0 --out data/hot.h5 --plot data/hot.png

the file holds m (noisy when --observation-snr is set), m_noiseless, tmr_voltage, the coupling matrix W
and the resolved configuration (attribute "config") with the package versions and the seed""",
    "train": """examples:
  stosim train --substrate sto --n 50 --coupling "500 Oe" --duration "300 ps" --epochs 5 --out data/train-sto
  stosim train --substrate ffesn --spectral-radius 1.5 --readout-only --out data/train-ffesn
  stosim train --config experiments/table1/sto.toml --out data/table1-sto --resume

substrate flags apply to their substrate only (sto: --coupling --current --duration --dt --device
--temperature --dynamical-snr --observation-snr --variability; ffesn: --spectral-radius --steps;
lorenz96: --forcing --duration --dt; mlp/cnn: --hidden); others are refused.
writes OUT/metrics.json (resolved configuration with units, seeds, versions), learning_curve.png, checkpoint.pt""",
    "lyapunov": """examples:
  stosim lyapunov --substrate sto --n 50 --coupling "500 Oe" --duration "50 ns" --exponents 3
  stosim lyapunov --substrate lorenz96 --n 40 --forcing 8 --duration 1000 --dt 0.01""",
    "compare": """examples:
  stosim compare experiments/table1/*.toml --seeds 0 1 --out data/compare
  stosim compare experiments/table1/*.toml --finished-only --out data/compare""",
    "sweep": """examples:
  stosim sweep experiments/smoke-sweep.toml --dry-run
  stosim sweep experiments/smoke-sweep.toml --out data/smoke.h5 --workers 2
  stosim sweep experiments/smoke-sweep.toml --out data/smoke.h5 --resume""",
    "plot": """examples:
  stosim plot data/smoke.h5 --x coupling --var test_accuracy
  stosim plot data/heat.h5 --x coupling --y duration --var test_accuracy --out data/heat.png""",
    "ftmle": """examples:
  stosim ftmle --substrate sto --n 20 --coupling "500 Oe" --limit 50 --out data/ftmle.h5 --plot data/ftmle.png
  stosim ftmle --checkpoint data/train-sto --out data/ftmle-trained.h5""",
    "dnn": """examples:
  stosim dnn experiments/dnn/toy-ftmle.toml --out data/dnn/toy-ftmle
  stosim dnn experiments/dnn/init-table.toml --out data/dnn/init-table --data-dir ../shared/data/mnist""",
    "rnn-study": """examples:
  stosim rnn-study experiments/rnn/discrete-mle-vs-g.toml --out data/rnn/discrete-mle-vs-g
  stosim rnn-study experiments/rnn/size-scaling.toml --out data/rnn/size-scaling --scale full --workers 2""",
    "visualize": """examples:
  stosim visualize --figure lorenz96 --out-dir data/figures
  stosim visualize --scale tiny --out-dir data/figures""",
}

# help of the flags of `stosim train` and `stosim ftmle` that take their default from the configuration
_CONFIG_FLAG_HELP = {
    "dataset": "dataset (default digits: the built-in 8 x 8 digits)",
    "limit_train": "use only the first N training images (default: all)",
    "limit_test": "use only the first N test images (default: all)",
    "epochs": "passes over the training data (default 20; a ridge readout needs one)",
    "batch_size": "images per optimizer step (default 64)",
    "lr": "learning rate (default 0.01)",
    "optimizer": "optimizer (default adam)",
    "seed": "seed of the initialization, data order, noise and the substrate's matrix (default 0)",
    "dtype": "train in float32 (default float64)",
    "substrate": "model: a reservoir (sto, ffesn, lorenz96, cnn-sto, deep-sto) or a baseline (default sto)",
    "n": "oscillators (sto, default 100) / nodes (ffesn, default 500) / sites (lorenz96, default 500)",
    "spectral_radius": "FFESN spectral radius rho of W (default 1.0)",
    "steps": "FFESN steps K (default 5)",
    "mask": "FFESN mask of W: independent entries, or symmetric (the seed study's random graph; default independent)",
    "forcing": "Lorenz 96 forcing F (default 8)",
    "coupling": "STO coupling mu with its unit, e.g. '500 Oe' (default 500 Oe)",
    "current": "STO bias current, e.g. '2.5 mA' (default: the device file's)",
    "duration": "evolution time T: STO with a unit, e.g. '300 ps' (default); Lorenz 96 model time (default 1.0)",
    "dt": "time step: STO with a unit, e.g. '1 ps' (default); Lorenz 96 model time (default 0.01)",
    "device": "STO device TOML (default devices/seed-pmtj.toml)",
    "temperature": "STO thermal noise, e.g. '300 K' (default 0 K: none)",
    "dynamical_snr": "STO dynamical noise SNR in dB (default: none)",
    "observation_snr": "STO observation noise SNR in dB (default: none)",
    "hidden": "hidden units of mlp / cnn (default 3 n, the feature count of n STOs)",
    "variability": "relative spread of each STO's H_K, alpha and I (default 0: identical devices)",
    "readout_only": "fixed random read-in, ridge readout (default: train read-in and readout through the "
    "substrate; non-differentiable substrates always use the ridge readout)",
    "download": "fetch missing IDX files, checksummed (default: no network)",
    "method": "largest singular value of the flow Jacobian: exact SVD, lanczos, power (default auto: by size)",
    "overwrite": "replace an existing --out",
    "json": "print one JSON line with the summary",
    "data_dir": "folder with the IDX files of mnist / fashion-mnist (default: the cache folder; relative "
    "paths in --config files are relative to the file)",
}


# help of flags added without one, per (command, flag destination)
_MISSING_HELP = {
    ("lyapunov", "substrate"): "dynamical system: coupled STOs (time in s), FFESN (steps) or Lorenz 96 (model time)",
    ("lyapunov", "seed"): "seed of the initial state, the tangent vectors and the substrate's matrix",
}


def _finish_parser(sub: argparse._SubParsersAction) -> None:
    """Every command's help: defaults shown, examples (epilog), and a text for each flag of `train` and
    `ftmle` that takes its default from the configuration."""
    from stosim.parameters import parameters

    # the flags of train and ftmle show the valid range of their parameters (stosim.parameters; the substrates'
    # own parameters are declared when the substrates are imported, which building the parser does not do)
    declared = {p.flag: p for p in parameters().values()}
    for name, command in sub.choices.items():
        command.formatter_class = _HelpFormatter
        command.epilog = _EPILOGS.get(name, command.epilog)
        for action in command._actions:
            if not action.help and (name, action.dest) in _MISSING_HELP:
                action.help = _MISSING_HELP[(name, action.dest)]
            if action.dest.endswith("_snr") and action.help and "default" not in action.help:
                action.help += " (default: none, no noise)"
        if name not in ("train", "ftmle"):
            continue
        for action in command._actions:
            if action.dest in _CONFIG_FLAG_HELP and "default" not in (action.help or ""):
                action.help = _CONFIG_FLAG_HELP[action.dest]
            elif not action.help and action.option_strings:
                action.help = " "  # documented by the epilog; keeps the flag listed with its metavar
    for command in (sub.choices["train"], sub.choices["ftmle"]):  # (their flags are validated as TrainConfig)
        for action in command._actions:
            param = declared.get(max(action.option_strings, key=len, default=""))
            if param is not None and param.bounded and (action.help or "").strip() and "valid:" not in action.help:
                action.help += f"; valid: {param.valid()}"


def build_parser() -> argparse.ArgumentParser:
    from stosim import __version__
    from stosim.substrate_choices import ftmle_choices, lyapunov_choices, model_kind_choices

    parser = argparse.ArgumentParser(
        prog="stosim",
        description="Spin-torque-oscillator reservoir simulator",
        epilog=_EPILOGS["stosim"],
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stosim {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more diagnostics on stderr (-v: info, -vv: debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "validate", help="check device files, experiment configs, sweep specs and station files without running"
    )
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--allow-driver",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="station files: accept this user driver class by name (validation never imports it; "
        "its hardware limits are checked when the station is loaded to run)",
    )

    p = sub.add_parser("describe", help="print a device file's resolved parameters with units")
    p.add_argument("file", nargs="?", type=Path, default=None, help="device TOML (default: the seed study's pMTJ)")

    p = sub.add_parser("simulate", help="simulate a coupled STO array and write its trajectory (HDF5)")
    p.add_argument("--device", type=Path, default=None, help="device TOML (default: devices/seed-pmtj.toml)")
    p.add_argument(
        "--n", type=int, default=None, help="number of oscillators N (default 10, or the size of --coupling-matrix)"
    )
    p.add_argument(
        "--coupling",
        type=_quantity("coupling"),
        default=500.0,
        help=_help("coupling", "e.g. '500 Oe' (default 500 Oe)"),
    )
    p.add_argument(
        "--current",
        type=_quantity("current"),
        default=None,
        help=_help("current", "e.g. '2.5 mA' (default: the device file's)"),
    )
    p.add_argument(
        "--duration", type=_quantity("duration"), default=20e-9, help=_help("duration", "e.g. '20 ns' (default)")
    )
    p.add_argument("--dt", type=_quantity("dt"), default=1e-12, help=_help("dt", "e.g. '1 ps' (default)"))
    p.add_argument("--seed", type=_seed("--seed"), default=0, help="seed of W, initial state and noise (default 0)")
    init = p.add_mutually_exclusive_group()
    init.add_argument(
        "--initial-angles",
        type=_angles,
        default=None,
        metavar="THETA_DEG,PHI_DEG",
        help="all oscillators start at these polar/azimuthal angles (default: random, seeded)",
    )
    init.add_argument("--initial", type=Path, default=None, metavar="FILE.npy", help="(N, 3) initial states")
    p.add_argument(
        "--coupling-matrix",
        type=Path,
        default=None,
        metavar="FILE.npy",
        help="explicit (N, N) coupling matrix W, used as is (default: random, spectral radius 1)",
    )
    p.add_argument(
        "--temperature",
        type=_quantity("temperature"),
        default=0.0,
        help=_help("temperature", "thermal noise, e.g. '300 K' (default 0 K: none)"),
    )
    p.add_argument("--observation-snr", type=float, default=None, metavar="DB", help="observation noise SNR in dB")
    p.add_argument("--dynamical-snr", type=float, default=None, metavar="DB", help="dynamical noise SNR in dB")
    p.add_argument(
        "--dynamical-noise-reference",
        type=_quantity("dynamical_noise_reference"),
        default=None,
        metavar="TIME",
        help="e.g. '1 ps': the dynamical SNR is that of the noise accumulated over this "
        "time (independent of --dt); default: per step (dt-dependent)",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="K",
        help="record every K steps (default 10, or the number of steps of a shorter run: its start and end)",
    )
    p.add_argument("--float32", action="store_true", help="simulate in float32 (default float64)")
    p.add_argument(
        "--float32-coupling",
        action="store_true",
        help="store W in float32 (rounded by 6e-8 relative; products stay in the state's precision): a single "
        "trajectory of a large array (N >~ 1000) reads half the bytes per step",
    )
    p.add_argument("--out", type=Path, required=True, help="output trajectory file (.h5)")
    p.add_argument("--plot", type=Path, default=None, help="also draw m(t) and the TMR signal to this PNG")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print one JSON line with the run's summary")
    p.add_argument(
        "--allow-beyond-limits",
        action="store_true",
        help="run even beyond the device's maximum current / breakdown voltage (recorded in the output)",
    )
    p = sub.add_parser("train", help="train a reservoir model (or a baseline) and evaluate it")
    p.add_argument("--config", type=Path, default=None, help="experiment TOML (experiments/...); flags override it")
    p.add_argument(
        "--substrate",
        choices=model_kind_choices(),
        metavar="NAME",
        help="model kind: a substrate's reservoir model or a baseline (docs/substrates.md)",
    )
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"])
    p.add_argument("--data-dir", type=str, default=None, help="folder with the IDX files (mnist, fashion-mnist)")
    p.add_argument("--download", action="store_true", default=None, help="fetch missing IDX files (checksummed)")
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=None)
    p.add_argument(
        "--lr-schedule",
        choices=["constant", "cosine"],
        default=None,
        help="cosine: decay the lr to 0 over the run (default constant)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="adam: decoupled weight decay (AdamW); sgd: L2 coefficient (default 0)",
    )
    p.add_argument(
        "--input-offset",
        type=float,
        default=None,
        help="subtracted from every pixel before the read-in (0.5 centres them; default 0)",
    )
    p.add_argument("--seed", type=_seed("--seed"), default=None)
    p.add_argument("--float32", action="store_const", const="float32", dest="dtype", default=None)
    p.add_argument("--readout-only", action="store_true", default=None, help="fixed read-in, ridge readout")
    p.add_argument("--n", type=int, default=None, help="oscillators / nodes / sites")
    p.add_argument("--hidden", type=int, default=None, help="hidden units of mlp / cnn")
    p.add_argument("--depth", type=int, default=None, help="hidden layers of mlp (default 1)")
    p.add_argument("--activation", choices=["relu", "tanh"], default=None, help="mlp hidden activation (default relu)")
    p.add_argument(
        "--init-spectral-radius",
        type=float,
        default=None,
        metavar="RHO",
        help="mlp (depth >= 2): square hidden weights drawn at spectral radius RHO",
    )
    p.add_argument("--coupling", type=str, default=None, help="STO coupling mu, e.g. '500 Oe'")
    p.add_argument("--current", type=str, default=None, help="STO bias current, e.g. '2.5 mA'")
    p.add_argument("--duration", type=str, default=None, help="STO: '300 ps'; Lorenz 96: model time, e.g. 1.0")
    p.add_argument("--dt", type=str, default=None, help="STO: '1 ps'; Lorenz 96: 0.01")
    p.add_argument("--device", type=str, default=None, help="STO device file")
    p.add_argument("--spectral-radius", type=float, default=None, help="FFESN rho")
    p.add_argument("--steps", type=int, default=None, help="FFESN K")
    p.add_argument("--mask", choices=["independent", "symmetric"], default=None, help="FFESN mask of W")
    p.add_argument("--forcing", type=float, default=None, help="Lorenz 96 F")
    p.add_argument("--g", type=float, default=None, help="rate network gain g")
    p.add_argument("--network-time", choices=["continuous", "discrete"], default=None, help="rate network dynamics")
    p.add_argument("--temperature", type=str, default=None, help="STO thermal noise, e.g. '300 K'")
    p.add_argument("--dynamical-snr", type=float, default=None, metavar="DB")
    p.add_argument(
        "--dynamical-noise-reference",
        type=str,
        default=None,
        metavar="TIME",
        help="e.g. '1 ps': dynamical SNR over this time (independent of --dt); default: per step",
    )
    p.add_argument("--observation-snr", type=float, default=None, metavar="DB")
    p.add_argument("--variability", type=float, default=None, help="relative spread of each STO's H_K, alpha, I")
    p.add_argument(
        "--noiseless-training",
        action="store_false",
        dest="train_with_noise",
        default=None,
        help="train without the noise, evaluate with it (default: both with noise)",
    )
    p.add_argument("--out", type=Path, default=Path("data/train"), help="output folder (default data/train)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print one final JSON line")
    p.add_argument(
        "--allow-beyond-limits",
        action="store_true",
        help="train even beyond the device's maximum current / breakdown voltage (recorded in metrics.json)",
    )
    p = sub.add_parser("lyapunov", help="Lyapunov exponents of a substrate's autonomous dynamics (QR method)")
    p.add_argument("--substrate", choices=lyapunov_choices(), metavar="NAME", default="sto")
    p.add_argument("--n", type=int, default=None, help="oscillators / nodes / sites (sto 200, ffesn 500, lorenz96 40)")
    p.add_argument(
        "--coupling", type=_quantity("coupling"), default=None, help=_help("coupling", "STO (default 500 Oe)")
    )
    p.add_argument("--current", type=_quantity("current"), default=None, help=_help("current", "STO"))
    p.add_argument("--device", type=Path, default=None, help="STO device file")
    p.add_argument("--spectral-radius", type=float, default=None, help="FFESN rho (default 1.5)")
    p.add_argument("--forcing", type=float, default=None, help="Lorenz 96 F (default 8)")
    p.add_argument("--g", type=float, default=None, help="rate network gain g (default 2)")
    p.add_argument(
        "--time",
        choices=["continuous", "discrete"],
        default=None,
        help="rate network dynamics (default continuous: exponents in 1/tau; discrete: 1/step)",
    )
    p.add_argument("--input-std", type=float, default=None, help="rate network input strength (default 0)")
    p.add_argument("--input-tau", type=float, default=None, help="rate network input correlation time (0: white)")
    p.add_argument("--zero-diagonal", action="store_true", default=None, help="rate network: J_ii = 0")
    p.add_argument("--exponents", type=int, default=1, help="how many leading exponents (default 1: the MLE)")
    p.add_argument(
        "--duration",
        type=str,
        default=None,
        help="averaging time (sto: '200 ns'; lorenz96: model time 1000; ffesn: steps 2000)",
    )
    p.add_argument("--transient", type=str, default=None, help="discarded time before averaging, same units")
    p.add_argument("--dt", type=str, default=None, help="step (sto: '1 ps'; lorenz96: 0.01)")
    p.add_argument("--seed", type=_seed("--seed"), default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p = sub.add_parser("compare", help="train several experiment files over seeds and write a Markdown table")
    p.add_argument("configs", nargs="+", type=Path, help="experiment TOML files (e.g. experiments/table1/*.toml)")
    p.add_argument("--seeds", type=_seed("--seeds"), nargs="+", default=None, help="seeds to train (default 0 1 2)")
    p.add_argument("--out", type=Path, default=Path("data/compare"), help="run folders (default data/compare)")
    p.add_argument("--markdown", type=Path, default=None, help="table file (default OUT/table.md)")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: tabulate the runs already finished in OUT (any seeds)",
    )
    p = sub.add_parser("sweep", help="run a parameter sweep (TOML spec) on dask.distributed; resumable HDF5 output")
    p.add_argument("spec", type=Path, help="sweep spec (experiments/*.toml with kind, [base], [grid])")
    p.add_argument("--out", type=Path, default=None, help="output file (.h5); required unless --dry-run")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of a loopback LocalCluster, one thread each (default: CPU cores)",
    )
    where.add_argument(
        "--scheduler",
        type=str,
        default=None,
        metavar="tcp://HOST:PORT",
        help="use an existing dask scheduler instead of a LocalCluster",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue --out: run only the points not yet done")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing point (after saving)")
    p.add_argument(
        "--flush-seconds",
        type=float,
        default=1.0,
        help="save finished points at most this long after they finish (default 1 s)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate the spec and list the dimensions; run nothing")
    p.add_argument("--list-points", action="store_true", help="with --dry-run: also print every point's coordinates")
    p.add_argument("--json", action="store_true", help="print one JSON line with the summary")
    p = sub.add_parser("plot", help="plot a sweep file: heat map over --x and --y, or a line over --x")
    p.add_argument("file", type=Path, help="sweep file (.h5) written by `stosim sweep`")
    p.add_argument("--x", required=True, help="dimension on the x axis")
    p.add_argument("--y", default=None, help="dimension on the y axis (a heat map, mean over seeds)")
    p.add_argument("--var", required=True, help="variable to plot, e.g. test_accuracy or mle")
    p.add_argument(
        "--band",
        choices=["minmax", "std"],
        default="minmax",
        help="line plots: band over seeds, min-max (default) or mean +/- std",
    )
    p.add_argument("--hue", default=None, help="line plots: one line per value of this dimension")
    p.add_argument("--out", type=Path, default=None, help="PNG (default: FILE-VAR-X[-Y].png beside FILE)")
    p.add_argument(
        "--lyapunov-time",
        type=Path,
        default=None,
        metavar="MLE_SWEEP.h5",
        help="heat maps: draw the Lyapunov time 1/MLE of this MLE sweep over --x, in --y's units",
    )
    p.add_argument("--lyapunov-var", default="mle", help="variable of --lyapunov-time (default mle)")
    p = sub.add_parser(
        "visualize",
        help="state-space pictures: PCA of state trajectories, 3-D Lorenz 96, flow "
        "of digits through STO / deep-STO networks, STO time series (state_space_*.png)",
    )
    p.add_argument(
        "--figure",
        action="append",
        default=None,
        choices=["pca", "ffesn", "lorenz96", "sto-flow", "sto-timeseries"],
        help="figure to draw (repeatable; default all)",
    )
    p.add_argument(
        "--scale",
        choices=["tiny", "small"],
        default="small",
        help="sizes: small (docs/figures, minutes) or tiny (seconds, for tests)",
    )
    p.add_argument("--seed", type=_seed("--seed"), default=0, help="seed of the substrates and read-ins drawn")
    p.add_argument("--out-dir", type=Path, default=Path("docs/figures"), help="folder (default docs/figures)")
    p = sub.add_parser("ftmle", help="per-sample FTMLE of a reservoir over a dataset (untrained or trained)")
    p.add_argument("--config", type=Path, default=None, help="experiment TOML; flags override it")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a `stosim train` output folder or checkpoint.pt (its configuration and trained read-in)",
    )
    p.add_argument("--substrate", choices=ftmle_choices(), metavar="NAME", default=None)
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default=None)
    p.add_argument("--data-dir", type=str, default=None)
    for flag, kind in (
        ("--n", int),
        ("--seed", _seed("--seed")),
        ("--spectral-radius", float),
        ("--steps", int),
        ("--forcing", float),
    ):
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--g", type=float, default=None, help="rate network gain g")
    p.add_argument("--network-time", choices=["continuous", "discrete"], default=None, help="rate network dynamics")
    for flag in ("--coupling", "--current", "--duration", "--dt"):
        p.add_argument(flag, type=str, default=None)
    p.add_argument("--limit", type=int, default=200, help="test samples (default 200)")
    p.add_argument("--method", choices=["auto", "exact", "lanczos", "power"], default="auto")
    p.add_argument("--out", type=Path, required=True, help="per-sample distribution (.h5)")
    p.add_argument("--plot", type=Path, default=None, help="histogram PNG")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "dnn",
        help="chaos in conventional networks: toy FTMLE maps, trained vs untrained tables, "
        "chaotic initialization (experiments/dnn/*.toml)",
    )
    p.add_argument("spec", type=Path, help="study spec (study = toy-ftmle | init-table | chaotic-init)")
    p.add_argument("--out", type=Path, required=True, help="output folder (results.json, results.md, PNG figures)")
    p.add_argument(
        "--scale",
        choices=["file", "study"],
        default="file",
        help="file: the sizes in the spec (default); study: the seed study's sizes (hours)",
    )
    p.add_argument("--data-dir", type=str, default=None, help="MNIST IDX folder (overrides the spec's data_dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print one final JSON line")
    p = sub.add_parser("rnn-study", help="a rate-network Lyapunov study (experiments/rnn/*.toml): summary and figure")
    p.add_argument("spec", type=Path, help="study spec (experiments/rnn/*.toml)")
    p.add_argument("--out", type=Path, required=True, help="output folder (summary.json, figure.png)")
    p.add_argument(
        "--scale",
        choices=["reduced", "full"],
        default="reduced",
        help="reduced: this machine (default); full: the study's scale (use a Dask cluster)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="run the points on a loopback Dask LocalCluster")
    where.add_argument(
        "--scheduler", type=str, default=None, metavar="tcp://HOST:PORT", help="an existing Dask scheduler"
    )
    p.add_argument("--figure", type=Path, default=None, help="also copy the figure to this PNG (e.g. docs/figures/)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    _finish_parser(sub)
    return parser


def _cmd_dnn(args: argparse.Namespace) -> int:
    import torch

    from stosim.studies.dnn_chaos import load_dnn_spec, run_dnn_spec

    if args.threads < 1:
        raise CLIError(f"--threads {args.threads} is out of range; valid: an integer >= 1")
    spec = load_dnn_spec(args.spec, scale=args.scale)
    if args.data_dir is not None:
        if "data_dir" not in type(spec).model_fields:
            raise CLIError(f"--data-dir: study {spec.study} uses no MNIST data; drop it")
        spec = spec.model_copy(update={"data_dir": args.data_dir})
    torch.set_num_threads(args.threads)
    run_dnn_spec(spec, args.out, progress=lambda line: print(line, file=sys.stderr if args.json else sys.stdout))
    if args.json:
        print(_json_line({"study": spec.study, "out": str(args.out), "scale": args.scale}))
    else:
        print(f"{spec.study}: wrote {args.out}/results.json, results.md and figures")
    return 0


def _cmd_rnn_study(args: argparse.Namespace) -> int:
    import contextlib as _contextlib
    import shutil

    from stosim.studies.rnn_figures import plot_study
    from stosim.studies.rnn_spectra import dask_mapper, load_study, run_study, write_summary

    spec = load_study(args.spec)
    spec.parameters(args.scale)
    if args.workers is None and args.scheduler is None:
        ctx = _contextlib.nullcontext(None)
    else:
        from stosim.sweep.runner import _client

        ctx = _client(args.workers, args.scheduler, None)
    with ctx as client:
        mapper = None if client is None else dask_mapper(client[0])
        summary = run_study(spec, args.scale, mapper)
    summary_path = write_summary(summary, args.out)
    figure = plot_study(summary, args.out / "figure.png")
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, args.figure)
    if args.json:
        print(_json_line({k: v for k, v in summary.items() if k not in ("spectra",)}))
    else:
        print(f"{spec.study} ({args.scale}): wrote {summary_path} and {figure} in {summary['wall_time_s']:.0f} s")
    return 0


def _cmd_ftmle(args: argparse.Namespace) -> int:
    import numpy as np

    from stosim.plotting import plot_histogram
    from stosim.storage import check_output_free, write_dataset_atomic
    from stosim.studies.run_ftmle import dataset_ftmle

    if args.out.exists() and not args.overwrite:
        raise CLIError(f"--out {args.out} exists; pass --overwrite to replace it")
    check_output_free(args.out)  # refused now rather than after the run while another process writes --out
    keys = (
        "substrate",
        "dataset",
        "data_dir",
        "n",
        "seed",
        "spectral_radius",
        "steps",
        "forcing",
        "coupling",
        "current",
        "duration",
        "dt",
        "g",
        "network_time",
    )
    overrides = _config_overrides(args, keys)
    if args.checkpoint is not None and (overrides or args.config is not None):
        raise CLIError(
            "--checkpoint takes its configuration from the checkpoint; drop --config and the other model flags"
        )
    cfg = _train_config(args, overrides)
    _refuse_other_substrate_flags(args, keys, cfg.substrate)
    _check_plain_times(args, cfg)

    ds = dataset_ftmle(cfg, args.checkpoint, limit=args.limit, method=args.method)
    _describe_ftmle_run(ds, cfg)
    write_dataset_atomic(ds, args.out, overwrite=True)
    values = ds["ftmle"].values
    unit = ds["ftmle"].attrs["units"]
    if args.plot is not None:
        label = "trained" if ds.attrs["trained"] else "untrained"
        shown, shown_unit = _rate_display(values, unit)
        plot_histogram(
            {label: shown}, args.plot, xlabel=f"FTMLE ({shown_unit})", title=f"FTMLE over {values.size} test samples"
        )
    summary = {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "median": float(np.median(values)),
        "n_samples": int(values.size),
        "units": unit,
        "trained": bool(ds.attrs["trained"]),
        "all_converged": bool(ds["converged"].values.all()),
        "out": str(args.out),
    }
    shown, shown_unit = _rate_display(values, unit)
    print(
        _json_line(summary)
        if args.json
        else f"FTMLE over {values.size} samples: mean {np.mean(shown):.4g} {shown_unit}, std {np.std(shown):.3g}, "
        f"median {np.median(shown):.4g}; wrote {args.out}" + (f" and {args.plot}" if args.plot else "")
    )
    return 0


def _describe_ftmle_run(ds, cfg) -> None:
    """Attributes of an FTMLE file: the configuration that ran (a checkpoint's, when given) resolved with
    units, its seeds and the stosim version."""
    from stosim import __version__
    from stosim.studies.training import TrainConfig, resolved_config, run_seeds

    saved = ds.attrs.get("config")
    used = TrainConfig.model_validate(json.loads(saved)) if isinstance(saved, str) else cfg
    ds.attrs.update(
        resolved_config=json.dumps(resolved_config(used)), seeds=json.dumps(run_seeds(used)), stosim_version=__version__
    )


def _rate_display(values, unit: str):  # (numpy is imported lazily: no annotations)
    """Rates in 1/s shown in 1/ns (the STOs' exponents are ~1e9 1/s); other units as they are."""
    return (values * 1e-9, "1/ns") if unit == "1/s" else (values, unit)


def _consistent_with_zero(value: float, standard_error: float) -> bool:
    """Whether an estimate lies within 2 standard errors of zero (|value| <= 2 SE)."""
    return math.isfinite(standard_error) and abs(value) <= 2 * standard_error


def _cmd_compare(args: argparse.Namespace) -> int:
    from stosim.studies.compare import (
        REFERENCE_FILE,
        collect_finished,
        comparison_table,
        experiment_files,
        run_comparison,
    )

    def on_run(name: str, seed: int) -> None:
        print(f"== {name}, seed {seed}", file=sys.stderr)

    def on_epoch(rec: dict) -> None:
        print(
            f"   epoch {rec['epoch']:3d}  test acc {100 * rec['test_accuracy']:6.2f}%  ({rec['epoch_time_s']:.0f} s)",
            file=sys.stderr,
        )

    configs = experiment_files(args.configs)
    if not configs:
        raise CLIError(f"compare: no experiment files given (only {REFERENCE_FILE})")
    if args.finished_only and args.seeds is not None:
        raise CLIError(
            "--seeds: --finished-only trains nothing and tabulates the finished runs of every seed in "
            "--out; drop --seeds (or drop --finished-only to train these seeds)"
        )
    if args.finished_only:
        results = collect_finished(configs, args.out)
        if not results:
            raise CLIError(f"--finished-only: no finished run of these experiments in {args.out}")
        missing = [c.stem for c in configs if c.stem not in results]
        if missing:
            print(f"no finished run yet (left out): {', '.join(missing)}", file=sys.stderr)
    else:
        seeds = [0, 1, 2] if args.seeds is None else args.seeds
        results = run_comparison(configs, seeds, args.out, on_run=on_run, on_epoch=on_epoch)
    table = comparison_table(results, configs)
    path = args.markdown or args.out / "table.md"
    from stosim.storage import write_text_atomic

    write_text_atomic(table, path)
    print(table)
    print(f"wrote {path}")
    return 0


def _substrate_time(text: str | None, substrate: str, flag: str) -> float | None:
    """STO times carry units ('200 ns'); Lorenz 96 / FFESN times are plain numbers."""
    if text is None:
        return None
    from stosim.units import UnitError, parse_quantity

    try:
        from stosim.substrates.registry import get

        return parse_quantity(text, "time", name=flag) if get(substrate).time_unit == "s" else float(text)
    except (UnitError, ValueError) as exc:
        raise CLIError(f"{flag} {text!r}: {exc}") from None


def _lyapunov_substrate_flags() -> dict[str, tuple[str, str]]:
    """Flags of `stosim lyapunov` that set one substrate's parameter: flag -> (substrate, keyword of
    substrate_lyapunov), as each substrate's tangent system declares them (stosim.substrates.registry)."""
    from stosim.substrates.registry import specs

    return {
        flag: (name, keyword)
        for name, spec in specs().items()
        if spec.tangent is not None
        for flag, keyword in spec.tangent.flags.items()
    }


def _lyapunov_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The substrate parameters given on the command line (the others keep the substrate's defaults); a flag
    of another substrate, which would be silently ignored, is refused."""
    params = {}
    for key, (substrate, keyword) in _lyapunov_substrate_flags().items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if substrate != args.substrate:
            raise CLIError(
                f"--{key.replace('_', '-')} applies to --substrate {substrate} only, not to {args.substrate}; drop it"
            )
        params[keyword] = value
    return params


def _cmd_lyapunov(args: argparse.Namespace) -> int:
    from stosim.studies.run_lyapunov import substrate_lyapunov

    params = {"n": args.n, "dt": _substrate_time(args.dt, args.substrate, "--dt"), **_lyapunov_parameters(args)}
    with _step_progress("lyapunov") as progress:
        result = substrate_lyapunov(
            args.substrate,
            n_exponents=args.exponents,
            duration=_substrate_time(args.duration, args.substrate, "--duration"),
            transient=_substrate_time(args.transient, args.substrate, "--transient"),
            seed=args.seed,
            progress=progress,
            **params,
        )
    unit = {"s": "1/s", "model time unit": "1/(model time unit)", "step": "1/step", "tau": "1/tau"}.get(
        result.time_unit, f"1/{result.time_unit}"
    )
    if args.json:
        print(_json_line({**result.as_dict(), "units": unit, "substrate": args.substrate}))
        return 0
    print(
        f"Lyapunov exponents of {args.substrate} ({unit}), averaged over {result.duration:g} "
        f"{result.time_unit} after a transient of {result.transient:g}:"
    )
    for i, (lam, se, rel) in enumerate(
        zip(result.exponents, result.standard_error, result.relative_change_last_quarter)
    ):
        zero = "; consistent with zero within 2 standard errors" if _consistent_with_zero(lam, se) else ""
        print(
            f"  lambda_{i + 1:<3d} = {lam: .6g} +/- {se:.2g}  (running estimate moved {100 * rel:.2g} % "
            f"over the last quarter{zero})"
        )
    partial = (
        " (a lower bound: all computed partial sums are positive; ask for more --exponents)"
        if (result.exponents.sum() > 0)
        else ""
    )
    print(f"Kaplan-Yorke dimension: {result.kaplan_yorke_dimension:.4g}{partial}")
    ks_partial = (
        " (a lower bound: the last computed exponent is positive; ask for more --exponents)"
        if result.exponents[-1] > 0
        else ""
    )
    print(f"KS entropy (sum of positive exponents): {result.ks_entropy:.6g} {unit}{ks_partial}")
    return 0


def _json_line(obj: Any) -> str:
    """``obj`` as one line of standard JSON: non-finite numbers (not JSON) become null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False)


def _train_config(args: argparse.Namespace, overrides: dict):  # torch is imported lazily
    """The TrainConfig of --config and the flags, validated with the run's checks; a refusal that a plain-number
    --duration / --dt explains (300 would be 300 s for the STOs) is reported as that."""
    import types

    from stosim.studies.training import ConfigError, load_train_config, validate_train_config

    try:
        return (
            load_train_config(args.config, **overrides)
            if args.config is not None
            else validate_train_config(overrides, source="command line")
        )
    except ConfigError:
        substrate = overrides.get("substrate")
        if substrate is None and args.config is not None:
            from stosim.checks import read_toml

            with contextlib.suppress(ValueError):
                substrate = read_toml(args.config).get("substrate")
        _check_plain_times(args, types.SimpleNamespace(substrate=substrate if isinstance(substrate, str) else "sto"))
        raise


def _check_plain_times(args: argparse.Namespace, cfg) -> None:
    """Plain-number --duration / --dt are Lorenz 96 model time; every other substrate needs a unit
    (a plain 300 would otherwise be 300 s for the STOs)."""
    from stosim.model_kinds import substrate_time_unit

    unit = substrate_time_unit(cfg.substrate)
    if unit in ("model time", "tau"):  # Lorenz 96, rate network: plain numbers in the substrate's time unit
        return
    for key in ("duration", "dt"):
        value = getattr(args, key, None)
        if value is None:
            continue
        try:
            float(value)
        except ValueError:
            continue
        if unit == "steps":  # the FFESN
            raise CLIError(f"--{key} {value}: the FFESN is a map of --steps layers; it has no {key}")
        raise CLIError(
            f"--{key} {value}: give a time with its unit for substrate {cfg.substrate} "
            "(e.g. '300 ps'); plain numbers are Lorenz 96 model time"
        )


def _config_overrides(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    """The given flags as TrainConfig overrides; plain-number --duration/--dt are Lorenz 96 model time."""
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    for key in ("duration", "dt"):
        if key in overrides:
            try:
                overrides[key] = float(overrides[key])
            except ValueError:
                pass  # a quantity with a unit ("300 ps"), parsed by the config
    return overrides


_TRAIN_KEYS = (
    "substrate",
    "dataset",
    "data_dir",
    "download",
    "limit_train",
    "limit_test",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "lr_schedule",
    "weight_decay",
    "input_offset",
    "seed",
    "dtype",
    "readout_only",
    "n",
    "hidden",
    "coupling",
    "current",
    "duration",
    "dt",
    "device",
    "spectral_radius",
    "steps",
    "mask",
    "forcing",
    "temperature",
    "dynamical_snr",
    "observation_snr",
    "variability",
    "train_with_noise",
    "depth",
    "activation",
    "init_spectral_radius",
    "g",
    "network_time",
    "dynamical_noise_reference",
)


def _flag(key: str) -> str:
    return {"train_with_noise": "--noiseless-training", "dtype": "--float32"}.get(key, "--" + key.replace("_", "-"))


def _refuse_other_substrate_flags(args: argparse.Namespace, keys: Sequence[str], substrate: str) -> None:
    """A substrate flag given for a substrate it does not apply to (``--coupling`` with ``--substrate ffesn``)
    would be recorded and silently ignored: refuse it, naming the flags."""
    from stosim.studies.training import SUBSTRATE_KEYS, substrate_keys

    applies = set(SUBSTRATE_KEYS[substrate])
    stray = [
        _flag(k) for k in keys if k in substrate_keys() and k not in applies and getattr(args, k, None) is not None
    ]
    if stray:
        valid = " ".join(_flag(k) for k in SUBSTRATE_KEYS[substrate]) or "none"
        raise CLIError(
            f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to "
            f"--substrate {substrate}; "
            f"drop {'it' if len(stray) == 1 else 'them'} (flags of {substrate}: {valid})"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from stosim.studies.training import train

    overrides = _config_overrides(args, _TRAIN_KEYS)
    cfg = _train_config(args, overrides)
    _refuse_other_substrate_flags(args, _TRAIN_KEYS, cfg.substrate)
    _check_plain_times(args, cfg)
    if (args.out / "checkpoint.pt").exists() and not args.resume:
        raise CLIError(f"--out {args.out} holds a checkpoint; pass --resume to continue it or choose another --out")
    with _step_progress("epoch 1", unit="batch") as bar:

        def on_epoch(rec: dict) -> None:
            line = (
                f"epoch {rec['epoch']:3d}  train acc {100 * rec['train_accuracy']:6.2f}%  "
                f"test acc {100 * rec['test_accuracy']:6.2f}%  ({rec['epoch_time_s']:.1f} s)"
            )
            bar.write(line, file=sys.stderr if args.json else None)
            bar.start(f"epoch {rec['epoch'] + 1}")

        result = train(
            cfg,
            args.out,
            resume=args.resume,
            on_batch=bar,
            on_epoch=on_epoch,
            allow_beyond_limits=args.allow_beyond_limits,
        )
    summary = result.summary()
    if args.json:
        print(_json_line({**summary, "out": str(args.out), "substrate": cfg.substrate, "dataset": cfg.dataset}))
    else:
        print(
            f"{cfg.substrate} on {cfg.dataset}: test accuracy {100 * result.test_accuracy:.2f}% "
            f"(best {100 * result.best_test_accuracy:.2f}%), {result.epochs} epochs, {result.wall_time_s:.0f} s; "
            f"wrote {args.out}/metrics.json, learning_curve.png, checkpoint.pt"
        )
    return 0


_REFERENCE_FILE = "reference.toml"  # stosim.studies.compare.REFERENCE_FILE, named here without importing torch


# top-level keys that only one kind of file has (experiment files: the keys of training.TrainConfig)
_KIND_KEYS = {
    "device": frozenset({"free_layer", "spin_torque", "reference_layer", "applied_field", "tmr", "source"}),
    "station": frozenset({"array", "current_source", "field_source", "digitizer"}),
    "sweep spec": frozenset({"kind", "base", "grid", "seeds", "independent_seeds"}),
}


def _file_kind(path: Path, raw: dict) -> str:
    """What a TOML file holds, from its name and top-level keys: device, sweep spec, experiment, station or
    the published reference values beside experiment files. The kind whose own keys the file has most of;
    a file with none of them (``epochs = 3``, or a misspelt key) is an experiment file when it has any key
    at all besides ``name`` and ``description``, else a device file (whose loader lists what is missing)."""
    if path.name == _REFERENCE_FILE:
        return "reference"
    if "study" in raw:  # rate-network studies give their sizes per scale ([reduced], [full])
        return "rnn study" if "reduced" in raw or "full" in raw else "dnn study"
    keys = set(raw)
    scores = {kind: len(keys & own) for kind, own in _KIND_KEYS.items()}
    best = max(scores.values())
    if best > 0:
        return next(kind for kind, score in scores.items() if score == best)
    return "experiment" if keys - {"name", "description"} else "device"


def _validate_one(path: Path, allow_drivers: Sequence[str] = ()) -> str:
    """Load ``path`` with the validator of its kind, the checks its run applies included; returns a
    description, raises ValueError (a message naming the file and the key). Imports nothing named in it."""
    from stosim.checks import read_toml

    raw = read_toml(path, ValueError, "file")
    kind = _file_kind(path, raw)
    if kind == "reference":
        not_text = [k for k, v in raw.items() if not isinstance(v, str)]
        if not_text:
            raise ValueError(f'{path}: {", ".join(not_text)}: reference values must be text (experiment name = "...")')
        return f"published reference values of {len(raw)} experiments"
    if kind == "sweep spec":
        from stosim.sweep.spec import load_spec

        sweep = load_spec(path)
        return f"sweep spec {sweep.spec.name!r}: {sweep.kind.name} points, {len(sweep.points)} of them"
    if kind == "station":
        from stosim.hardware.station import load_station

        return f"station {load_station(path, allow_drivers=allow_drivers, import_drivers=False).name!r}"
    if kind == "dnn study":
        from stosim.studies.dnn_chaos import load_dnn_spec

        return f"dnn study {load_dnn_spec(path).study!r}"
    if kind == "rnn study":
        from stosim.studies.rnn_spectra import load_study

        spec = load_study(path)
        for scale in ("reduced", "full"):
            spec.parameters(scale)
        return f"rate-network study {spec.study!r}"
    if kind == "experiment":
        from stosim.studies.training import load_train_config

        cfg = load_train_config(path)
        return f"experiment: {cfg.substrate} on {cfg.dataset}"
    from stosim.config import load_device

    return f"device {load_device(path).name!r}"


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            what = _validate_one(path, args.allow_driver)
        except ValueError as exc:  # DeviceFileError, SpecError, ConfigError, StationFileError
            failed += 1
            text = cli_message(str(exc), build_parser(), "validate")
            print(f"INVALID {path}: {text}" if str(path) not in text else f"INVALID {text}", file=sys.stderr)
        else:
            print(f"ok      {path} ({what})")
    return 1 if failed else 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from stosim.config import default_device_path, load_device

    path = args.file or default_device_path()
    device = load_device(path)
    print(f"# {path}")
    width = max(len(k) for k, _ in device.describe())
    for key, value in device.describe():
        print(f"{key:<{width}}  {value}")
    return 0


def _load_initial(path: Path):  # numpy is imported lazily
    """The initial states in ``path``: one numeric array of shape (N, 3) or (batch, N, 3) saved by numpy.save.
    A file numpy cannot read as one such array raises CLIError naming --initial and the file."""
    import numpy as np

    try:
        initial = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CLIError(f"--initial {path}: cannot read a .npy array ({exc})") from None
    if not isinstance(initial, np.ndarray) or not np.issubdtype(initial.dtype, np.number):
        if hasattr(initial, "close"):  # an .npz archive holds its file open
            initial.close()
        raise CLIError(
            f"--initial {path}: expected one numeric array of shape (N, 3) or (batch, N, 3) saved with "
            "numpy.save (.npy), not an archive of several arrays (.npz) or non-numeric data"
        )
    return initial


def _save_every(given: int | None, total: int) -> int:
    """Steps between recorded states: ``--save-every`` in [1, total steps]; when not given min(10, total), so
    that the default does not refuse a run of fewer than 10 steps (it records its start and end)."""
    if given is None:
        return min(10, total)
    if not 1 <= given <= total:
        raise CLIError(f"--save-every {given}: must be an integer in [1, {total}] (the steps of --duration / --dt)")
    return given


def _cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from stosim.config import load_device
    from stosim.physics.array import STOArray
    from stosim.plotting import plot_trajectory
    from stosim.simulation import initial_state_from_angles, random_initial_state, simulate
    from stosim.storage import check_output_free, write_dataset_atomic

    if args.out.exists() and not args.overwrite:
        raise CLIError(f"--out {args.out} exists; pass --overwrite to replace it")
    check_output_free(args.out)  # refused now rather than after the run while another process writes --out
    device = load_device(args.device)
    if args.coupling_matrix is not None:
        array = STOArray.with_matrix(device, args.coupling_matrix, args.coupling, current_a=args.current)
        if args.n is not None and args.n != array.n_oscillators:
            raise CLIError(
                f"--n {args.n} does not match the {array.n_oscillators} x {array.n_oscillators} --coupling-matrix"
            )
    else:
        array = STOArray.generate(
            device, 10 if args.n is None else args.n, args.coupling, seed=args.seed, current_a=args.current
        )
    n = array.n_oscillators
    if args.initial is not None:
        initial = _load_initial(args.initial)
    elif args.initial_angles is not None:
        initial = initial_state_from_angles(n, *args.initial_angles)
    else:
        initial = random_initial_state(n, args.seed)

    from stosim.checks import check_steps
    from stosim.simulation import steps_for_duration

    try:
        total = check_steps(steps_for_duration(args.duration, args.dt), "--duration", "--dt")
    except ArithmeticError:  # --duration / --dt beyond the float range
        raise CLIError(f"--duration / --dt = {args.duration!r} s / {args.dt!r} s: too many steps") from None
    save_every = _save_every(args.save_every, total)
    with _step_progress("simulate", total) as progress:
        traj = simulate(
            array,
            initial,
            args.duration,
            args.dt,
            save_every=save_every,
            temperature_k=args.temperature,
            dynamical_snr_db=args.dynamical_snr,
            observation_snr_db=args.observation_snr,
            seed=args.seed,
            dtype=np.float32 if args.float32 else np.float64,
            coupling_dtype=np.float32 if args.float32_coupling else None,
            progress=progress,
            allow_beyond_limits=args.allow_beyond_limits,
            dynamical_noise_reference_s=args.dynamical_noise_reference,
        )
    ds = traj.to_dataset()
    write_dataset_atomic(ds, args.out, overwrite=True)
    if args.plot is not None:
        plot_trajectory(ds, args.plot)
    summary = {
        "out": str(args.out),
        "plot": str(args.plot) if args.plot else None,
        "n_oscillators": n,
        "steps": total,
        "recorded": int(traj.time_s.size),
        "duration_s": args.duration,
        "dt_s": args.dt,
        "measured_dynamical_snr_db": traj.measured_dynamical_snr_db,
        "measured_observation_snr_db": traj.measured_observation_snr_db or None,
    }
    if args.json:
        print(_json_line(summary))
    else:
        print(
            f"wrote {args.out} ({traj.time_s.size} recorded states of {n} oscillators, {total} steps)"
            + (f" and {args.plot}" if args.plot else "")
        )
    return 0


def _format_coords(coords: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in coords.items())


def _sweep_json(summary) -> str:
    """The ``--json`` line of a sweep: its summary, the failures counted."""
    return _json_line({**summary.as_dict(), "failures": len(summary.failures)})


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stosim.extras import MissingExtraError
    from stosim.sweep import SweepFailedError, load_spec, run_sweep

    sweep = load_spec(args.spec)
    if args.dry_run:
        values = {
            d.name: ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in d.values.tolist())
            for d in sweep.dims
        }
        dims = "; ".join(f"{d.name} = {values[d.name]} ({d.attrs['units']})" for d in sweep.dims) or "one point"
        print(f"{args.spec}: valid; kind = {sweep.spec.kind}, {len(sweep)} points; {dims}")
        if args.list_points:
            for point in sweep.points:
                print(f"  {point.flat}: {_format_coords(point.coords)}")
        return 0
    if args.out is None:
        raise CLIError("--out FILE.h5 is required (or pass --dry-run)")
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers {args.workers}: must be >= 1")
    bar = tqdm(unit="point", desc=sweep.spec.name, disable=None, file=sys.stderr, dynamic_ncols=True)
    # without a terminal (a batch job, a log file) the bar is off: a plain line every 5 % or minute instead
    plain = {"last_s": time.monotonic(), "every": 1}

    def on_start(to_run: int, total: int) -> None:
        bar.reset(total=to_run)
        plain["every"] = max(1, to_run // 20)
        if to_run < total:
            bar.write(f"resuming: {total - to_run} of {total} points done, {to_run} to run", file=sys.stderr)

    def on_point(event) -> None:
        bar.update(1)
        if event.status != "done":
            bar.write(
                f"point {_format_coords(event.point.coords)} failed: {event.error.splitlines()[0]}", file=sys.stderr
            )
        now = time.monotonic()
        if bar.disable and (
            event.finished % plain["every"] == 0 or event.finished == event.to_run or now - plain["last_s"] >= 60
        ):
            plain["last_s"] = now
            print(f"{sweep.spec.name}: {event.finished} / {event.to_run} points run", file=sys.stderr, flush=True)

    try:
        summary = run_sweep(
            sweep,
            args.out,
            workers=args.workers,
            scheduler=args.scheduler,
            resume=args.resume,
            overwrite=args.overwrite,
            fail_fast=args.fail_fast,
            flush_seconds=args.flush_seconds,
            on_start=on_start,
            on_point=on_point,
        )
    except SweepFailedError as exc:
        bar.close()
        print(f"stosim sweep: stopped: {cli_message(str(exc), build_parser(), 'sweep')}", file=sys.stderr)
        if args.json:  # the promised JSON line, also when --fail-fast stopped the sweep
            print(_sweep_json(exc.summary))
        return 1
    except (ConnectionError, TimeoutError) as exc:  # no scheduler at --scheduler, or it has no workers
        raise CLIError(str(exc)) from None
    except MissingExtraError as exc:  # dask.distributed not installed (the `cluster` extra)
        raise CLIError(str(exc)) from None
    finally:
        bar.close()
    if args.json:
        print(_sweep_json(summary))
    else:
        rate = f", {summary.points_per_second:.3g} points/s" if summary.n_run else ""
        print(
            f"wrote {args.out}: {summary.n_done} done, {summary.n_failed} failed, {summary.n_pending} pending of "
            f"{summary.n_points} points ({summary.n_run} run now{rate}; {summary.wall_time_s:.1f} s in all, "
            f"{summary.scheduler})"
        )
    return 1 if summary.n_failed else 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from stosim.sweep import plot_sweep

    out = plot_sweep(
        args.file,
        args.var,
        args.x,
        args.y,
        args.out,
        band=args.band,
        hue=args.hue,
        lyapunov_time=args.lyapunov_time,
        lyapunov_var=args.lyapunov_var,
    )
    print(f"wrote {out}")
    return 0


def _cmd_visualize(args: argparse.Namespace) -> int:
    from stosim.visualize import write_figures

    for path in write_figures(args.out_dir, args.figure, scale=args.scale, seed=args.seed):
        print(f"wrote {path}")
    return 0


_COMMANDS = {
    "validate": _cmd_validate,
    "describe": _cmd_describe,
    "simulate": _cmd_simulate,
    "train": _cmd_train,
    "lyapunov": _cmd_lyapunov,
    "compare": _cmd_compare,
    "sweep": _cmd_sweep,
    "plot": _cmd_plot,
    "ftmle": _cmd_ftmle,
    "dnn": _cmd_dnn,
    "rnn-study": _cmd_rnn_study,
    "visualize": _cmd_visualize,
}


def _configure_logging(verbose: int) -> None:
    """The library's diagnostics (``logging.getLogger("stosim...")``) on stderr: warnings by default,
    info with -v, debug with -vv."""
    import logging

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stosim: %(levelname)s: %(message)s"))
    logger = logging.getLogger("stosim")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stosim`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and --version answer before the heavy imports below
    _configure_logging(args.verbose)
    from stosim.config import DeviceFileError
    from stosim.datasets import DatasetError

    try:
        if args.command in _COMPILING_COMMANDS:
            with _compilation_notice():
                return _COMMANDS[args.command](args)
        return _COMMANDS[args.command](args)
    except (
        CLIError,
        DeviceFileError,
        DatasetError,
        ValueError,
        FileExistsError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"stosim {args.command}: error: {cli_message(str(exc), parser, args.command)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a directory where a file belongs, no permission, a full disk, ...
        print(f"stosim {args.command}: error: {cli_message(str(exc), parser, args.command)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"stosim {args.command}: error: out of memory; reduce the size of the run (--n, the batch, the "
            "number of saved steps)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"stosim {args.command}: interrupted", file=sys.stderr)
        return 130
