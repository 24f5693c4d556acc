"""PKCS#11 key access and token provisioning: one token per node, keys that never leave it.

`KeyStore` is the interface a node uses; `Pkcs11KeyStore` implements it over one session and one
thread; `provision_token` makes a node's SoftHSM2 token.
"""

from authsim.hsm.keystore import HsmProbe, KeyStore
from authsim.hsm.pkcs11_store import DEFAULT_CALL_TIMEOUT, Pkcs11KeyStore
from authsim.hsm.provision import (
    DEFAULT_PKCS11_MODULE,
    P11_KIT_CLIENT_MODULE,
    TokenConfig,
    load_token_config,
    provision_token,
)
from authsim.hsm.token_key import TokenRSAPrivateKey

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_PKCS11_MODULE",
    "P11_KIT_CLIENT_MODULE",
    "HsmProbe",
    "KeyStore",
    "Pkcs11KeyStore",
    "TokenConfig",
    "TokenRSAPrivateKey",
    "load_token_config",
    "provision_token",
]
