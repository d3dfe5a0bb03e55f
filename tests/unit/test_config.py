"""Settings: defaults < file < environment < flag, sources, and errors a user can act on.

Every test passes its own ``environ`` and ``cwd``, so neither the real
environment nor the repository's own config/idempotency.yaml leaks in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docstokg.config import (
    DEFAULT_CONFIG_FILE,
    ENABLE_ENV,
    ENV_PREFIX,
    IdempotencyConfig,
    InvalidSettings,
    Settings,
    describe,
    load_settings,
    resolve_db_url,
)
from docstokg.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_FILE = REPO_ROOT / DEFAULT_CONFIG_FILE
TTL_ENV = f"{ENV_PREFIX}LEASE_TTL_S"
ENABLED_ENV = f"{ENV_PREFIX}ENABLED"


def write_config(directory: Path, text: str, name: str = "idempotency.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(
    config_file: Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    cwd: Path,
    enabled_flag: bool | None = None,
) -> InvalidSettings:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config_file, enabled_flag=enabled_flag, environ=environ or {}, cwd=cwd)
    assert isinstance(caught.value, InvalidSettings)
    assert "Traceback" not in str(caught.value)
    assert "pydantic" not in str(caught.value)
    return caught.value


# --- defaults and the shipped file --------------------------------------------


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)

    assert settings.file is None
    assert settings.config == IdempotencyConfig()
    assert settings.sources == dict.fromkeys(IdempotencyConfig.model_fields, "default")
    config = settings.config
    assert config.enabled is False
    assert config.lease_ttl_s == 120
    assert config.stale_file_age_s == 3600
    assert config.reconciliation_interval_s == 300
    assert config.db_path is None
    assert config.db_url is None
    assert config.max_attempts == 5
    assert config.max_bytes == 2 * 1024**3
    assert config.connect_timeout_s == 10
    assert config.read_timeout_s == 60
    assert config.min_speed_bytes_s == 1024
    assert config.min_speed_window_s == 60
    assert config.attempt_deadline_s == 3600
    assert config.max_redirects == 5
    assert config.backoff_base_s == 2.0
    assert config.backoff_max_s == 600
    assert config.user_agent == "docstokg/0.1 (+https://github.com/docstokg)"


def test_shipped_file_sets_every_key_to_its_default(tmp_path: Path) -> None:
    settings = load_settings(SHIPPED_FILE, environ={}, cwd=tmp_path)

    assert settings.config == IdempotencyConfig()
    # Every key is written out, so the file documents them all.
    assert settings.sources == dict.fromkeys(IdempotencyConfig.model_fields, f"file {SHIPPED_FILE}")
    # And every key's comment names its environment override.
    text = SHIPPED_FILE.read_text(encoding="utf-8")
    for key in IdempotencyConfig.model_fields:
        assert f"{ENV_PREFIX}{key.upper()}" in text


def test_default_file_in_cwd_is_read(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config", "idempotency:\n  max_attempts: 9\n")

    settings = load_settings(environ={}, cwd=tmp_path)

    assert settings.file == tmp_path / DEFAULT_CONFIG_FILE
    assert settings.config.max_attempts == 9
    assert settings.sources["max_attempts"] == f"file {tmp_path / DEFAULT_CONFIG_FILE}"


@pytest.mark.parametrize("text", ["", "# nothing\n", "idempotency:\n", "idempotency: {}\n"])
def test_empty_file_or_section_means_defaults(tmp_path: Path, text: str) -> None:
    path = write_config(tmp_path, text)

    settings = load_settings(path, environ={}, cwd=tmp_path)

    assert settings.file == path
    assert settings.config == IdempotencyConfig()
    assert set(settings.sources.values()) == {"default"}


# --- layering ------------------------------------------------------------------


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "idempotency:\n"
        "  lease_ttl_s: 30\n"
        "  stale_file_age_s: 90.5\n"
        "  db_path: ledger.sqlite3\n"
        "  user_agent: my-bot/1.0\n",
    )

    settings = load_settings(path, environ={}, cwd=tmp_path)

    assert settings.config.lease_ttl_s == 30
    assert settings.config.stale_file_age_s == 90.5
    assert settings.config.db_path == "ledger.sqlite3"
    assert settings.config.user_agent == "my-bot/1.0"
    assert settings.sources["lease_ttl_s"] == f"file {path}"
    assert settings.sources["max_attempts"] == "default"


def test_relative_config_file_is_taken_from_cwd(tmp_path: Path) -> None:
    write_config(tmp_path, "idempotency:\n  max_redirects: 0\n", name="other.yaml")

    settings = load_settings(Path("other.yaml"), environ={}, cwd=tmp_path)

    assert settings.file == tmp_path / "other.yaml"
    assert settings.config.max_redirects == 0


def test_env_overrides_file_and_names_the_variable(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "idempotency:\n  lease_ttl_s: 30\n  max_attempts: 3\n  db_url: sqlite://\n"
    )
    environ = {
        TTL_ENV: "60",
        f"{ENV_PREFIX}MAX_BYTES": "1024",
        f"{ENV_PREFIX}DB_URL": "null",
        "UNRELATED": "x",
    }

    settings = load_settings(path, environ=environ, cwd=tmp_path)

    assert settings.config.lease_ttl_s == 60.0
    assert settings.config.max_bytes == 1024
    assert settings.config.db_url is None
    assert settings.config.max_attempts == 3
    assert settings.sources["lease_ttl_s"] == f"env {TTL_ENV}"
    assert settings.sources["max_bytes"] == f"env {ENV_PREFIX}MAX_BYTES"
    assert settings.sources["db_url"] == f"env {ENV_PREFIX}DB_URL"
    assert settings.sources["max_attempts"] == f"file {path}"
    assert settings.sources["backoff_max_s"] == "default"


# --- enabled: flag > env > file > default -------------------------------------


# (file says, DOCSTOKG_ENABLE_IDEMPOTENCY, flag) -> (enabled, source); None = not given.
@pytest.mark.parametrize(
    ("inputs", "outcome"),
    [
        ((None, None, None), (False, "default")),
        ((True, None, None), (True, "file")),
        ((False, None, None), (False, "file")),
        ((False, "true", None), (True, f"env {ENABLE_ENV}")),
        ((True, "false", None), (False, f"env {ENABLE_ENV}")),
        ((None, "1", None), (True, f"env {ENABLE_ENV}")),
        ((None, "no", None), (False, f"env {ENABLE_ENV}")),
        ((None, None, True), (True, "flag --idempotency")),
        ((True, None, False), (False, "flag --no-idempotency")),
        ((False, "false", True), (True, "flag --idempotency")),
        ((True, "true", False), (False, "flag --no-idempotency")),
        ((None, "yes", False), (False, "flag --no-idempotency")),
    ],
)
def test_enabled_precedence(
    tmp_path: Path,
    inputs: tuple[bool | None, str | None, bool | None],
    outcome: tuple[bool, str],
) -> None:
    file_value, env_value, flag = inputs
    expected, source = outcome
    text = "" if file_value is None else f"idempotency:\n  enabled: {str(file_value).lower()}\n"
    path = write_config(tmp_path, text)
    environ = {} if env_value is None else {ENABLE_ENV: env_value}

    settings = load_settings(path, enabled_flag=flag, environ=environ, cwd=tmp_path)

    assert settings.config.enabled is expected
    assert settings.sources["enabled"] == (f"file {path}" if source == "file" else source)


def test_no_idempotency_flag_beats_env_true(tmp_path: Path) -> None:
    environ = {ENABLE_ENV: "true", ENABLED_ENV: "true"}

    settings = load_settings(enabled_flag=False, environ=environ, cwd=tmp_path)

    assert settings.config.enabled is False
    assert settings.sources["enabled"] == "flag --no-idempotency"


def test_prefixed_enabled_variable_also_switches(tmp_path: Path) -> None:
    settings = load_settings(environ={ENABLED_ENV: "on"}, cwd=tmp_path)

    assert settings.config.enabled is True
    assert settings.sources["enabled"] == f"env {ENABLED_ENV}"


def test_two_enable_variables_that_disagree_are_an_error(tmp_path: Path) -> None:
    error = load_error(environ={ENABLE_ENV: "true", ENABLED_ENV: "false"}, cwd=tmp_path)

    assert ENABLE_ENV in str(error)
    assert ENABLED_ENV in str(error)


def test_invalid_enable_variable_names_itself(tmp_path: Path) -> None:
    error = load_error(environ={ENABLE_ENV: "maybe"}, cwd=tmp_path)

    assert error.problems == [
        f"enabled = maybe (from env {ENABLE_ENV}) is invalid: must be a valid boolean, "
        "unable to interpret input"
    ]


# --- errors --------------------------------------------------------------------


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  lease_ttl: 30\n")

    error = load_error(path, cwd=tmp_path)

    assert len(error.problems) == 1
    message = error.problems[0]
    assert message.startswith(f"unknown key 'lease_ttl' in {path} (idempotency section)")
    assert "known keys: enabled, lease_ttl_s, stale_file_age_s" in message


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  max_attempts: 2\ndownload:\n  x: 1\n")

    error = load_error(path, cwd=tmp_path)

    assert "'download'" in str(error)
    assert str(path) in str(error)


def test_unknown_env_variable(tmp_path: Path) -> None:
    error = load_error(environ={f"{ENV_PREFIX}LEASE_TTL": "60"}, cwd=tmp_path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(
        f"unknown environment variable {ENV_PREFIX}LEASE_TTL; known: {ENABLED_ENV}, {TTL_ENV},"
    )


def test_wrong_type_names_key_value_and_source(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  max_attempts: many\n")

    error = load_error(path, environ={TTL_ENV: "abc"}, cwd=tmp_path)

    assert error.problems == [
        f"lease_ttl_s = abc (from env {TTL_ENV}) is invalid: must be a valid number, "
        "unable to parse string as a number; allowed: a number above 0 and at most 2592000 "
        "(30 days)",
        f"max_attempts = many (from file {path}) is invalid: must be a valid integer, "
        "unable to parse string as an integer; allowed: an integer from 1 to 1000",
    ]
    assert str(error).startswith("2 problems in the idempotency configuration:\n")


def test_boolean_is_not_a_number(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  max_attempts: true\n")

    error = load_error(path, cwd=tmp_path)

    assert error.problems == [
        f"max_attempts = true (from file {path}) is invalid: must be a number, not a boolean; "
        "allowed: an integer from 1 to 1000"
    ]


def test_ttl_of_zero(tmp_path: Path) -> None:
    error = load_error(environ={TTL_ENV: "0"}, cwd=tmp_path)

    assert str(error) == (
        f"lease_ttl_s = 0 (from env {TTL_ENV}) is invalid: must be a number above 0 and at most "
        "2592000 (30 days)"
    )


def test_stale_age_shorter_than_ttl(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  stale_file_age_s: 60\n")

    error = load_error(path, cwd=tmp_path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(
        f"stale_file_age_s = 60 (from file {path}) must be >= lease_ttl_s = 120 (from default): "
    )


def test_stale_age_equal_to_ttl_is_fine(tmp_path: Path) -> None:
    settings = load_settings(
        environ={TTL_ENV: "60", f"{ENV_PREFIX}STALE_FILE_AGE_S": "60"}, cwd=tmp_path
    )

    assert settings.config.stale_file_age_s == settings.config.lease_ttl_s == 60


def test_max_attempts_zero(tmp_path: Path) -> None:
    error = load_error(environ={f"{ENV_PREFIX}MAX_ATTEMPTS": "0"}, cwd=tmp_path)

    assert error.problems == [
        f"max_attempts = 0 (from env {ENV_PREFIX}MAX_ATTEMPTS) is invalid: "
        "must be an integer from 1 to 1000"
    ]


def test_backoff_max_below_base(tmp_path: Path) -> None:
    error = load_error(environ={f"{ENV_PREFIX}BACKOFF_MAX_S": "1"}, cwd=tmp_path)

    assert error.problems[0].startswith(
        f"backoff_max_s = 1 (from env {ENV_PREFIX}BACKOFF_MAX_S) must be >= "
        "backoff_base_s = 2 (from default)"
    )


def test_db_path_and_db_url_together(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  db_path: a.sqlite3\n")

    error = load_error(
        path, environ={f"{ENV_PREFIX}DB_URL": "postgresql+psycopg://h/db"}, cwd=tmp_path
    )

    assert len(error.problems) == 1
    assert error.problems[0].startswith(
        f"db_path = 'a.sqlite3' (from file {path}) and "
        f"db_url = 'postgresql+psycopg://h/db' (from env {ENV_PREFIX}DB_URL) are both set"
    )


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  bogus: 1\n  stale_file_age_s: 10\n")
    environ = {TTL_ENV: "0", f"{ENV_PREFIX}TYPO": "1", f"{ENV_PREFIX}BACKOFF_MAX_S": "0.5"}

    error = load_error(path, environ=environ, cwd=tmp_path)

    text = "\n".join(error.problems)
    assert len(error.problems) == 4, text
    assert "'bogus'" in text
    assert f"{ENV_PREFIX}TYPO" in text
    assert "lease_ttl_s = 0" in text
    assert "backoff_max_s = 0.5" in text
    # The stale-age rule is skipped: it would compare against a TTL that is itself invalid.
    assert "stale_file_age_s =" not in text


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    error = load_error(missing, cwd=tmp_path)

    assert str(missing) in str(error)
    assert "--config" in str(error)
    assert "does not exist" in str(error)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "idempotency:\n  lease_ttl_s: 30\n  max_attempts: [1, 2\n")

    error = load_error(path, cwd=tmp_path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{path}, line 4")
    assert "not valid YAML" in error.problems[0]


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- 1\n- 2\n", "list"),
        ("just a string\n", "string"),
        ("idempotency:\n  - lease_ttl_s\n", "list"),
        ("idempotency: 5\n", "int"),
    ],
)
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, what: str) -> None:
    path = write_config(tmp_path, text)

    error = load_error(path, cwd=tmp_path)

    assert len(error.problems) == 1
    assert str(path) in error.problems[0]
    assert f"not a {what}" in error.problems[0]


def test_direct_construction_also_checks_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="stale_file_age_s = 10 must be >= lease_ttl_s = 120"):
        IdempotencyConfig(stale_file_age_s=10)
    with pytest.raises(ValueError, match="extra"):
        IdempotencyConfig.model_validate({"lease_ttl": 1})


# --- describe and resolve_db_url ------------------------------------------------


def test_describe_lists_every_key_in_order_with_source_and_description(tmp_path: Path) -> None:
    settings = load_settings(environ={TTL_ENV: "45"}, cwd=tmp_path)

    rows = describe(settings)

    assert [row[0] for row in rows] == list(IdempotencyConfig.model_fields)
    by_key = {key: (value, source, text) for key, value, source, text in rows}
    assert by_key["lease_ttl_s"][:2] == (45.0, f"env {TTL_ENV}")
    assert by_key["max_attempts"][:2] == (5, "default")
    assert all(text for _, _, text in by_key.values())


def settings_with(tmp_path: Path, **environ: str) -> Settings:
    return load_settings(
        environ={f"{ENV_PREFIX}{key.upper()}": value for key, value in environ.items()},
        cwd=tmp_path,
    )


def test_resolve_db_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    flag = "sqlite:////flag.sqlite3"
    with_url = settings_with(tmp_path, db_url="postgresql+psycopg://h/db")
    with_path = settings_with(tmp_path, db_path="rel/ledger.sqlite3")
    plain = settings_with(tmp_path)

    assert resolve_db_url(flag, with_url, out_dir) == flag
    assert resolve_db_url(flag, with_path, out_dir) == flag
    assert resolve_db_url(None, with_url, out_dir) == "postgresql+psycopg://h/db"
    assert resolve_db_url(None, with_path, out_dir) == (
        f"sqlite:///{tmp_path.resolve()}/rel/ledger.sqlite3"
    )
    assert resolve_db_url(None, plain, out_dir) == (
        f"sqlite:///{out_dir.resolve()}/manifest.sqlite3"
    )


def test_resolve_db_url_refuses_an_empty_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--db"):
        resolve_db_url("  ", settings_with(tmp_path), tmp_path)


# --- property ---------------------------------------------------------------------

positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(ttl=positive, extra=st.floats(min_value=0, max_value=1e6), ratio=st.floats(0, 0.999))
def test_any_positive_ttl_loads_iff_stale_age_is_at_least_it(
    tmp_path_factory: pytest.TempPathFactory, ttl: float, extra: float, ratio: float
) -> None:
    cwd = tmp_path_factory.getbasetemp()
    stale_env = f"{ENV_PREFIX}STALE_FILE_AGE_S"

    settings = load_settings(environ={TTL_ENV: repr(ttl), stale_env: repr(ttl + extra)}, cwd=cwd)
    assert settings.config.lease_ttl_s == ttl
    assert settings.config.stale_file_age_s >= settings.config.lease_ttl_s

    shorter = ttl * ratio
    if shorter > 0:
        with pytest.raises(InvalidSettings, match="must be >= lease_ttl_s"):
            load_settings(environ={TTL_ENV: repr(ttl), stale_env: repr(shorter)}, cwd=cwd)


# --- bounds on every number ------------------------------------------------------

NUMERIC_KEYS = [
    key for key, field in IdempotencyConfig.model_fields.items() if field.annotation in (int, float)
]


def test_every_numeric_key_has_an_upper_bound() -> None:
    """A number without a ceiling reaches a timer or an exponent as an OverflowError."""
    for key in NUMERIC_KEYS:
        field = IdempotencyConfig.model_fields[key]
        assert any(getattr(bound, "le", None) is not None for bound in field.metadata), key


@pytest.mark.parametrize(
    ("key", "written", "allowed"),
    [
        ("max_attempts", "1e23", "an integer from 1 to 1000"),
        ("max_attempts", "1.0e+23", "an integer from 1 to 1000"),
        ("max_attempts", "1001", "an integer from 1 to 1000"),
        ("lease_ttl_s", "1e12", "a number above 0 and at most 2592000 (30 days)"),
        ("stale_file_age_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("reconciliation_interval_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("connect_timeout_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("read_timeout_s", "2592000.5", "a number above 0 and at most 2592000 (30 days)"),
        ("backoff_base_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("backoff_max_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("max_bytes", "1099511627777", "an integer above 0 and at most 1099511627776 (1 TiB)"),
        ("max_redirects", "51", "an integer from 0 to 50"),
        ("min_speed_bytes_s", "1e300", "a number from 0 to 10737418240 (10 GiB/s); 0 disables"),
        ("min_speed_window_s", "1e300", "a number above 0 and at most 2592000 (30 days)"),
        ("attempt_deadline_s", "1e300", "a number from 0 to 2592000 (30 days); 0 disables it"),
    ],
)
@pytest.mark.parametrize("layer", ["file", "env"])
def test_a_number_past_its_bound_names_the_key_and_its_range(
    tmp_path: Path, key: str, written: str, allowed: str, layer: str
) -> None:
    if layer == "file":
        path: Path | None = write_config(tmp_path, f"idempotency:\n  {key}: {written}\n")
        environ = {}
        source = f"file {path}"
    else:
        path, environ, source = None, {f"{ENV_PREFIX}{key.upper()}": written}, f"env {ENV_PREFIX}"
    # A key that fails its own check is left out of the cross-field rules: one problem.

    error = load_error(path, environ=environ, cwd=tmp_path)

    assert len(error.problems) == 1, error.problems
    problem = error.problems[0]
    assert problem.startswith(f"{key} = "), problem
    assert f"(from {source}" in problem
    assert allowed in problem
    assert len(problem) < 300


def test_every_key_at_its_upper_bound_loads(tmp_path: Path) -> None:
    month = 30 * 24 * 3600
    text = "idempotency:\n" + "".join(
        f"  {key}: {value}\n"
        for key, value in {
            "lease_ttl_s": month,
            "stale_file_age_s": month,
            "reconciliation_interval_s": month,
            "max_attempts": 1000,
            "max_bytes": 1024**4,
            "connect_timeout_s": month,
            "read_timeout_s": month,
            "min_speed_bytes_s": 10 * 1024**3,
            "min_speed_window_s": month,
            "attempt_deadline_s": month,
            "max_redirects": 50,
            "backoff_base_s": month,
            "backoff_max_s": month,
        }.items()
    )
    config = load_settings(write_config(tmp_path, text), environ={}, cwd=tmp_path).config

    assert config.max_attempts == 1000
    assert config.lease_ttl_s == config.attempt_deadline_s == month
    assert config.max_bytes == 1024**4


# --- the download deadlines ------------------------------------------------------


def test_the_download_deadlines_are_read_and_zero_disables_two_of_them(tmp_path: Path) -> None:
    environ = {
        f"{ENV_PREFIX}MIN_SPEED_BYTES_S": "0",
        f"{ENV_PREFIX}MIN_SPEED_WINDOW_S": "2.5",
        f"{ENV_PREFIX}ATTEMPT_DEADLINE_S": "0",
    }
    settings = load_settings(environ=environ, cwd=tmp_path)

    assert settings.config.min_speed_bytes_s == 0
    assert settings.config.min_speed_window_s == 2.5
    assert settings.config.attempt_deadline_s == 0
    shown = {key: source for key, _, source, _ in describe(settings)}
    assert shown["min_speed_bytes_s"] == f"env {ENV_PREFIX}MIN_SPEED_BYTES_S"
    assert shown["attempt_deadline_s"] == f"env {ENV_PREFIX}ATTEMPT_DEADLINE_S"


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("min_speed_bytes_s", "-1", "a number from 0 to"),
        ("min_speed_window_s", "0", "a number above 0 and at most"),
        ("attempt_deadline_s", "-0.5", "a number from 0 to"),
        ("attempt_deadline_s", "inf", "finite"),
    ],
)
def test_the_download_deadlines_refuse_values_below_their_range(
    tmp_path: Path, key: str, value: str, fragment: str
) -> None:
    error = load_error(environ={f"{ENV_PREFIX}{key.upper()}": value}, cwd=tmp_path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{key} = {value} (from env ")
    assert fragment in error.problems[0]


# --- user_agent and escaped values ----------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "fragment"),
    [
        ("bot\r\nX-Forged: yes", "control character '\\r' at character 4"),
        ("bot\nX", "control character '\\n' at character 4"),
        ("bot\x1b[2J", "control character '\\x1b' at character 4"),
        ("bot\x00v1", "control character '\\x00'"),
        ("bot\tv1", "control character '\\t'"),
        ("bot\x7fv1", "control character '\\x7f'"),
        ("bot\x85v1", "control character '\\x85'"),  # NEL: str.strip() would eat it at the end
        ("bötchen", "non-ASCII character 'ö' at character 2"),
    ],
)
@pytest.mark.parametrize("layer", ["file", "env"])
def test_a_user_agent_no_header_can_carry_is_a_configuration_error(
    tmp_path: Path, agent: str, fragment: str, layer: str
) -> None:
    if layer == "file":
        quoted = agent.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        path: Path | None = write_config(tmp_path, f'idempotency:\n  user_agent: "{quoted}"\n')
        environ: dict[str, str] = {}
    else:
        path, environ = None, {f"{ENV_PREFIX}USER_AGENT": agent}

    error = load_error(path, environ=environ, cwd=tmp_path)

    assert len(error.problems) == 1
    assert error.problems[0].startswith("user_agent = ")
    assert fragment in error.problems[0]
    assert str(error).isprintable(), "the message must show the value escaped"


def test_a_user_agent_may_hold_spaces_but_not_start_or_end_with_one(tmp_path: Path) -> None:
    agent = "docstokg/2.0 (+mailto:ops@example.org; like curl/8)"
    assert (
        load_settings(environ={f"{ENV_PREFIX}USER_AGENT": agent}, cwd=tmp_path).config.user_agent
        == agent
    )
    path = write_config(tmp_path, 'idempotency:\n  user_agent: "docstokg/1 "\n')

    error = load_error(path, cwd=tmp_path)

    assert "must not start or end with a space" in error.problems[0]


def test_a_bad_value_is_shown_escaped_and_cut_short(tmp_path: Path) -> None:
    environ = {TTL_ENV: "1\x1b[2J\r\nforged line", f"{ENV_PREFIX}MAX_ATTEMPTS": "9" * 5000}

    error = load_error(environ=environ, cwd=tmp_path)

    text = str(error)
    assert "\x1b" not in text
    assert "\r" not in text
    assert "lease_ttl_s = '1\\x1b[2J\\r\\nforged line'" in text
    assert len(text) < 1500
