"""Initialise a free SoftHSM2 token through PKCS#11 (C_InitToken, C_InitPIN), the PINs read from stdin.

Run as `python -I -S init_token.py MODULE LABEL` with SOFTHSM2_CONF set and two lines on stdin: the
SO PIN, then the user PIN. The PINs are never in an argument, an environment variable or a log. A
child process of its own, so the module's state (its conf is read at C_Initialize) never mixes with
another token's in the caller; standard library only, so it starts fast.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence

_CKR_OK = 0
_CKR_ALREADY_INITIALIZED = 0x191
_CKF_TOKEN_INITIALIZED = 0x400
_CKF_RW_SESSION = 0x2
_CKF_SERIAL_SESSION = 0x4
_CKU_SO = 0
_LABEL_BYTES = 32
_ulong = ctypes.c_ulong


class _TokenInfo(ctypes.Structure):
    """CK_TOKEN_INFO up to its flags; the rest is room for the fields this program does not read."""

    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial_number", ctypes.c_char * 16),
        ("flags", _ulong),
        ("rest", ctypes.c_ubyte * 256),
    ]


class InitTokenError(Exception):
    """A PKCS#11 call failed; the message names the call and its CKR code, never a PIN."""


def init_token(module_path: str, label: str, so_pin: bytes, pin: bytes) -> int:
    """Initialise the first free token of the module as `label` with these PINs; its slot id."""
    encoded = label.encode()
    if len(encoded) > _LABEL_BYTES:
        raise InitTokenError(f"token label {label!r} is longer than {_LABEL_BYTES} bytes")
    lib = ctypes.CDLL(module_path)
    rv = lib.C_Initialize(None)
    if rv not in (_CKR_OK, _CKR_ALREADY_INITIALIZED):
        raise InitTokenError(f"C_Initialize failed: CKR 0x{rv:x}")
    try:
        slot = _free_slot(lib)
        _check("C_InitToken", lib.C_InitToken(_ulong(slot), so_pin, _ulong(len(so_pin)), encoded.ljust(32)))
        session = _ulong()
        flags = _ulong(_CKF_SERIAL_SESSION | _CKF_RW_SESSION)
        _check("C_OpenSession", lib.C_OpenSession(_ulong(slot), flags, None, None, ctypes.byref(session)))
        try:
            _check("C_Login", lib.C_Login(session, _ulong(_CKU_SO), so_pin, _ulong(len(so_pin))))
            _check("C_InitPIN", lib.C_InitPIN(session, pin, _ulong(len(pin))))
            _check("C_Logout", lib.C_Logout(session))
        finally:
            lib.C_CloseSession(session)
    finally:
        lib.C_Finalize(None)
    return slot


def _free_slot(lib: ctypes.CDLL) -> int:
    """The first slot whose token is not initialised yet (SoftHSM2 always keeps one)."""
    count = _ulong()
    _check("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)))
    slots = (_ulong * count.value)()
    _check("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)))
    for slot in slots[: count.value]:
        info = _TokenInfo()
        _check("C_GetTokenInfo", lib.C_GetTokenInfo(_ulong(slot), ctypes.byref(info)))
        if not info.flags & _CKF_TOKEN_INITIALIZED:
            return int(slot)
    raise InitTokenError("no free token slot")


def _check(call: str, rv: int) -> None:
    if rv != _CKR_OK:
        raise InitTokenError(f"{call} failed: CKR 0x{rv:x}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: init_token.py MODULE LABEL  (SO PIN, then PIN, on stdin)", file=sys.stderr)
        return 2
    lines = sys.stdin.buffer.read().splitlines()
    if len(lines) != 2 or not all(lines):
        print("expected two lines on stdin: the SO PIN, then the user PIN", file=sys.stderr)
        return 2
    try:
        init_token(args[0], args[1], lines[0], lines[1])
    except (InitTokenError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
