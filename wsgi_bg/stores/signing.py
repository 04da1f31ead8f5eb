"""Signed pickles: nothing written by someone else is ever unpickled.

Whoever can write to a shared store (Redis) could plant a pickle that runs
code when loaded. So every pickle a store keeps travels in an envelope::

    b"wsgi_bg.2" + HMAC-SHA256(key, purpose, namespace, job id, data) + data

and is loaded only after the MAC checks out. The purpose, the namespace and
the job id are inside the MAC, so a signed value cannot be moved to another
job or another namespace (another app sharing the key), or used as another
kind of value. The key is the app's secret, shared by every process
(``secret_key=`` or the ``WSGI_BG_SECRET_KEY`` environment variable).

Values in the first envelope (``b"wsgi_bg.1"``, whose MAC left the namespace
out) fail the check with a message saying so; they are never loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..exceptions import WsgiBgError

_MAGIC = b"wsgi_bg.2"
#: The envelope before the namespace was signed: refused, with a message.
_OLD_MAGIC = b"wsgi_bg.1"
_MAC_SIZE = hashlib.sha256().digest_size
#: The environment variable read when ``secret_key`` is not given.
SECRET_KEY_ENV = "WSGI_BG_SECRET_KEY"
_MIN_KEY_BYTES = 16

_HOW_TO_MAKE_ONE = (
    "Make one with: python -c \"import secrets; print(secrets.token_hex(32))\""
    f" and give the same value to every web and worker process, as the"
    f" {SECRET_KEY_ENV} environment variable or"
    " BackgroundMiddleware(secret_key=...)."
)


class BadSignature(WsgiBgError):
    """A stored value failed its signature check: it was not written by a
    process holding this app's secret key, or it was changed since."""


def resolve_secret_key(secret_key: str | bytes | None) -> bytes:
    """The key from ``secret_key``, else from ``WSGI_BG_SECRET_KEY``.

    :raises ValueError: if there is none, or it is shorter than 16 bytes;
        the message says how to make one.
    """
    if secret_key is None:
        secret_key = os.environ.get(SECRET_KEY_ENV) or None
    if secret_key is None:
        raise ValueError(
            "a Redis store needs a secret key: everything it pickles into Redis"
            " is signed with it, so that whoever can write to Redis cannot make"
            f" your processes run code. {_HOW_TO_MAKE_ONE}"
        )
    if isinstance(secret_key, str):
        secret_key = secret_key.encode("utf-8")
    if not isinstance(secret_key, bytes):
        raise TypeError(f"secret_key must be str or bytes, got {secret_key!r}")
    if len(secret_key) < _MIN_KEY_BYTES:
        raise ValueError(
            f"the secret key must be at least {_MIN_KEY_BYTES} bytes long, got"
            f" {len(secret_key)}. {_HOW_TO_MAKE_ONE}"
        )
    return secret_key


class Signer:
    """Signs and checks the pickles a store keeps."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, namespace: str, job_id: str, data: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (purpose.encode(), namespace.encode(), job_id.encode(), data):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def sign(self, purpose: str, job_id: str, data: bytes, *,
             namespace: str = "") -> bytes:
        """``data`` in its envelope, for job ``job_id`` of ``namespace``."""
        return _MAGIC + self._mac(purpose, namespace, job_id, data) + data

    def unsign(self, purpose: str, job_id: str, blob: bytes, *,
               namespace: str = "") -> bytes:
        """The data inside ``blob``, once its signature checks out for job
        ``job_id`` of ``namespace``.

        :raises BadSignature: if it does not.
        """
        header = len(_MAGIC) + _MAC_SIZE
        if blob.startswith(_OLD_MAGIC):
            raise BadSignature(
                f"the stored {purpose} of job {job_id} was signed in wsgi_bg's"
                " first format, whose signature did not cover the namespace,"
                " and was not loaded: stored before an upgrade of wsgi_bg (run"
                " the job again to get a fresh one)"
            )
        if len(blob) < header or not blob.startswith(_MAGIC):
            raise BadSignature(
                f"the stored {purpose} of job {job_id} is not signed: it was not"
                " written by wsgi_bg, and was not loaded"
            )
        mac, data = blob[len(_MAGIC) : header], blob[header:]
        if not hmac.compare_digest(mac, self._mac(purpose, namespace, job_id, data)):
            raise BadSignature(
                f"the stored {purpose} of job {job_id} failed its signature check"
                " (written with another secret key or in another namespace, or"
                " changed in the store) and was not loaded"
            )
        return data
