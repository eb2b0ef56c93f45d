from __future__ import annotations

import service.errors as errors
from service.errors import ERROR_TABLE, ServiceError, public_message, spec_for


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def test_every_error_kind_has_one_row() -> None:
    kinds = {cls.kind for cls in [ServiceError, *_subclasses(ServiceError)]}
    assert kinds <= set(ERROR_TABLE)
    codes = [spec.code for spec in ERROR_TABLE.values()]
    assert len(codes) == len(set(codes))


def test_statuses_are_sane() -> None:
    for spec in ERROR_TABLE.values():
        assert 400 <= spec.http_status < 600
        assert spec.grpc_status.isupper()
    assert ERROR_TABLE["embedding_not_found"].http_status == 404
    assert ERROR_TABLE["overloaded"].http_status == 503
    assert ERROR_TABLE["unsupported_media_type"].http_status == 415
    assert ERROR_TABLE["payload_too_large"].http_status == 413


def test_unexpected_exceptions_are_internal_and_hidden() -> None:
    exc = KeyError("secret internals")
    assert spec_for(exc).code == "internal_error"
    assert "secret" not in public_message(exc)
    err = errors.EmbeddingNotFound("gone")
    assert spec_for(err).code == "embedding_not_found"
    assert public_message(err) == "gone"
