"""Privacy at rest and in logs (docs/security.md).

Pseudonymised user ids: with `pseudonymise_user_ids` on, every user id is replaced by a
keyed hash (HMAC-SHA-256 with a secret key, truncated to 128 bits, hex) as soon as an
event is decoded, so the worker's state, its changelog topic and everything derived from
them hold no raw user id. Every metric counts distinct users, and equal ids stay equal
(distinct ones distinct, but for a 2^-128 chance), so the numbers do not change. Rosters
that name users (experts, managers: SPEC section 5) are hashed with the same key when
they are loaded (`streams.steering.files._roster_ids`), so that they meet the same
pseudonyms.

Member sketches (`streams.steering.merges`): their hashes of user ids are keyed with
`sketch_key`, derived from a secret (PULSE_SKETCH_KEY or `sketch_key_file`); without
one, no sketches are written (a known key would let anyone test who is a member).

Log hygiene: `install_log_filters` keeps message content and user ids out of the log
lines Faust writes itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streams.config import ConfigError, read_secret

if TYPE_CHECKING:
    from schemas.events import Event
    from streams.config import RuntimeConfig

KEY_ENV = "PULSE_PSEUDONYM_KEY"
SKETCH_KEY_ENV = "PULSE_SKETCH_KEY"
MIN_KEY_BYTES = 16
DIGEST_BYTES = 16  # 128 bits of HMAC-SHA-256: 32 hex characters
CACHE_MAX = 1 << 20  # distinct ids remembered (~200 bytes each); then it starts over


class Pseudonymiser:
    """Keyed hash of user ids, remembered per distinct id (users repeat, hashing costs
    ~1 µs an id)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the pseudonym key must have at least {MIN_KEY_BYTES} bytes "
                              "(e.g. `openssl rand -hex 32`)")
        self._key = key
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Pseudonymiser(<key hidden>)"

    @classmethod
    def from_runtime(cls, runtime: RuntimeConfig) -> Pseudonymiser | None:
        """The settings' pseudonymiser; None when pseudonymisation is off."""
        if not runtime.pseudonymise_user_ids:
            return None
        key = read_secret("pseudonym_key_file", runtime.pseudonym_key_file, KEY_ENV)
        if not key:
            raise ConfigError(f"pseudonymise_user_ids needs a key: set {KEY_ENV} or "
                              "pseudonym_key_file")
        return cls(key.encode())

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (16 hex characters)."""
        return hmac.new(self._key, b"community-pulse key fingerprint",
                        hashlib.sha256).hexdigest()[:16]

    def __call__(self, user_id: str) -> str:
        pseudonym = self._cache.get(user_id)
        return self._new(user_id) if pseudonym is None else pseudonym

    def _new(self, user_id: str) -> str:
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        pseudonym = hmac.new(self._key, user_id.encode(), hashlib.sha256).digest()[
            :DIGEST_BYTES].hex()
        self._cache[user_id] = pseudonym
        return pseudonym

    def many(self, user_ids: Iterable[str]) -> list[str]:
        return [self(user_id) for user_id in user_ids]

    def events(self, events: Iterable[Event]) -> None:
        """Replace the user id of decoded events in place (the decoder's hot path: the
        cache lookup inlined)."""
        cached = self._cache.get
        for event in events:
            user_id = event.user_id
            event.user_id = cached(user_id) or self._new(user_id)


def sketch_key(runtime: RuntimeConfig) -> bytes | None:
    """The 64-byte key of the member sketches' BLAKE2b hashes, derived from the secret
    (of any length from MIN_KEY_BYTES: BLAKE2b itself takes at most 64); None when no
    secret is set, and then no sketch is written."""
    secret = read_secret("sketch_key_file", runtime.sketch_key_file, SKETCH_KEY_ENV)
    if not secret:
        return None
    if len(secret.encode()) < MIN_KEY_BYTES:
        raise ConfigError(f"the sketch key must have at least {MIN_KEY_BYTES} bytes "
                          "(e.g. `openssl rand -hex 32`)")
    return hmac.new(secret.encode(), b"community-pulse member sketches",
                    hashlib.sha512).digest()


# faust.topics.Topic._on_published (faust-streaming 0.15) logs, on a failed send,
# f"_on_published error for message topic {topic} error {exc} message {message}": the
# message object may render its key and value. The filter keeps topic and error only.
_SEND_FAILED = re.compile(r"_on_published error for message topic (?P<topic>\S+) "
                          r"error (?P<error>.*?) message ", re.S)


class SendFailureFilter(logging.Filter):
    """Rewrites Faust's send-failure warning without the message it failed to send."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("_on_published error"):
            found = _SEND_FAILED.match(text)
            topic, error = (found["topic"], found["error"]) if found else ("?", "?")
            record.msg = "send to topic %s failed: %s (message content not logged)"
            record.args = (topic, error.splitlines()[0][:300] if error else "")
        return True


def install_log_filters() -> None:
    """Attach the filters to the loggers whose lines could carry message content."""
    logging.getLogger("faust.topics").addFilter(SendFailureFilter())
