from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREATE: _ClassVar[WriteMode]
    UPSERT: _ClassVar[WriteMode]
    UPDATE: _ClassVar[WriteMode]
CREATE: WriteMode
UPSERT: WriteMode
UPDATE: WriteMode

class KeyRef(_message.Message):
    __slots__ = ("host_id", "key_id")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    key_id: str
    def __init__(self, host_id: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class CAKeyPair(_message.Message):
    __slots__ = ("cert", "key", "public_key_hash")
    CERT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    cert: str
    key: KeyRef
    public_key_hash: str
    def __init__(self, cert: _Optional[str] = ..., key: _Optional[_Union[KeyRef, _Mapping]] = ..., public_key_hash: _Optional[str] = ...) -> None: ...

class CertAuthority(_message.Message):
    __slots__ = ("cluster_name", "type", "revision", "active_keys", "additional_trusted_keys", "rotation_state", "problems", "rotation")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_TRUSTED_KEYS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_STATE_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    type: str
    revision: int
    active_keys: _containers.RepeatedCompositeFieldContainer[CAKeyPair]
    additional_trusted_keys: _containers.RepeatedCompositeFieldContainer[CAKeyPair]
    rotation_state: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    rotation: Rotation
    def __init__(self, cluster_name: _Optional[str] = ..., type: _Optional[str] = ..., revision: _Optional[int] = ..., active_keys: _Optional[_Iterable[_Union[CAKeyPair, _Mapping]]] = ..., additional_trusted_keys: _Optional[_Iterable[_Union[CAKeyPair, _Mapping]]] = ..., rotation_state: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ..., rotation: _Optional[_Union[Rotation, _Mapping]] = ...) -> None: ...

class Rotation(_message.Message):
    __slots__ = ("phase", "started", "old_active", "nodes")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    OLD_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    phase: str
    started: str
    old_active: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeRotation]
    def __init__(self, phase: _Optional[str] = ..., started: _Optional[str] = ..., old_active: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[_Union[NodeRotation, _Mapping]]] = ...) -> None: ...

class NodeRotation(_message.Message):
    __slots__ = ("host_id", "node_name", "old_keys", "new_key", "done")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_KEYS_FIELD_NUMBER: _ClassVar[int]
    NEW_KEY_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    node_name: str
    old_keys: _containers.RepeatedScalarFieldContainer[str]
    new_key: str
    done: str
    def __init__(self, host_id: _Optional[str] = ..., node_name: _Optional[str] = ..., old_keys: _Optional[_Iterable[str]] = ..., new_key: _Optional[str] = ..., done: _Optional[str] = ...) -> None: ...

class GetCertAuthorityRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class NodeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeldKey(_message.Message):
    __slots__ = ("ca_type", "role", "public_key_hash", "key_id")
    CA_TYPE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ca_type: str
    role: str
    public_key_hash: str
    key_id: str
    def __init__(self, ca_type: _Optional[str] = ..., role: _Optional[str] = ..., public_key_hash: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_name", "host_id", "cluster_name", "token_label", "keys", "problems", "expiry_alerts")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_ALERTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    host_id: str
    cluster_name: str
    token_label: str
    keys: _containers.RepeatedCompositeFieldContainer[HeldKey]
    problems: _containers.RepeatedScalarFieldContainer[str]
    expiry_alerts: _containers.RepeatedCompositeFieldContainer[ExpiryAlert]
    def __init__(self, node_name: _Optional[str] = ..., host_id: _Optional[str] = ..., cluster_name: _Optional[str] = ..., token_label: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[HeldKey, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., expiry_alerts: _Optional[_Iterable[_Union[ExpiryAlert, _Mapping]]] = ...) -> None: ...

class ExpiryAlert(_message.Message):
    __slots__ = ("ca_type", "public_key_hash", "level", "not_after", "node_name", "message", "disabled")
    CA_TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    ca_type: str
    public_key_hash: str
    level: str
    not_after: str
    node_name: str
    message: str
    disabled: bool
    def __init__(self, ca_type: _Optional[str] = ..., public_key_hash: _Optional[str] = ..., level: _Optional[str] = ..., not_after: _Optional[str] = ..., node_name: _Optional[str] = ..., message: _Optional[str] = ..., disabled: _Optional[bool] = ...) -> None: ...

class CertificateOverride(_message.Message):
    __slots__ = ("certificate", "public_key", "chain", "disabled")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    certificate: str
    public_key: str
    chain: _containers.RepeatedScalarFieldContainer[str]
    disabled: bool
    def __init__(self, certificate: _Optional[str] = ..., public_key: _Optional[str] = ..., chain: _Optional[_Iterable[str]] = ..., disabled: _Optional[bool] = ...) -> None: ...

class CertAuthorityOverride(_message.Message):
    __slots__ = ("cluster_name", "type", "revision", "certificate_overrides", "problems")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    type: str
    revision: int
    certificate_overrides: _containers.RepeatedCompositeFieldContainer[CertificateOverride]
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster_name: _Optional[str] = ..., type: _Optional[str] = ..., revision: _Optional[int] = ..., certificate_overrides: _Optional[_Iterable[_Union[CertificateOverride, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateOverrideCSRRequest(_message.Message):
    __slots__ = ("type", "subject", "public_key_hash", "gather", "timeout_seconds")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    GATHER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    type: str
    subject: str
    public_key_hash: str
    gather: bool
    timeout_seconds: float
    def __init__(self, type: _Optional[str] = ..., subject: _Optional[str] = ..., public_key_hash: _Optional[str] = ..., gather: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class OverrideCSR(_message.Message):
    __slots__ = ("ca_type", "role", "public_key_hash", "pem", "node_name")
    CA_TYPE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ca_type: str
    role: str
    public_key_hash: str
    pem: str
    node_name: str
    def __init__(self, ca_type: _Optional[str] = ..., role: _Optional[str] = ..., public_key_hash: _Optional[str] = ..., pem: _Optional[str] = ..., node_name: _Optional[str] = ...) -> None: ...

class CreateOverrideCSRResponse(_message.Message):
    __slots__ = ("csrs", "warnings")
    CSRS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    csrs: _containers.RepeatedCompositeFieldContainer[OverrideCSR]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, csrs: _Optional[_Iterable[_Union[OverrideCSR, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetOverrideRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ListOverridesResponse(_message.Message):
    __slots__ = ("overrides",)
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    overrides: _containers.RepeatedCompositeFieldContainer[CertAuthorityOverride]
    def __init__(self, overrides: _Optional[_Iterable[_Union[CertAuthorityOverride, _Mapping]]] = ...) -> None: ...

class WriteOverrideRequest(_message.Message):
    __slots__ = ("resource", "mode", "force", "check_only")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    CHECK_ONLY_FIELD_NUMBER: _ClassVar[int]
    resource: CertAuthorityOverride
    mode: WriteMode
    force: bool
    check_only: bool
    def __init__(self, resource: _Optional[_Union[CertAuthorityOverride, _Mapping]] = ..., mode: _Optional[_Union[WriteMode, str]] = ..., force: _Optional[bool] = ..., check_only: _Optional[bool] = ...) -> None: ...

class DeleteOverrideResourceRequest(_message.Message):
    __slots__ = ("type", "force")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    force: bool
    def __init__(self, type: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class CreateOverrideRequest(_message.Message):
    __slots__ = ("type", "certificate", "chain", "disabled", "force")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    certificate: str
    chain: _containers.RepeatedScalarFieldContainer[str]
    disabled: bool
    force: bool
    def __init__(self, type: _Optional[str] = ..., certificate: _Optional[str] = ..., chain: _Optional[_Iterable[str]] = ..., disabled: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class UpdateOverrideRequest(_message.Message):
    __slots__ = ("type", "public_key", "set_disabled", "set_certificate", "set_chain", "clear_chain", "force")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SET_DISABLED_FIELD_NUMBER: _ClassVar[int]
    SET_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SET_CHAIN_FIELD_NUMBER: _ClassVar[int]
    CLEAR_CHAIN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    public_key: str
    set_disabled: bool
    set_certificate: str
    set_chain: _containers.RepeatedScalarFieldContainer[str]
    clear_chain: bool
    force: bool
    def __init__(self, type: _Optional[str] = ..., public_key: _Optional[str] = ..., set_disabled: _Optional[bool] = ..., set_certificate: _Optional[str] = ..., set_chain: _Optional[_Iterable[str]] = ..., clear_chain: _Optional[bool] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteOverrideRequest(_message.Message):
    __slots__ = ("type", "public_key", "force")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    public_key: str
    force: bool
    def __init__(self, type: _Optional[str] = ..., public_key: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("revision", "attempts", "changed", "public_key", "problems", "request_id")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    revision: int
    attempts: int
    changed: bool
    public_key: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, revision: _Optional[int] = ..., attempts: _Optional[int] = ..., changed: _Optional[bool] = ..., public_key: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("type", "user", "public_key", "ttl_seconds")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    type: str
    user: str
    public_key: bytes
    ttl_seconds: int
    def __init__(self, type: _Optional[str] = ..., user: _Optional[str] = ..., public_key: _Optional[bytes] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class SignBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SignRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SignRequest, _Mapping]]] = ...) -> None: ...

class SignBatchResponse(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[SignResponse]
    def __init__(self, credentials: _Optional[_Iterable[_Union[SignResponse, _Mapping]]] = ...) -> None: ...

class CAOverrideInfo(_message.Message):
    __slots__ = ("active", "public_key_hash")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    active: bool
    public_key_hash: str
    def __init__(self, active: _Optional[bool] = ..., public_key_hash: _Optional[str] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("certificate", "chain", "ca_override", "serial", "issuer", "not_after", "node_name", "not_after_clipped")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CA_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_CLIPPED_FIELD_NUMBER: _ClassVar[int]
    certificate: str
    chain: _containers.RepeatedScalarFieldContainer[str]
    ca_override: CAOverrideInfo
    serial: str
    issuer: str
    not_after: str
    node_name: str
    not_after_clipped: bool
    def __init__(self, certificate: _Optional[str] = ..., chain: _Optional[_Iterable[str]] = ..., ca_override: _Optional[_Union[CAOverrideInfo, _Mapping]] = ..., serial: _Optional[str] = ..., issuer: _Optional[str] = ..., not_after: _Optional[str] = ..., node_name: _Optional[str] = ..., not_after_clipped: _Optional[bool] = ...) -> None: ...

class ExerciseRequest(_message.Message):
    __slots__ = ("type", "user")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    type: str
    user: str
    def __init__(self, type: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class ExerciseResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: str
    def __init__(self, event: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("since_unix_ns", "limit", "after", "revision", "page_size", "kind", "code")
    SINCE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    since_unix_ns: int
    limit: int
    after: str
    revision: int
    page_size: int
    kind: str
    code: str
    def __init__(self, since_unix_ns: _Optional[int] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ..., revision: _Optional[int] = ..., page_size: _Optional[int] = ..., kind: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next", "revision")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedScalarFieldContainer[str]
    next: str
    revision: int
    def __init__(self, events: _Optional[_Iterable[str]] = ..., next: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class FollowEventsRequest(_message.Message):
    __slots__ = ("after_revision", "kind", "code")
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    after_revision: int
    kind: str
    code: str
    def __init__(self, after_revision: _Optional[int] = ..., kind: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class RotateRequest(_message.Message):
    __slots__ = ("type", "phase")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    type: str
    phase: str
    def __init__(self, type: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class DeleteCertAuthorityRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class OverrideCRL(_message.Message):
    __slots__ = ("fingerprint", "crl")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    crl: str
    def __init__(self, fingerprint: _Optional[str] = ..., crl: _Optional[str] = ...) -> None: ...

class KeyCRL(_message.Message):
    __slots__ = ("public_key_hash", "host_id", "node_name", "crl_number", "crl", "overrides", "revoked_serials")
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CRL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_SERIALS_FIELD_NUMBER: _ClassVar[int]
    public_key_hash: str
    host_id: str
    node_name: str
    crl_number: int
    crl: str
    overrides: _containers.RepeatedCompositeFieldContainer[OverrideCRL]
    revoked_serials: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, public_key_hash: _Optional[str] = ..., host_id: _Optional[str] = ..., node_name: _Optional[str] = ..., crl_number: _Optional[int] = ..., crl: _Optional[str] = ..., overrides: _Optional[_Iterable[_Union[OverrideCRL, _Mapping]]] = ..., revoked_serials: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCRLsRequest(_message.Message):
    __slots__ = ("type",)
    TYPE_FIELD_NUMBER: _ClassVar[int]
    type: str
    def __init__(self, type: _Optional[str] = ...) -> None: ...

class ListCRLsResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyCRL]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyCRL, _Mapping]]] = ...) -> None: ...

class SignCRLsRequest(_message.Message):
    __slots__ = ("type", "public_key")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    type: str
    public_key: str
    def __init__(self, type: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class RevokeCredentialRequest(_message.Message):
    __slots__ = ("type", "serial", "public_key", "certificate")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    type: str
    serial: str
    public_key: str
    certificate: str
    def __init__(self, type: _Optional[str] = ..., serial: _Optional[str] = ..., public_key: _Optional[str] = ..., certificate: _Optional[str] = ...) -> None: ...

class RevokeCredentialResponse(_message.Message):
    __slots__ = ("public_key_hash", "serial", "already_revoked", "revision", "holder")
    PUBLIC_KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    public_key_hash: str
    serial: str
    already_revoked: bool
    revision: int
    holder: str
    def __init__(self, public_key_hash: _Optional[str] = ..., serial: _Optional[str] = ..., already_revoked: _Optional[bool] = ..., revision: _Optional[int] = ..., holder: _Optional[str] = ...) -> None: ...
