"""The generator's worker process and its control-side handles.

Control-side modules (import them anywhere): `protocol`, `channel`, `spawn`.
Worker-side modules (import torch; only inside the worker process or the CLI's model builder):
`tiny_wan`, `tiny_rebuild`, `pipeline_host`, `generation`, `memory_cap` (CUDA part),
`video_output`, `main`.
"""
