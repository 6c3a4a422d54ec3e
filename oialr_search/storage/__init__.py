"""Storage of studies and trials (SQLAlchemy; SQLite by default)."""

from ._errors import StorageError, transient
from ._migrate import SchemaOutdated, SchemaTooNew
from ._schema import COMPLETE, FAILED, INTERRUPTED, PRUNED, RUNNING, STATES
from ._store import DEFAULT_STORAGE, Store, Study, StudyNotFound, Trial, default_storage
from ._writes import TrialTakenOver, holder_grace, is_dead

__all__ = [
    "COMPLETE",
    "DEFAULT_STORAGE",
    "FAILED",
    "INTERRUPTED",
    "PRUNED",
    "RUNNING",
    "STATES",
    "SchemaOutdated",
    "SchemaTooNew",
    "StorageError",
    "Store",
    "Study",
    "StudyNotFound",
    "Trial",
    "TrialTakenOver",
    "default_storage",
    "holder_grace",
    "is_dead",
    "transient",
]
