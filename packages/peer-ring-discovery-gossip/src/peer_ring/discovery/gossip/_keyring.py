"""Shared keys for AES-GCM: the primary key encrypts, every key is tried to decrypt.

Key rotation without a flag day, as in memberlist: (1) add the new key on every node,
(2) make it the primary on every node, (3) remove the old key everywhere. Between steps a
node encrypts with one key and every node can still decrypt it.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peer_ring.core import InvalidArgumentError

NONCE_SIZE = 12
TAG_SIZE = 16
#: Bytes added to every encrypted packet (nonce and authentication tag).
OVERHEAD = NONCE_SIZE + TAG_SIZE


def _check(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
        raise InvalidArgumentError("a gossip key must be 16, 24 or 32 bytes (AES-128/192/256)")
    return bytes(key)


class Keyring:
    """The keys a node accepts, the first of which (the primary) it encrypts with.

    Args:
        primary: the key that encrypts outgoing messages.
        others: further keys accepted when decrypting (during a rotation).

    Raises:
        InvalidArgumentError: a key is not 16, 24 or 32 bytes.
    """

    def __init__(self, primary: bytes, others: list[bytes] | tuple[bytes, ...] = ()) -> None:
        self._keys: list[bytes] = [_check(primary)]
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in others:
            self.add(key)

    @property
    def primary(self) -> bytes:
        """The key outgoing messages are encrypted with."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every accepted key, primary first."""
        return tuple(self._keys)

    def add(self, key: bytes) -> None:
        """Accept ``key`` for decryption too (idempotent)."""
        key = _check(key)
        if key not in self._keys:
            self._keys.append(key)

    def use(self, key: bytes) -> None:
        """Make ``key`` (added first if needed) the primary."""
        key = _check(key)
        if key in self._keys:
            self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Stop accepting ``key``.

        Raises:
            InvalidArgumentError: ``key`` is the primary (make another key primary first).
        """
        key = _check(key)
        if key == self._keys[0]:
            raise InvalidArgumentError("cannot remove the primary key; use() another first")
        if key in self._keys:
            self._keys.remove(key)
            self._ciphers.pop(key, None)

    def _cipher(self, key: bytes) -> AESGCM:
        cipher = self._ciphers.get(key)
        if cipher is None:
            cipher = self._ciphers[key] = AESGCM(key)
        return cipher

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce || ciphertext || tag`` of ``plaintext`` under the primary key."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._cipher(self._keys[0]).encrypt(nonce, plaintext, aad)

    def decrypt(self, data: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when no key authenticates ``data``."""
        if len(data) < OVERHEAD:
            return None
        nonce, body = data[:NONCE_SIZE], data[NONCE_SIZE:]
        for key in self._keys:
            try:
                return self._cipher(key).decrypt(nonce, body, aad)
            except InvalidTag:
                continue
        return None
