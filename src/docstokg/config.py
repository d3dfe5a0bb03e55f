"""Settings of the idempotency ledger and the downloader: defaults, file, environment, flag.

Every key lives in the one ``idempotency:`` section of a YAML file
(``config/idempotency.yaml`` by default, or ``--config FILE``) and can be
overridden by ``DOCSTOKG_IDEMPOTENCY_<KEY>``.  Whether the ledger is on at all
is decided, strongest first, by the ``--idempotency``/``--no-idempotency``
flag, the environment (``DOCSTOKG_ENABLE_IDEMPOTENCY`` or
``DOCSTOKG_IDEMPOTENCY_ENABLED``), the file, and the default (off).

The layers are merged by hand rather than by pydantic-settings' sources so
that every effective value keeps the name of the place it came from: a bad
value is reported as ``lease_ttl_s = 0 (from env DOCSTOKG_IDEMPOTENCY_LEASE_TTL_S)``
and ``docstokg config show`` can print where each value was set.  Pydantic
still does all the type checking and the bounds; its errors are translated
into one line per problem, and all problems are reported together so a user
fixes them in one round instead of one run per typo.

Every number has an upper bound as well as a lower one, far above what a real
deployment needs (30 days for any duration, 1000 attempts, 1 TiB): a value
past it is a typo, and would otherwise surface much later as an OverflowError
in a timer or a dead heartbeat thread instead of as a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from docstokg.errors import ConfigurationError

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENABLE_ENV",
    "ENV_PREFIX",
    "IdempotencyConfig",
    "InvalidSettings",
    "Settings",
    "describe",
    "load_settings",
    "resolve_db_url",
]

DEFAULT_CONFIG_FILE = Path("config/idempotency.yaml")
"""Read when no ``--config`` is given and it exists; relative to the current directory."""

ENV_PREFIX = "DOCSTOKG_IDEMPOTENCY_"
"""``DOCSTOKG_IDEMPOTENCY_<KEY>`` overrides ``<key>`` of the file."""

ENABLE_ENV = "DOCSTOKG_ENABLE_IDEMPOTENCY"
"""The documented switch for the ledger, equivalent to ``DOCSTOKG_IDEMPOTENCY_ENABLED``."""

SECTION = "idempotency"
DEFAULT_SOURCE = "default"

# Skips the cross-field checks inside the model so that load_settings can run
# them itself and name the source of each value in the message.
_DEFER_CROSS_CHECKS = "docstokg.defer_cross_checks"

# Environment strings that mean "not set" for the optional keys.
_NULL_WORDS = frozenset({"", "null", "none", "~"})

MAX_DURATION_S = 30 * 24 * 3600.0
"""Upper bound of every ``*_s`` duration: 30 days."""
MAX_ATTEMPTS = 1000
"""Upper bound of ``max_attempts``; also keeps ``2 ** attempt`` in the backoff a finite float."""
MAX_BYTES = 1024**4
"""Upper bound of ``max_bytes``: 1 TiB."""
MAX_POOL_SIZE = 1000
"""Upper bound of ``pool_size``: more connections than any PostgreSQL serves by default."""
MAX_HOST_CONCURRENT = 10_000
"""Upper bound of ``host_max_concurrent``."""
MAX_HOST_RATE = 10_000.0
"""Upper bound of ``host_max_per_s``: requests a second to one host."""
MAX_REDIRECTS = 50
"""Upper bound of ``max_redirects`` (browsers give up at about 20)."""
MAX_SPEED_BYTES_S = 10 * 1024**3
"""Upper bound of ``min_speed_bytes_s``: 10 GiB/s, more than an 80 Gbit/s link carries."""

# How the upper bounds read in a message.
_BOUND_NAMES: dict[object, str] = {
    MAX_DURATION_S: "30 days",
    MAX_BYTES: "1 TiB",
    MAX_SPEED_BYTES_S: "10 GiB/s",
}
# Keys for which 0 switches the check off.
_ZERO_DISABLES = frozenset({"min_speed_bytes_s", "attempt_deadline_s"})
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
_SHOWN_CHARS = 200


class IdempotencyConfig(BaseModel):
    """The validated ``idempotency:`` section; every field has a default.

    Frozen, so a run cannot change its settings half-way; unknown keys are
    refused, so a misspelt key fails loudly instead of silently keeping its
    default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(
        default=False,
        description="Record every job in the idempotency ledger (off: download without one).",
    )
    lease_ttl_s: float = Field(
        default=120.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds a worker holds a job before another may take it over "
        "(> 0, at most 30 days).",
    )
    stale_file_age_s: float = Field(
        default=3600.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Age in seconds after which an orphaned .part file may be deleted; "
        ">= lease_ttl_s, at most 30 days.",
    )
    reconciliation_interval_s: float = Field(
        default=300.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds between reconciliation passes over expired leases and stray files "
        "(> 0, at most 30 days).",
    )
    db_outage_s: float = Field(
        default=120.0,
        ge=0,
        le=MAX_DURATION_S,
        description="Seconds a run waits for a ledger database that stopped answering "
        "(a restart, a lost connection) before it stops cleanly (0: stop at once; at most "
        "30 days).",
    )
    db_path: str | None = Field(
        default=None,
        min_length=1,
        description="SQLite file of the ledger, used when db_url is null "
        "(null: manifest.sqlite3 in the run's output directory).",
    )
    db_url: str | None = Field(
        default=None,
        min_length=1,
        description="SQLAlchemy URL of the ledger (sqlite:///… or postgresql+psycopg://…); "
        "set it or db_path, not both.",
    )
    pool_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_POOL_SIZE,
        description="Ledger connections one process keeps, shared by all its workers: a worker "
        "holds one only inside a unit of work, never while it downloads, and waits for one "
        "when all are busy (null: min(workers, 8); 1 to 1000).",
    )
    redis_url: str | None = Field(
        default=None,
        min_length=1,
        description="Redis URL (redis://host:6379/0) where every process of the fleet shares "
        "per-host cooldowns and caps (null: in this process only, or the ledger's "
        "PostgreSQL when it has one).",
    )
    politeness_in_ledger: bool = Field(
        default=False,
        description="Share per-host cooldowns and caps through the ledger's PostgreSQL when "
        "redis_url is null, so every process of the fleet honours another's 429 (a "
        "transaction per request; false: each process keeps its own).",
    )
    host_max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=MAX_HOST_CONCURRENT,
        description="Requests in flight to one host across every process sharing redis_url or "
        "the PostgreSQL ledger (null: no cap beyond --workers; 1 to 10000).",
    )
    host_max_per_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_HOST_RATE,
        description="Requests a second the fleet starts on one host (null: no cap; at most 10000).",
    )
    host_error_cooldown_s: float = Field(
        default=2.0,
        ge=0,
        le=MAX_DURATION_S,
        description="Seconds the fleet leaves a host alone after a refused connection, a "
        "timeout, or a 429/503 without Retry-After (0: not at all; at most 30 days).",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=MAX_ATTEMPTS,
        description="Attempts per job before it stays FAILED for good (1 to 1000).",
    )
    max_bytes: int = Field(
        default=2 * 1024**3,
        gt=0,
        le=MAX_BYTES,
        description="Largest artifact in bytes; a bigger body fails the job permanently "
        "(at most 1 TiB).",
    )
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds to wait for a TCP/TLS connection to a server (> 0, at most 30 days).",
    )
    read_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds to wait for the next chunk of a response before retrying later "
        "(> 0, at most 30 days).",
    )
    min_speed_bytes_s: float = Field(
        default=1024.0,
        ge=0,
        le=MAX_SPEED_BYTES_S,
        description="Slowest transfer in bytes per second, averaged over min_speed_window_s, "
        "before the attempt fails and is retried later (0 disables; at most 10 GiB/s).",
    )
    min_speed_window_s: float = Field(
        default=60.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds over which min_speed_bytes_s is averaged (> 0, at most 30 days).",
    )
    attempt_deadline_s: float = Field(
        default=3600.0,
        ge=0,
        le=MAX_DURATION_S,
        description="Longest one download attempt may stream, in seconds, before it fails and "
        "is retried later, resuming its .part (0 disables; at most 30 days).",
    )
    max_redirects: int = Field(
        default=5,
        ge=0,
        le=MAX_REDIRECTS,
        description="Redirects followed per request before the job fails (0 to 50).",
    )
    backoff_base_s: float = Field(
        default=2.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Delay in seconds before the first retry; doubles on each further attempt "
        "(> 0, at most 30 days).",
    )
    backoff_max_s: float = Field(
        default=600.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Longest delay in seconds between two attempts; >= backoff_base_s, "
        "at most 30 days.",
    )
    user_agent: str = Field(
        default="docstokg/0.1 (+https://github.com/docstokg)",
        min_length=1,
        description="User-Agent header sent with every request (printable ASCII on one line).",
    )

    @field_validator(
        "lease_ttl_s",
        "stale_file_age_s",
        "reconciliation_interval_s",
        "db_outage_s",
        "pool_size",
        "host_max_concurrent",
        "host_max_per_s",
        "host_error_cooldown_s",
        "max_attempts",
        "max_bytes",
        "connect_timeout_s",
        "read_timeout_s",
        "min_speed_bytes_s",
        "min_speed_window_s",
        "attempt_deadline_s",
        "max_redirects",
        "backoff_base_s",
        "backoff_max_s",
        mode="before",
    )
    @classmethod
    def _no_booleans_for_numbers(cls, value: object) -> object:
        """Refuse ``true``/``false`` where a number belongs.

        Lax mode would read ``max_attempts: true`` as 1, which is never what
        the author of the file meant.
        """
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("user_agent")
    @classmethod
    def _one_header_line(cls, value: str) -> str:
        """Refuse a User-Agent that no HTTP request can carry.

        A CR or LF would split the header (or be refused by the HTTP library),
        a non-ASCII character cannot be encoded, and a leading or trailing space
        is illegal in a header value: each would fail every job, permanently,
        one by one, instead of once here.
        """
        for index, char in enumerate(value, start=1):
            if not " " <= char <= "~":
                what = "non-ASCII character" if char.isprintable() else "control character"
                raise ValueError(
                    f"holds the {what} {char!r} at character {index}; a User-Agent header "
                    "is one line of printable ASCII (letters, digits, punctuation, spaces): "
                    "remove it"
                )
        if value != value.strip(" "):
            raise ValueError("must not start or end with a space; an HTTP header value cannot")
        return value

    @model_validator(mode="after")
    def _check_cross_field(self, info: ValidationInfo) -> Self:
        """Keep the rules between keys true for every instance, not only loaded ones."""
        context = info.context
        if isinstance(context, Mapping) and context.get(_DEFER_CROSS_CHECKS):
            return self
        problems = _cross_field_problems(self)
        if problems:
            raise ValueError(
                "; ".join(_format_cross_problem(problem, self, None) for problem in problems)
            )
        return self


