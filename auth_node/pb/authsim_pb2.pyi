from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("cluster_name", "type", "revision", "active_keys", "additional_trusted_keys", "rotation_state")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KEYS_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_TRUSTED_KEYS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_STATE_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    type: str
    revision: int
    active_keys: _containers.RepeatedCompositeFieldContainer[CAKeyPair]
    additional_trusted_keys: _containers.RepeatedCompositeFieldContainer[CAKeyPair]
    rotation_state: str
    def __init__(self, cluster_name: _Optional[str] = ..., type: _Optional[str] = ..., revision: _Optional[int] = ..., active_keys: _Optional[_Iterable[_Union[CAKeyPair, _Mapping]]] = ..., additional_trusted_keys: _Optional[_Iterable[_Union[CAKeyPair, _Mapping]]] = ..., rotation_state: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("node_name", "host_id", "cluster_name", "token_label", "keys")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    host_id: str
    cluster_name: str
    token_label: str
    keys: _containers.RepeatedCompositeFieldContainer[HeldKey]
    def __init__(self, node_name: _Optional[str] = ..., host_id: _Optional[str] = ..., cluster_name: _Optional[str] = ..., token_label: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[HeldKey, _Mapping]]] = ...) -> None: ...
