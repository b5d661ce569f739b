"""100,000 mutants of the RFC 4475 torture messages (seeded: the same ones every run), fed
to the parser, the stream framer and the transaction layer over UDP and TCP: nothing but
ParseError comes out of the parser and framer, and nothing at all out of the layer.

Four slices of 25,000 with their own seeds, each a few seconds; tests/bench/fuzz.py runs
the same target for 10 million and more."""

from __future__ import annotations

import pytest

from tests.unit.sip import fuzzing

MESSAGES = list(fuzzing.torture_messages())


@pytest.mark.parametrize("seed", [4475, 3261, 3581, 5626])
def test_mutated_torture_messages_raise_nothing_but_parse_errors(seed: int) -> None:
    result = fuzzing.run(MESSAGES, 25_000, seed)
    assert result.mutations == 25_000
    found = {where: result.examples[where][:300] for where in result.escaped}
    assert result.failures == 0, found