@dataclass(frozen=True)
class _CrossProblem:
    key: str
    other: str
    relation: str  # ">=" or "conflicts"
    why: str


def _cross_field_problems(config: IdempotencyConfig) -> list[_CrossProblem]:
    """The rules that involve two keys, each broken one as a problem."""
    problems: list[_CrossProblem] = []
    if config.stale_file_age_s < config.lease_ttl_s:
        problems.append(
            _CrossProblem(
                "stale_file_age_s",
                "lease_ttl_s",
                ">=",
                "a .part file younger than a lease may still be being written by its holder, "
                "so it must not count as stale",
            )
        )
    if config.backoff_max_s < config.backoff_base_s:
        problems.append(
            _CrossProblem(
                "backoff_max_s",
                "backoff_base_s",
                ">=",
                "the longest delay between attempts cannot be shorter than the first one",
            )
        )
    if config.db_path is not None and config.db_url is not None:
        problems.append(
            _CrossProblem(
                "db_path",
                "db_url",
                "conflicts",
                "it is ambiguous which database is meant; set only one of them "
                "(db_url for any database, db_path for a SQLite file)",
            )
        )
    return problems


def _format_cross_problem(
    problem: _CrossProblem, config: IdempotencyConfig, sources: Mapping[str, str] | None
) -> str:
    def part(key: str) -> str:
        shown = f"{key} = {_show(getattr(config, key))}"
        return shown if sources is None else f"{shown} (from {sources[key]})"

    if problem.relation == "conflicts":
        return f"{part(problem.key)} and {part(problem.other)} are both set: {problem.why}"
    return f"{part(problem.key)} must be {problem.relation} {part(problem.other)}: {problem.why}"


