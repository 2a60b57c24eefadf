"""Steering (SPEC section 5; the article's sections 2, 3, 4 and 7): what a community
manager steers on, computed from what the core already keeps.

One concept a module, each pure like `streams.core` (no Kafka, no I/O, no clock):

- `goals`: SMART goals per community: expected value on the line from start to
  deadline, progress and status, from snapshot rows.
- `experts`: content experts (inhoudsdeskundigen) per community: who of a roster is a
  member and replies, from the core's per-user logs.
- `merges`: merge suggestions for low and medium communities (member overlap).
- `focus`: where to start (large, active communities of practice) and each manager's
  open follow-ups.

`files` is the one place where the steering YAML files (goals, experts, managers) are
read and validated: rosters of user ids are loaded only there, so they can be
pseudonymised like event user ids and never leave the process. The worker, `replay` and
the CLI are thin adapters around these modules; Parquet tables are written with
`sinks.parquet.TableWriter` (`DATA_DIR/<table>/date=YYYY-MM-DD/`), one view per table in
`pulse.duckdb`. docs/steering.md has each definition, a worked example and what the
community manager does with it.
"""
