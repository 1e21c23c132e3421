"""VRAM: memory sources, pressure levels, pre-flight estimates, the recovery ladder, learned
strategies and calibration. Control-side: nothing here imports torch."""