KEYS: tuple[str, ...] = tuple(IdempotencyConfig.model_fields)
"""The keys of the ``idempotency:`` section, in the order of the fields."""


def env_var(key: str) -> str:
    """The environment variable that overrides ``key``."""
    return f"{ENV_PREFIX}{key.upper()}"


class InvalidSettings(ConfigurationError):
    """One or more settings are invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            message = problems[0]
        else:
            lines = "\n".join(f"  - {problem}" for problem in problems)
            message = f"{len(problems)} problems in the idempotency configuration:\n{lines}"
        super().__init__(message)


@dataclass(frozen=True)
class Settings:
    """The effective configuration and where each of its values came from.

    ``sources`` maps every key to ``"default"``, ``"file <path>"``,
    ``"env <VARIABLE>"`` or ``"flag --idempotency"``/``"flag --no-idempotency"``;
    ``file`` is the YAML file that was read, if any.
    """

    config: IdempotencyConfig
    sources: dict[str, str]
    file: Path | None


def load_settings(
    config_file: Path | None = None,
    *,
    enabled_flag: bool | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults < file < environment < flag and validate the result.

    ``config_file`` is the ``--config`` option: it must exist.  Without it,
    ``DEFAULT_CONFIG_FILE`` under ``cwd`` (the current directory) is read if
    present.  ``enabled_flag`` is ``--idempotency`` (True),
    ``--no-idempotency`` (False) or neither (None).  ``environ`` defaults to
    ``os.environ``; tests pass their own.

    Raises :class:`InvalidSettings` (a :class:`ConfigurationError`, exit code
    2 in the CLI) listing every problem: an unreadable or malformed file, an
    unknown key or ``DOCSTOKG_IDEMPOTENCY_*`` variable, a wrong type, a value
    out of range or two values that contradict each other.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    problems: list[str] = []
    values: dict[str, object] = {}
    sources: dict[str, str] = dict.fromkeys(KEYS, DEFAULT_SOURCE)

    path = _config_path(config_file, cwd, problems)
    if path is not None:
        file_source = f"file {path}"
        for key, value in _read_section(path, problems).items():
            values[key] = value
            sources[key] = file_source

    _apply_environment(env, values, sources, problems)

    if enabled_flag is not None:
        values["enabled"] = enabled_flag
        sources["enabled"] = "flag --idempotency" if enabled_flag else "flag --no-idempotency"

    config = _validate(values, sources, problems)
    if problems or config is None:
        raise InvalidSettings(problems)
    return Settings(config=config, sources=sources, file=path)


def describe(settings: Settings) -> list[tuple[str, object, str, str]]:
    """Rows of (key, effective value, source, description) in field order, for ``config show``."""
    return [
        (
            key,
            getattr(settings.config, key),
            settings.sources.get(key, DEFAULT_SOURCE),
            field.description or "",
        )
        for key, field in IdempotencyConfig.model_fields.items()
    ]


def resolve_db_url(db_flag: str | None, settings: Settings, out_dir: Path) -> str:
    """The ledger's database URL: ``--db`` > ``db_url`` > ``db_path`` > the run's own file.

    A relative ``db_path`` is taken from the current directory, like any other
    path a user types; the run's own database is ``manifest.sqlite3`` in
    ``out_dir``.  The result is always absolute, so workers started from other
    directories open the same file.
    """
    if db_flag is not None:
        if not db_flag.strip():
            raise ConfigurationError(
                "--db was given an empty value; pass a database URL such as "
                "sqlite:///path/to/ledger.sqlite3, or leave the option out"
            )
        return db_flag
    config = settings.config
    if config.db_url is not None:
        return config.db_url
    if config.db_path is not None:
        return f"sqlite:///{Path(config.db_path).expanduser().resolve()}"
    return f"sqlite:///{out_dir.resolve()}/manifest.sqlite3"


# --- the layers ---------------------------------------------------------------


def _config_path(config_file: Path | None, cwd: Path | None, problems: list[str]) -> Path | None:
    """The file to read, or None; a ``--config`` that does not exist is a problem."""
    if config_file is not None:
        path = config_file if config_file.is_absolute() or cwd is None else cwd / config_file
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            problems.append(
                f"the configuration file {path} (given by --config) {what}; check the "
                f"path, or leave --config out to use {DEFAULT_CONFIG_FILE} if it exists"
            )
            return None
        return path
    default = DEFAULT_CONFIG_FILE if cwd is None else cwd / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def _read_section(path: Path, problems: list[str]) -> dict[str, object]:
    """The known keys of the file's ``idempotency:`` section; problems go to ``problems``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"cannot read the configuration file {path}: {error}")
        return {}
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problems.append(_yaml_problem(path, error))
        return {}

    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(
            f"{path} must be a mapping with one '{SECTION}:' section, not a "
            f"{_yaml_type(document)}; see {DEFAULT_CONFIG_FILE} in the docstokg repository"
        )
        return {}
    extra_sections = [name for name in document if name != SECTION]
    if extra_sections:
        problems.append(
            f"unknown top-level key{'s' if len(extra_sections) > 1 else ''} "
            f"{', '.join(repr(name) for name in extra_sections)} in {path}; "
            f"only an '{SECTION}:' section is allowed"
        )
    section = document.get(SECTION)
    if section is None:
        return {}
    if not isinstance(section, dict):
        problems.append(
            f"the '{SECTION}:' section of {path} must be a mapping of key: value, "
            f"not a {_yaml_type(section)}"
        )
        return {}

    known: dict[str, object] = {}
    for key, value in section.items():
        if key in KEYS:
            known[key] = value
        else:
            problems.append(
                f"unknown key {key!r} in {path} ({SECTION} section); known keys: {', '.join(KEYS)}"
            )
    return known


