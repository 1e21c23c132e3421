"""Recovery planning: what to change after a failure (the memory ladder, pre-flight estimates,
learned strategies, calibration, model repair) as data the supervisor carries out."""

__all__: list[str] = []
