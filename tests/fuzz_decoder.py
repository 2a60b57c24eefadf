"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer), beside the hypothesis
tests of tests/test_poison.py, which runs this for a fixed number of inputs:

    python tests/fuzz_decoder.py -runs=N -seed=S CORPUS_DIR [-dict=FILE]

Each input is a key (or none) and a message. Whatever they hold: `decode_message` does not
raise and gives sound events; keyless, `decode_lines` agrees with it; an `Ingestor` counts
every event once. An exception or a failed check is a crash (libFuzzer exits non-zero and
writes the input that caused it).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

with atheris.instrument_imports():
    from schemas.events import EVENT_TYPES, MAX_FUTURE_MS, MIN_TS_MS, decode_lines, decode_message
    from streams.config import MetricConfig
    from streams.core import PulseCore
    from streams.pipeline import Ingestor

NOW = 1_795_000_000_000
ALL = frozenset(EVENT_TYPES)


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    key = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 12)) \
        if provider.ConsumeBool() else None
    message = provider.ConsumeBytes(provider.remaining_bytes())
    events, rejections = decode_message(message, ALL, NOW, key)
    assert all(rejection.count >= 1 for rejection in rejections)
    for event in events:
        assert isinstance(event.ts, int) and MIN_TS_MS <= event.ts <= NOW + MAX_FUTURE_MS
        assert key is None or event.community_id.encode() == key
    if b"\n" not in message and b"\r" not in message:
        assert decode_lines([message], ALL, NOW) == decode_message(message, ALL, NOW)
    ingestor = Ingestor(PulseCore(MetricConfig()), {"t": ALL})
    ingestor.ingest("t", message, key, NOW)
    stats = ingestor.stats["t"]
    assert stats.consumed == (stats.processed + stats.duplicates
                              + sum(stats.dead_lettered.values()))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
