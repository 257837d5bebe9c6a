"""Studies: compositions of models, analysis and data (never imported by the lower layers)."""
