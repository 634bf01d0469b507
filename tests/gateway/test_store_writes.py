"""The store's write path as the writer uses it (real SQLite): counters added up per transaction
and written at its commit stay exact through savepoints that fail, transactions that fail, and
reads in between; batches of any size land whole, with their duplicates counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_gateway.payload import QUANTITIES, Batch, Record, Value, parse_batch
from meetkit_gateway.store import Store

from .conftest import batch, encode


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "gateway.db")
    yield s
    s.close()


def parsed(seqs: range, boot: int = 3) -> Batch:
    return parse_batch(encode(batch(boot=boot, seqs=seqs)), "ams-001")


def test_a_failed_message_takes_its_counts_with_it(store):
    with store.transaction():
        store.add_batch(parsed(range(0, 3)))
        with pytest.raises(RuntimeError):
            with store.savepoint():
                store.add_batch(parsed(range(3, 6)))
                store.bump("rejected.bad_value")
                raise RuntimeError("a bug in the middle of a message")
        store.add_batch(parsed(range(2, 4)))  # one duplicate, one new
    assert store.counters() == {"batches": 2, "records": 4, "duplicates": 1}
    assert store.counts().records == 4 and store.counts().readings == 8


def test_counts_read_inside_a_transaction_include_its_own(store):
    with store.transaction():
        store.add_batch(parsed(range(0, 2)))
        assert store.counters() == {"batches": 1, "records": 2}
        with pytest.raises(RuntimeError):
            with store.savepoint():
                store.bump("records", 5)
                assert store.counters()["records"] == 7  # written to the table inside the savepoint
                raise RuntimeError
        store.bump("status")
        assert store.counters() == {"batches": 1, "records": 2, "status": 1}
    assert store.counters() == {"batches": 1, "records": 2, "status": 1}


def test_a_failed_transaction_counts_nothing(store):
    store.add_batch(parsed(range(0, 1)))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.add_batch(parsed(range(1, 3)))
            store.bump("rejected.not_json")
            raise RuntimeError
    assert store.counters() == {"batches": 1, "records": 1}
    store.bump("status")  # outside a transaction: written at once
    assert store.counters() == {"batches": 1, "records": 1, "status": 1}


def test_a_big_batch_is_stored_whole(store):
    # More rows than one SQLite statement takes parameters for (999): split, all of it lands.
    values = {q: Value(1.0, 0.5, 2.0, 3) if QUANTITIES[q].form == "summary" else Value(1.0) for q in QUANTITIES}
    records = tuple(Record(seq, 1795510800 + 60 * seq, 60 * seq, 60, values) for seq in range(300))
    big = Batch("ams-001", 4, "0.3.0", "esp32-devkitc", {"pm": "pms5003"}, {q: QUANTITIES[q].unit for q in QUANTITIES},
                records)
    added = store.add_batch(big)
    assert (added.stored, added.duplicates) == (300, 0)
    assert store.counts().readings == 300 * len(QUANTITIES)
    last = {r.quantity: r for r in store.readings(node="ams-001") if r.seq == 299}
    assert last["LAeq"].avg == 1.0 and last["LAeq"].n == 3 and last["cov"].n is None
    again = store.add_batch(big)
    assert (again.stored, again.duplicates) == (0, 300)


def test_a_seq_twice_in_a_batch_made_by_hand_is_a_duplicate(store):
    rec = parsed(range(5, 6)).records[0]
    twice = Batch("ams-001", 3, "0.1.0", "esp32-devkitc", {}, {"pm25": "ug/m3", "temp": "degC"}, (rec, rec))
    added = store.add_batch(twice)
    assert (added.stored, added.duplicates) == (1, 1)
    assert store.counts().readings == 2
