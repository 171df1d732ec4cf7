"""pipeline.settings.Settings.from_env: defaults, every variable, every refusal."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.settings import KafkaSecurity, Settings

ALL = {
    "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9092",
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "scram-sha-512",
    "KAFKA_SASL_USERNAME": "svc",
    "KAFKA_SASL_PASSWORD": "s3cret",
    "KAFKA_SSL_CAFILE": "/etc/ca.pem",
    "KAFKA_BROKER_PROFILE": "tansu",
    "DATABASE_URL": "postgresql://u:pw@db:5432/app",
    "EVENTS_TOPIC": "ev",
    "DLQ_TOPIC": "ev.dead",
    "EVENTS_PARTITIONS": "12",
    "PIPELINE_APP_ID": "app2",
    "SINK_BATCH_MAX": "500",
    "SINK_BATCH_SECONDS": "0.25",
    "COMPLETENESS_GRACE_SECONDS": "0",
    "PARTITION_IDLE_SECONDS": "60",
    "MAX_EVENT_AGE_SECONDS": "86400",
    "MAX_FUTURE_SECONDS": "0",
    "MAX_MESSAGE_BYTES": "1024",
    "DEDUP_CAPACITY": "0",
    "WORKER_WEB_PORT": "0",
    "WORKER_WEB_HOST": "0.0.0.0",
    "WORKER_DATA_DIR": "/var/lib/worker",
    "LOG_LEVEL": "debug",
    "DB_RETRY_MAX_SECONDS": "0.1",
    "WORKER_STUCK_SECONDS": "5",
}


def test_empty_environment_gives_the_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka_security == KafkaSecurity()
    assert s.kafka_security.protocol == "PLAINTEXT"
    assert s.broker_profile == "kafka"
    assert s.is_tansu is False
    assert s.database_url is None
    assert (s.events_topic, s.dlq_topic) == ("events", "events.dlq")
    assert s.events_partitions == 6
    assert s.app_id == "event-pipeline"
    assert (s.batch_max, s.batch_seconds) == (2000, 0.5)
    assert (s.completeness_grace_seconds, s.partition_idle_seconds) == (300, 300)
    assert (s.max_event_age_seconds, s.max_future_seconds) == (0, 3600)
    assert s.max_message_bytes == 1_048_576
    assert s.dedup_capacity == 2_000_000
    assert (s.web_host, s.web_port) == ("127.0.0.1", 6066)
    assert s.data_dir == ".stack/worker"
    assert s.log_level == "INFO"
    assert s.db_retry_max_seconds == 10.0
    assert s.stuck_after_seconds == 60.0


OPTIONAL = ("DATABASE_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE")


def test_blank_values_mean_the_default() -> None:
    assert Settings.from_env(dict.fromkeys(ALL, "")) == Settings()
    assert Settings.from_env(dict.fromkeys(ALL, "  ")) == Settings()
    assert Settings.from_env(dict.fromkeys(ALL, " \t\n")) == Settings()


@pytest.mark.parametrize("name", OPTIONAL)
@pytest.mark.parametrize("blank", ["", "  ", "\t \n"])
def test_whitespace_only_secrets_and_paths_mean_unset(name: str, blank: str) -> None:
    s = Settings.from_env({name: blank})
    assert s == Settings()
    assert s.database_url is None
    assert s.kafka_security == KafkaSecurity()


@pytest.mark.parametrize("value", ["  ", "\t"])
@pytest.mark.parametrize("name", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_blank_sasl_credentials_are_refused(name: str, value: str) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "pw",
        name: value,
    }
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_blank_database_url_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": "   "}).require_database_url()


def test_every_variable_is_read() -> None:
    s = Settings.from_env(ALL)
    assert s.kafka_bootstrap_servers == "b1:9092,b2:9092"
    assert s.kafka_security == KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
        ssl_cafile="/etc/ca.pem",
    )
    assert s.broker_profile == "tansu" and s.is_tansu
    assert s.database_url == "postgresql://u:pw@db:5432/app"
    assert (s.events_topic, s.dlq_topic) == ("ev", "ev.dead")
    assert s.events_partitions == 12
    assert s.app_id == "app2"
    assert (s.batch_max, s.batch_seconds) == (500, 0.25)
    assert (s.completeness_grace_seconds, s.partition_idle_seconds) == (0, 60)
    assert (s.max_event_age_seconds, s.max_future_seconds) == (86400, 0)
    assert s.max_message_bytes == 1024
    assert s.dedup_capacity == 0
    assert (s.web_host, s.web_port) == ("0.0.0.0", 0)
    assert s.data_dir == "/var/lib/worker"
    assert s.log_level == "DEBUG"
    assert s.db_retry_max_seconds == 0.1
    assert s.stuck_after_seconds == 5.0


def test_dlq_topic_follows_the_events_topic() -> None:
    assert Settings.from_env({"EVENTS_TOPIC": "orders"}).dlq_topic == "orders.dlq"


def test_values_are_stripped() -> None:
    s = Settings.from_env(
        {"EVENTS_PARTITIONS": " 3 ", "EVENTS_TOPIC": " t ", "LOG_LEVEL": " info "}
    )
    assert (s.events_partitions, s.events_topic, s.log_level) == (3, "t", "INFO")


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_PARTITIONS", "3")
    assert Settings.from_env().events_partitions == 3


def test_a_given_mapping_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_PARTITIONS", "3")
    assert Settings.from_env({}).events_partitions == 6


INT_VARS = {
    # name: (minimum, attribute)
    "EVENTS_PARTITIONS": (1, "events_partitions"),
    "SINK_BATCH_MAX": (1, "batch_max"),
    "COMPLETENESS_GRACE_SECONDS": (0, "completeness_grace_seconds"),
    "PARTITION_IDLE_SECONDS": (1, "partition_idle_seconds"),
    "MAX_EVENT_AGE_SECONDS": (0, "max_event_age_seconds"),
    "MAX_FUTURE_SECONDS": (0, "max_future_seconds"),
    "MAX_MESSAGE_BYTES": (1024, "max_message_bytes"),
    "DEDUP_CAPACITY": (0, "dedup_capacity"),
    "WORKER_WEB_PORT": (0, "web_port"),
}
FLOAT_VARS = {
    "SINK_BATCH_SECONDS": (0.01, "batch_seconds"),
    "DB_RETRY_MAX_SECONDS": (0.1, "db_retry_max_seconds"),
    "WORKER_STUCK_SECONDS": (1.0, "stuck_after_seconds"),
}


@pytest.mark.parametrize(("name", "spec"), INT_VARS.items())
def test_whole_number_minimum_is_accepted(name: str, spec: tuple[int, str]) -> None:
    minimum, attr = spec
    assert getattr(Settings.from_env({name: str(minimum)}), attr) == minimum


@pytest.mark.parametrize(("name", "spec"), FLOAT_VARS.items())
def test_number_minimum_is_accepted(name: str, spec: tuple[float, str]) -> None:
    minimum, attr = spec
    assert getattr(Settings.from_env({name: str(minimum)}), attr) == minimum
    assert getattr(Settings.from_env({name: "3"}), attr) == 3.0


BAD = [
    *[(name, "abc") for name in INT_VARS],
    *[(name, "1.5") for name in INT_VARS],
    *[(name, "0x10") for name in INT_VARS],
    *[(name, str(minimum - 1)) for name, (minimum, _) in INT_VARS.items()],
    *[(name, "abc") for name in FLOAT_VARS],
    *[(name, "1,5") for name in FLOAT_VARS],
    *[(name, "0") for name in FLOAT_VARS],
    *[(name, "-1") for name in FLOAT_VARS],
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("KAFKA_SECURITY_PROTOCOL", "SASL"),
    ("KAFKA_SASL_MECHANISM", "GSSAPI"),
    ("KAFKA_SASL_MECHANISM", "OAUTHBEARER"),
    ("KAFKA_BROKER_PROFILE", "redpanda"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", "CRITICAL"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_values_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({name: value})
    message = str(exc.value)
    assert message.startswith(f"{name}=")
    assert repr(value) in message


@pytest.mark.parametrize(("name", "spec"), INT_VARS.items())
def test_numeric_refusal_suggests_a_value(name: str, spec: tuple[int, str]) -> None:
    with pytest.raises(ConfigError, match=r"set it to e\.g\. \d+\.$"):
        Settings.from_env({name: "nope"})
    with pytest.raises(ConfigError, match=f"below the minimum {spec[0]}"):
        Settings.from_env({name: str(spec[0] - 1)})


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_a_username_is_refused(protocol: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_PASSWORD": "pw"})
    assert "KAFKA_SASL_USERNAME" in str(exc.value)
    assert f"KAFKA_SECURITY_PROTOCOL={protocol}" in str(exc.value)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_a_password_is_refused(protocol: str) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_USERNAME": "svc"}
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD") as exc:
        Settings.from_env(env)
    assert f"KAFKA_SECURITY_PROTOCOL={protocol}" in str(exc.value)


@pytest.mark.parametrize("name", list(FLOAT_VARS))
@pytest.mark.parametrize("value", ["nan", "inf", "NaN", "-inf", "Infinity", " inf "])
def test_non_finite_numbers_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as exc:
        Settings.from_env({name: value})
    message = str(exc.value)
    assert message.startswith(f"{name}=")
    assert repr(value.strip()) in message


@pytest.mark.parametrize("port", ["65536", "70000"])
def test_port_above_65535_is_refused(port: str) -> None:
    with pytest.raises(ConfigError, match="WORKER_WEB_PORT") as exc:
        Settings.from_env({"WORKER_WEB_PORT": port})
    assert "0..65535" in str(exc.value)


def test_port_65535_is_accepted() -> None:
    assert Settings.from_env({"WORKER_WEB_PORT": "65535"}).web_port == 65535


def test_choices_are_case_insensitive_where_documented() -> None:
    assert Settings.from_env({"LOG_LEVEL": "error"}).log_level == "ERROR"
    env = {"KAFKA_SASL_MECHANISM": "plain"}
    assert Settings.from_env(env).kafka_security.sasl_mechanism == "PLAIN"


def test_sasl_with_credentials() -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "pw",
    }
    security = Settings.from_env(env).kafka_security
    assert security.aiokafka_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }


def test_plaintext_kwargs() -> None:
    assert KafkaSecurity().aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env(ALL)
    assert "s3cret" not in repr(s)
    assert "pw@db" not in repr(s)
    assert "s3cret" not in repr(s.kafka_security)


def test_require_database_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env({}).require_database_url()
    url = "postgresql://u@h:5432/d"
    assert Settings.from_env({"DATABASE_URL": url}).require_database_url() == url


def test_with_overrides_returns_a_new_object() -> None:
    s = Settings()
    t = s.with_overrides(web_port=7000, events_topic="x")
    assert (t.web_port, t.events_topic) == (7000, "x")
    assert s.web_port == 6066
    with pytest.raises(TypeError):
        s.with_overrides(no_such_setting=1)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.web_port = 1  # type: ignore[misc]


def test_the_worker_refuses_a_faust_it_was_not_written_for() -> None:
    from pipeline.worker.consumer import FAUST_VERSION, check_faust_version

    check_faust_version(FAUST_VERSION)
    with pytest.raises(ConfigError, match=r"faust-streaming 0\.16\.0 is installed"):
        check_faust_version("0.16.0")


def test_topic_replication_and_session_timeout_come_from_the_environment() -> None:
    s = Settings.from_env({"TOPIC_REPLICATION_FACTOR": "3", "WORKER_SESSION_TIMEOUT_SECONDS": "10"})
    assert (s.topic_replication, s.session_timeout_seconds) == (3, 10.0)
    assert Settings.from_env({}).session_timeout_seconds is None
    with pytest.raises(ConfigError, match="WORKER_SESSION_TIMEOUT_SECONDS"):
        Settings.from_env({"WORKER_SESSION_TIMEOUT_SECONDS": "1"})
