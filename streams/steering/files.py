"""The steering files (SPEC 5): YAML read and validated here, and only here.

- goals file (`goals_file`): `goals: [{id, community, metric, window_days, baseline,
  target, start, deadline, sustain_until, description}]`, see `streams.steering.goals`;
- experts roster (`experts_file`): `experts: {<community_id>: [<user_id>, ...]}`;
- managers file (`managers_file`): `managers: [{name, user_id, follows: [...]}]`, see
  `streams.steering.focus.parse_managers`.

A bad file raises a `ConfigError` subclass with one line that names the goal (or
community) and the field. Rosters hold user ids: they are loaded only by `read_experts`
(`_roster_ids` is the one place a pseudonymisation of user ids must also apply to them),
and no message, log line or output ever shows one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from streams.config import ConfigError
from streams.privacy import Pseudonymiser
from streams.steering.focus import Manager, parse_managers
from streams.steering.goals import Goal, parse_goals

MAX_ID_CHARS = 256  # as event user ids (schemas.events)


class RosterError(ConfigError):
    """An invalid roster file; the message names the community, never a user id."""


def _load_yaml(path: Path | str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}") from None


def read_goals(path: Path | str, windows_days: Sequence[int] | None = None) -> list[Goal]:
    """The goals of a goals file, validated (see `streams.steering.goals.parse_goals`)."""
    return parse_goals(_load_yaml(path, "goals file"), str(path), windows_days)


def read_experts(path: Path | str, pseudonymise: Pseudonymiser | None = None
                 ) -> dict[str, frozenset[str]]:
    """Community id -> its content experts' user ids (as the events name users, or as
    `pseudonymise` hashes them: the worker's decoder does the same)."""
    document = _load_yaml(path, "experts file")
    if document is None:
        return {}
    if not isinstance(document, Mapping) or set(document) - {"experts"}:
        raise RosterError(f"{path}: expected a mapping with one key, experts: "
                          "{<community_id>: [<user_id>, ...]}")
    experts = document.get("experts") or {}
    if not isinstance(experts, Mapping):
        raise RosterError(f"{path}: experts: expected a mapping of community id to user ids")
    roster = {}
    for community, users in experts.items():
        if not isinstance(community, str) or not community:
            raise RosterError(f"{path}: experts: community ids must be text")
        if users is None:
            users = []
        if not isinstance(users, list):
            raise RosterError(f"{path}: community {community!r}: expected a list of user ids")
        for index, user in enumerate(users, start=1):
            if not isinstance(user, str) or not 0 < len(user) <= MAX_ID_CHARS:
                # (the entry itself is not shown: it may be a user id)
                raise RosterError(f"{path}: community {community!r}: entry #{index}: expected "
                                  f"a user id (text of 1-{MAX_ID_CHARS} characters)")
        roster[community] = _roster_ids(users, pseudonymise)
    return roster


def read_managers(path: Path | str, pseudonymise: Pseudonymiser | None = None
                  ) -> list[Manager]:
    """The managers who agreed to have their follow-ups counted, validated; their user
    ids as the core sees event user ids (hashed like them: `_roster_ids`)."""
    managers = parse_managers(_load_yaml(path, "managers file"), f"managers file {path}")
    read = []
    for manager in managers:
        (user_id,) = _roster_ids([manager.user_id], pseudonymise)
        read.append(Manager(manager.name, user_id, manager.follows))
    return read


class Watched:
    """A file to read again when it changes (its modification time or size)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size

    def changed(self) -> bool:
        """Whether it changed since the last call (or since it was watched)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True


def _roster_ids(user_ids: Iterable[str], pseudonymise: Pseudonymiser | None = None
                ) -> frozenset[str]:
    """User ids of a roster as the core sees event user ids: hashed with the events' key
    when user ids are pseudonymised (streams.privacy), so that they still meet."""
    return frozenset(user_ids if pseudonymise is None else pseudonymise.many(user_ids))
