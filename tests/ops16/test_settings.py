"""The settings of notifications, quota plans and retention: defaults, a bad value named, and
the start-up banner saying whether notification e-mail is on."""

from __future__ import annotations

from uuid import uuid4

import pytest

from remails.config import ConfigError, load_settings
from remails.runtime.banner import notification_mail


def test_defaults_are_the_free_plan_and_the_documented_retentions() -> None:
    settings = load_settings()
    assert settings.default_monthly_quota == 3000
    assert settings.dns_recheck_seconds == 72000
    assert (settings.metadata_retention_days, settings.audit_retention_days) == (90, 365)
    assert settings.system_mail is False
    empty = load_settings(system_project_id="", system_from="")  # as Terraform sets them unused
    assert (empty.system_project_id, empty.system_from, empty.system_mail) == (None, None, False)


def test_a_bad_system_sender_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^REMAILS_SYSTEM_FROM: "):
        load_settings(system_from="not-an-address")
    with pytest.raises(ConfigError, match=r"^REMAILS_METADATA_RETENTION_DAYS: "):
        load_settings(metadata_retention_days=0)


def test_the_banner_says_when_notification_mail_is_off() -> None:
    assert notification_mail(load_settings()).startswith("off: set REMAILS_SYSTEM_PROJECT_ID")
    assert notification_mail(load_settings(system_from="n@ops.test")).startswith("off")  # both needed
    project = uuid4()
    on = load_settings(system_project_id=str(project), system_from="n@ops.test")
    assert on.system_mail and notification_mail(on) == f"from n@ops.test (project {project})"
