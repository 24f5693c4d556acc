"""Read one PEM block (a certificate or a CSR) from a file or stdin, and a CA certificate's RSA key."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from authsim.cluster.errors import NotFoundError, ValidationError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


def read_pem_block(path: str, kind: str) -> bytes:
    """The one PEM block of type `kind` (e.g. "CERTIFICATE") in file `path` ('-' = stdin).

    Text around the block is ignored; no block of that type, or more than one, is a ValidationError
    naming the file.
    """
    label = "<stdin>" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{label}: no such file") from None
        except OSError as e:
            raise ValidationError([f"{label}: cannot read: {e.strerror}"]) from None
    blocks = [m for m in _PEM_BLOCK.finditer(data) if m.group(1).decode() == kind]
    if len(blocks) != 1:
        found = sorted({m.group(1).decode() for m in _PEM_BLOCK.finditer(data)})
        seen = f" (found: {', '.join(found)})" if found and not blocks else ""
        raise ValidationError([f"{label}: expected exactly one PEM {kind} block, found {len(blocks)}{seen}"])
    return blocks[0].group(0) + b"\n"


def read_pem_certificate(path: str) -> x509.Certificate:
    """The one PEM certificate in file `path` ('-' = stdin); anything else is a ValidationError."""
    pem = read_pem_block(path, "CERTIFICATE")
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        label = "<stdin>" if path == "-" else path
        raise ValidationError([f"{label}: not a valid certificate: {e}"]) from None


def ca_public_key(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """The certificate's public key, which must be RSA: a certificate with another kind of key cannot
    override a CA key, so it is refused."""
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValidationError([f"certificate: public key is {type(key).__name__}, CA keys are RSA"])
    return key
