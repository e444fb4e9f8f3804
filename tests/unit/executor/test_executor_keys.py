"""Which model routes name an API key variable that is not set."""

from __future__ import annotations

from bulkhead.models import ModelCatalog, ModelSpec
from executor_service.providers.openai_compatible import unset_api_key_variables

CATALOG = ModelCatalog(
    default_model="echo",
    models={
        "echo": ModelSpec(provider="builtin"),
        "hosted": ModelSpec(provider="openai", api_key_env="HOSTED_KEY"),
        "backup": ModelSpec(provider="openai", api_key_env="BACKUP_KEY"),
        "local": ModelSpec(provider="openai"),
    },
)


def test_unset_keys_listed_by_route() -> None:
    unset = unset_api_key_variables(CATALOG, {"HOSTED_KEY": "secret"})

    assert unset == {"backup": "BACKUP_KEY"}


def test_empty_key_counts_as_unset() -> None:
    unset = unset_api_key_variables(CATALOG, {"HOSTED_KEY": "", "BACKUP_KEY": "x"})

    assert unset == {"hosted": "HOSTED_KEY"}


def test_all_keys_set_lists_nothing() -> None:
    environ = {"HOSTED_KEY": "a", "BACKUP_KEY": "b"}

    assert unset_api_key_variables(CATALOG, environ) == {}