def _yaml_problem(path: Path, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    reason = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}, {reason}" if context else reason
    return f"{where}: the file is not valid YAML ({detail})"


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


def _apply_environment(
    env: Mapping[str, str],
    values: dict[str, object],
    sources: dict[str, str],
    problems: list[str],
) -> None:
    """Lay the ``DOCSTOKG_IDEMPOTENCY_*`` and ``DOCSTOKG_ENABLE_IDEMPOTENCY`` variables on top."""
    known_vars = {env_var(key): key for key in KEYS}
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known_vars:
            problems.append(
                f"unknown environment variable {name}; known: {', '.join(known_vars)}, {ENABLE_ENV}"
            )

    for name, key in known_vars.items():
        if key == "enabled" or name not in env:
            continue
        raw = env[name].strip()
        optional = IdempotencyConfig.model_fields[key].default is None
        values[key] = None if optional and raw.lower() in _NULL_WORDS else raw
        sources[key] = f"env {name}"

    # Two names switch the ledger on; both are read, and they must agree.
    switches: dict[str, bool] = {}
    for name in (ENABLE_ENV, env_var("enabled")):
        if name not in env:
            continue
        raw = env[name].strip()
        try:
            switches[name] = _BOOL.validate_python(raw)
        except ValidationError as error:
            problems.append(
                f"enabled = {_show_raw(raw)} (from env {name}) is invalid: "
                f"{_reason(error.errors()[0])}"
            )
    if len(set(switches.values())) > 1:
        problems.append(
            "the environment both enables and disables the ledger: "
            + " and ".join(f"{name}={env[name].strip()}" for name in switches)
            + "; unset one of them"
        )
    elif switches:
        name = next(iter(switches))  # ENABLE_ENV first: it is the documented name
        values["enabled"] = switches[name]
        sources["enabled"] = f"env {name}"


