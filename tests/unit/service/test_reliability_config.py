"""The security and reliability settings fail fast on bad combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import http_tls_options
from service.config import Settings


def test_defaults_are_off_and_safe() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.tls_cert_file is None and not s.tenant_isolation
    assert s.rate_limit_per_second == 0
    assert s.redis_bulk_socket_timeout > s.redis_socket_timeout
    assert s.redis_breaker_failures > 1
    assert http_tls_options(s) == {}


def test_tls_files_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="go together"):
        Settings(tls_cert_file=cert)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="needs EDGESAM_TLS_CERT_FILE"):
        Settings(tls_client_ca_file=cert)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="is not a file"):
        Settings(tls_cert_file=cert, tls_key_file=tmp_path / "missing.pem")  # type: ignore[call-arg]
    s = Settings(tls_cert_file=cert, tls_key_file=cert, tls_client_ca_file=cert)  # type: ignore[call-arg]
    options = http_tls_options(s)
    assert options["ssl_certfile"] == str(cert) and options["ssl_ca_certs"] == str(cert)


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESAM_MASK_TTL_SECONDS", "120")
    monkeypatch.setenv("EDGESAM_RATE_LIMIT_PER_SECOND", "2.5")
    monkeypatch.setenv("EDGESAM_RATE_LIMIT_BURST", "10")
    monkeypatch.setenv("EDGESAM_REDIS_BREAKER_FAILURES", "5")
    monkeypatch.setenv("EDGESAM_REDIS_BULK_SOCKET_TIMEOUT", "8")
    monkeypatch.setenv("EDGESAM_API_KEYS", "a-long-key-1")
    monkeypatch.setenv("EDGESAM_TENANT_ISOLATION", "1")
    s = Settings()
    assert (s.mask_ttl_seconds, s.rate_limit_per_second, s.rate_limit_burst) == (120, 2.5, 10)
    assert (s.redis_breaker_failures, s.redis_bulk_socket_timeout) == (5, 8.0)
    assert s.tenant_isolation


def test_tenant_isolation_refuses_the_decoder_role() -> None:
    with pytest.raises(ValidationError, match="EDGESAM_ROLE=decoder"):
        Settings(  # type: ignore[call-arg]
            tenant_isolation=True,
            api_keys="a-long-key-1",
            role="decoder",
            encoder_grpc_target="127.0.0.1:1",
        )


def test_the_encoder_batch_defaults_per_device() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.encode_max_batch is None
    assert s.encode_batch("cpu") == 2  # peak RSS within 1.5 GB under a storm
    assert s.encode_batch("cuda") == s.encode_batch("cuda:1") == 8
    explicit = Settings(encode_max_batch=6)  # type: ignore[call-arg]
    assert explicit.encode_batch("cpu") == explicit.encode_batch("cuda") == 6
