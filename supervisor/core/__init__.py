"""The foundations every other layer stands on: the exception hierarchy, settings, structured
logging, the supervisor's state vocabulary and the job's domain types.

Invariant: nothing here imports another genvisor package (import-linter's layers contract).
"""

__all__: list[str] = []