def _validate(
    values: dict[str, object], sources: dict[str, str], problems: list[str]
) -> IdempotencyConfig | None:
    """Validate the merged values; field errors and cross-field errors name their source."""
    deferred = {_DEFER_CROSS_CHECKS: True}
    try:
        config = IdempotencyConfig.model_validate(values, context=deferred)
    except ValidationError as error:
        bad_keys: set[str] = set()
        for detail in error.errors():
            loc = detail["loc"]
            key = str(loc[0]) if loc else ""
            if key in sources:
                bad_keys.add(key)
                value = values.get(key)
                shown = _show_raw(value) if isinstance(value, str) else _show(value)
                reason = _field_reason(key, detail)
                problems.append(f"{key} = {shown} (from {sources[key]}) is invalid: {reason}")
            else:  # not expected: unknown keys are filtered out before validation
                problems.append(f"invalid configuration: {_reason(detail)}")
        # Check the rules between keys on what did validate, so that all
        # problems come out in one run; pairs with a bad key are skipped.
        good = {key: value for key, value in values.items() if key not in bad_keys}
        try:
            partial = IdempotencyConfig.model_validate(good, context=deferred)
        except ValidationError:  # pragma: no cover - every key in good validated above
            return None
        problems.extend(
            _format_cross_problem(problem, partial, sources)
            for problem in _cross_field_problems(partial)
            if problem.key not in bad_keys and problem.other not in bad_keys
        )
        return None
    problems.extend(
        _format_cross_problem(problem, config, sources) for problem in _cross_field_problems(config)
    )
    return config


