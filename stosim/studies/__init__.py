"""Studies: compositions of models, analysis, hardware and data (never imported by the lower layers).

- :mod:`~stosim.studies.training`, :mod:`~stosim.studies.compare`: training through a substrate, and
  the comparison of substrates on one task.
- :mod:`~stosim.studies.run_ftmle`, :mod:`~stosim.studies.run_lyapunov`: FTMLE and Lyapunov-spectrum
  runs of trained models and substrates (the numerics are :mod:`stosim.analysis`).
- :mod:`~stosim.studies.sweep_points`: what one sweep point runs (``train``, ``mle``, ``simulate``,
  ``ftmle``); :mod:`stosim.sweep` (spec, runner, store) sits above and runs them.
- :mod:`~stosim.studies.physics_aware`: training with hardware in the loop (the substrate wrapper is
  :mod:`stosim.hardware.physics_aware_substrate`).
- :mod:`~stosim.studies.dnn_chaos`, :mod:`~stosim.studies.chaotic_init`, :mod:`~stosim.studies.rnn_spectra`,
  :mod:`~stosim.studies.rnn_figures`: the chaos studies of deep and recurrent networks.
"""
