"""The one exception hierarchy of docstokg.

Every error a user can meet derives from :class:`DocstokgError`, so a caller
(and the CLI) can catch the whole family in one place.  Each message names the
offending value and says what to do about it; the CLI prints it verbatim.
"""

from __future__ import annotations

from pathlib import Path


class DocstokgError(Exception):
    """Base class of every error docstokg raises on purpose."""


class ConfigurationError(DocstokgError, ValueError):
    """A setting, URL or argument is malformed or unsupported."""


class KeyInputError(DocstokgError, TypeError):
    """A value given to ``job_key``/``op_key`` cannot be hashed canonically."""


class LedgerError(DocstokgError):
    """Something is wrong with the ledger database itself."""


class DatabaseUnavailable(LedgerError):
    """The database cannot be opened: missing file, not a database, server down."""


class TransientDatabaseError(DatabaseUnavailable):
    """A passing database error: connection lost, server restarting, a lock held, a conflict.

    The ledger retries what it safely can; what reaches the caller means the
    unit of work did not happen (or, for a lost COMMIT, may have: every write
    is fenced or keyed, so doing it again is safe).  ``server_seen`` says a
    server did answer (a connection was lost, the server said it is going
    down), as opposed to nothing answering at that address at all.
    """

    def __init__(self, message: str, *, server_seen: bool = False) -> None:
        super().__init__(message)
        self.server_seen = server_seen


class LedgerBusy(TransientDatabaseError):
    """SQLite stayed locked by other writers for longer than the busy timeout."""


class ConstraintViolated(LedgerError):
    """A write broke one of the ledger's constraints (a unique key another writer took first).

    Not a broken database: a race the caller decides again (``constraint``
    names the index or key, when the driver says which).
    """

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class DatabaseOutage(DatabaseUnavailable):
    """The database stayed unreachable for longer than ``db_outage_s``: the run stops."""


class SchemaError(LedgerError):
    """The database schema is not one this code can work with."""


class UnknownRevision(SchemaError):
    """The database is stamped with an Alembic revision this code does not know.

    Usually the database was upgraded by a newer docstokg; nothing is changed.
    """

    def __init__(self, revision: str, known_head: str) -> None:
        self.revision = revision
        super().__init__(
            f"the database is stamped with Alembic revision {revision!r}, which this "
            f"version of docstokg does not know (its newest is {known_head!r}); it was "
            "probably upgraded by a newer docstokg. The database was left unchanged: "
            "upgrade docstokg, or restore a backup made before that upgrade."
        )


class SchemaMismatch(SchemaError):
    """Tables with the ledger's names exist but have another shape."""


class MigrationFailed(SchemaError):
    """An upgrade failed part-way and was rolled back."""


class SchemaNotCurrent(SchemaError):
    """The database has no ledger schema yet, or an older one than this code needs."""


class JobNotFound(LedgerError, LookupError):
    """A job id that no row in ``artifact_jobs`` carries."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"no job with job_id {job_id!r} in the ledger; plan the job first, or check "
            "that the id was copied whole"
        )


class UnknownManifest(LedgerError, LookupError):
    """A manifest name that no job of the ledger belongs to."""

    def __init__(self, manifest: str, known: dict[str, int]) -> None:
        self.manifest = manifest
        listed = ", ".join(f"{name} ({count:,} jobs)" for name, count in sorted(known.items()))
        super().__init__(
            f"no job of this ledger belongs to a manifest named {manifest!r}; "
            + (
                f"its manifests are: {listed}"
                if known
                else "no run has planned a manifest in it yet (jobs planned before "
                "schema_version 8 join theirs on their manifest's next run)"
            )
        )


class LeaseLost(DocstokgError):
    """A worker wrote with a lease that is no longer the job's current one.

    Its lease expired and another worker was granted the job, a cleanup cleared
    it, or the epoch it names is stale.  The worker must stop working on the
    job: whatever it does next is fenced out.
    """

    def __init__(self, job_id: str, owner: str, epoch: int, doing: str) -> None:
        self.job_id = job_id
        self.owner = owner
        self.epoch = epoch
        super().__init__(
            f"{doing} refused: the lease of {owner!r} on job {job_id} (epoch {epoch}) is "
            "no longer current; it expired, or another worker was granted the job. Stop "
            "working on this job (raise lease_ttl_s if leases expire while work goes on)."
        )


class InvalidTransition(DocstokgError, RuntimeError):
    """A move the transition table does not allow (and that is not a replay)."""


class UnknownState(DocstokgError, ValueError):
    """A state name that is not one of :class:`docstokg.states.JobState`'s."""


