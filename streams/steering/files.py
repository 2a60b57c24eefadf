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

from streams.config import ConfigError, shown
from streams.privacy import Pseudonymiser
from streams.steering.focus import Manager, parse_managers
from streams.steering.goals import Goal, parse_goals

MAX_ID_CHARS = 256  # as event user and community ids (schemas.events)
MAX_DEPTH = 64  # nesting of a steering file; theirs is 3 to 4 levels
MAX_INT_BITS = 1024  # longer integers stay text (no field takes one; float's range)


class RosterError(ConfigError):
    """An invalid roster file; the message names the community, never a user id."""


class _TooDeep(yaml.composer.ComposerError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML as `yaml.safe_load` reads it, but bounded, so that every file either reads
    or is refused in one line: nesting deeper than MAX_DEPTH is a YAML error (the
    composer recurses: 3,000 levels overflowed Python's stack), and a date that does not
    exist (2027-02-30) or an integer too long for a number stays text, which the field's
    check then refuses by goal and field (PyYAML raised a bare ValueError)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.depth >= MAX_DEPTH:
            raise _TooDeep(None, None, f"nested deeper than {MAX_DEPTH} levels",
                           self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_timestamp(self, node: Any) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:  # e.g. day is out of range for month
            return self.construct_scalar(node)

    def construct_yaml_int(self, node: Any) -> Any:
        try:
            value = super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4,300)
            return self.construct_scalar(node)
        return value if value.bit_length() <= MAX_INT_BITS else self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _load_yaml(path: Path | str, what: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    except ValueError:  # a NUL in the name (a TOML string may hold one)
        raise ConfigError(f"cannot read {what} {shown(str(path))}: not a file name") from None
    try:
        return yaml.load(text, Loader=_Loader)  # (a SafeLoader: plain data only)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        # (PyYAML's other problems may quote the file: a roster's user ids)
        why = f": {exc.problem}" if isinstance(exc, _TooDeep) else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}{why}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # not a YAMLError: a gap above
        raise ConfigError(f"{what} {path} is not valid YAML ({type(exc).__name__})") from None


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
        if not isinstance(community, str) or not 0 < len(community) <= MAX_ID_CHARS:
            raise RosterError(f"{path}: experts: community {shown(community)}: expected a "
                              f"community id (text of 1-{MAX_ID_CHARS} characters)")
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
