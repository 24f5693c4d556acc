"""PKCS#11 key access and token provisioning: one token per node, keys that never leave it."""

from authsim.hsm.keystore import KeyRef, Pkcs11KeyStore, public_key_hash
from authsim.hsm.provision import DEFAULT_PKCS11_MODULE, TokenConfig, load_token_config, provision_token
from authsim.hsm.token_key import TokenRSAPrivateKey

__all__ = [
    "DEFAULT_PKCS11_MODULE",
    "KeyRef",
    "Pkcs11KeyStore",
    "TokenConfig",
    "TokenRSAPrivateKey",
    "load_token_config",
    "provision_token",
    "public_key_hash",
]