class EffectResultTooLarge(DocstokgError, ValueError):
    """An effect returned more JSON than the ledger stores for one op."""

    def __init__(self, kind: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the {kind} effect returned {size:,} bytes of JSON, more than the "
            f"{limit:,}-byte limit per op; store large data in a file and return its path "
            "and checksum, or raise max_result_bytes"
        )


class FetchError(DocstokgError):
    """Downloading an artifact failed.

    ``retryable`` says whether another attempt may succeed (a timeout, a 5xx,
    a 429) or not (a 404, a body over the size limit, a redirect loop);
    ``retry_after_s`` carries the server's Retry-After, if it sent one.
    """

    retryable = False

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s
        super().__init__(reason)


class TransientFetchError(FetchError):
    """A failure another attempt may not meet: connection, timeout, 5xx, 408, 429."""

    retryable = True


class PermanentFetchError(FetchError):
    """A failure every attempt would meet again: other 4xx, too large, bad scheme."""


class DownloadInterrupted(DocstokgError):
    """The run was asked to stop while a download was under way; its ``.part`` is kept."""


class PartLost(DownloadInterrupted):
    """Another holder of the job took this worker's part over, or the job was stored meanwhile.

    The worker lost the job: it writes nothing more, and its next ledger write
    is fenced out anyway (see :mod:`docstokg.download.handover`).
    """

    def __init__(self, part: Path, why: str) -> None:
        self.part = part
        super().__init__(
            f"lost the job: {part} {why}; another worker holds the job now (its lease is "
            "newer), so this worker writes nothing more to it and stops (raise lease_ttl_s "
            "if leases expire while downloads go on)"
        )


class StoreError(ConfigurationError):
    """The output folder is laid out in a way docstokg will not write into.

    A ``.staging`` or ``artifacts`` that is a symbolic link (or not a folder)
    could send downloads outside ``--out``; the run refuses it rather than
    guessing what was meant.
    """


class ChecksumMismatch(PermanentFetchError):
    """The downloaded bytes do not hash to the SHA-256 the manifest expects; nothing is stored."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.url = url
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{url}: expected sha256 {expected}, got {actual}; nothing was stored (permanent: "
            "not retried; fix the manifest's sha256 or the source)"
        )


class StoreMismatch(ConfigurationError):
    """``--out`` is not the store this ledger fills (its id file names another, or none)."""


class DuplicateJob(ConstraintViolated):
    """A job with this identity is in the ledger already: its job_id, key or manifest triple.

    Planning never meets it (it inserts a job only if absent and returns the
    one there); a write that bypasses planning, or a hand edit, does.
    """


class ContentAlreadyStored(ConstraintViolated):
    """Another job became the stored (DEDUPED) owner of this content first.

    At most one job per SHA-256 is DEDUPED (uq_artifact_jobs_stored_content);
    the loser of two jobs finishing identical bytes at once decides again
    and ends SKIPPED_DUPLICATE, pointing at the winner's file.
    """


class DuplicateOp(ConstraintViolated):
    """An op with this op_key is recorded already (each step of a job is recorded once)."""


class UnknownJobReference(ConstraintViolated):
    """A row names a job_id that no job carries (an op of a job never planned, or deleted)."""


class ValueNotAllowed(ConstraintViolated):
    """A value the schema refuses: a job state or op status not in its list, or a missing one."""
