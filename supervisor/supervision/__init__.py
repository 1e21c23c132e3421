"""Supervision: OTP-style child specs and restart windows, the explicit state machine, the
supervisor actor and the flow of a job through it."""

__all__: list[str] = []
