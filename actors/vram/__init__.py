"""VRAM telemetry: memory sources (NVML, the worker's torch, host RAM) and pressure levels.
Control-side: nothing here imports torch. Pre-flight, the ladder, learned strategies and
calibration are recovery planning and live in `supervisor.recovery`."""
