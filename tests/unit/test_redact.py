"""pipeline.logs.redact_dsn: no DSN form libpq accepts shows its secret, and nothing raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.logs import redact_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://u@h/db?password=s3cret", "postgres://u@h/db?password=***"),
        (
            "postgresql://h/db?sslmode=require&sslpassword=s3cret&application_name=x",
            "postgresql://h/db?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("postgresql://u:s3cret@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u:s3c@ret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:s3cret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql:///db?host=/tmp", "postgresql:///db?host=/tmp"),
        ("host=db password=s3cret dbname=x", "host=db password=*** dbname=x"),
        ("host=db password = s3cret", "host=db password = ***"),
        ("host=db password='s 3\\'cret' user=u", "host=db password=*** user=u"),
        ("host=db PASSWORD=s3cret", "host=db PASSWORD=***"),
        ("host=db sslpassword=s3cret", "host=db sslpassword=***"),
        ("notadsn", "notadsn"),
        ("", ""),
    ],
)
def test_every_dsn_form_hides_its_secret(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert "s3c" not in redact_dsn(dsn) and "cret" not in redact_dsn(dsn)


@given(
    st.sampled_from(["postgresql://", "postgres://", "", "host=h "]),
    st.text(min_size=0, max_size=40),
)
def test_it_never_raises(prefix: str, rest: str) -> None:
    assert isinstance(redact_dsn(prefix + rest), str)


def test_a_url_of_another_scheme_hides_its_password_too() -> None:
    # Shown in "DATABASE_URL=... is not a PostgreSQL URL": the password must not be.
    assert redact_dsn("mysql://u:secret@db/app") == "mysql://u:***@db/app"