# --- messages -----------------------------------------------------------------


def _field_reason(key: str, detail: Mapping[str, Any]) -> str:
    """Why ``key``'s value was refused; for a number, always with the range it must be in."""
    allowed = _allowed_range(key)
    if allowed is None:
        return _reason(detail)
    if detail.get("type") in _BOUND_ERRORS:
        return f"must be {allowed}"
    return f"{_reason(detail)}; allowed: {allowed}"


def _allowed_range(key: str) -> str | None:
    """The values a numeric key accepts, in words ("an integer from 1 to 1000"); None otherwise."""
    field = IdempotencyConfig.model_fields[key]
    if field.annotation not in (int, float):
        return None
    lower, joiner, upper = "", " to ", ""
    for bound in field.metadata:  # pydantic's Gt/Ge/Le markers, one attribute each
        if (above := getattr(bound, "gt", None)) is not None:
            lower, joiner = f"above {_show(above)}", " and at most "
        elif (least := getattr(bound, "ge", None)) is not None:
            lower = f"from {_show(least)}"
        elif (most := getattr(bound, "le", None)) is not None:
            name = _BOUND_NAMES.get(most)
            upper = _show(most) + (f" ({name})" if name else "")
    kind = "an integer" if field.annotation is int else "a number"
    text = f"{kind} {lower}{joiner}{upper}"
    return f"{text}; 0 disables it" if key in _ZERO_DISABLES else text


def _reason(detail: Mapping[str, Any]) -> str:
    """Pydantic's message, reworded to read after "is invalid: "."""
    message = str(detail.get("msg", "invalid value"))
    for prefix, replacement in (("Input should be ", "must be "), ("Value error, ", "")):
        if message.startswith(prefix):
            message = replacement + message[len(prefix) :]
    if message.startswith("String should have at least 1 character"):
        message = "must not be empty"
    if message[:1].isupper() and message[1:2].islower():  # "Unable to parse ..."
        message = message[0].lower() + message[1:]
    return message


def _show(value: object) -> str:
    """A value as a user would write it in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if isinstance(value, int) and len(str(value)) > 30:
        return f"{value:.3e}"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return _quoted(value)
    return repr(value)


def _show_raw(value: str) -> str:
    """A string as typed; quoted (and escaped) when it is empty, has spaces or is not printable.

    Values come from files and environments that anyone may have written: quoting
    what is not plainly printable keeps a CR, LF or ESC in one from forging a
    line of the error message or driving the terminal that shows it.
    """
    if (
        value == ""
        or value != value.strip()
        or " " in value
        or not value.isprintable()
        or len(value) > _SHOWN_CHARS
    ):
        return _quoted(value)
    return value


def _quoted(value: str) -> str:
    """``repr`` of ``value`` (every non-printable character escaped), cut short when long."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS] + "…")
    return repr(value)
