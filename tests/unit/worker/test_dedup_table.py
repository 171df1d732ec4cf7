"""pipeline.worker.dedup_table.DedupState against a fake Faust table (a dict and a changelog)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.worker.dedup_table import CHUNK, DedupState


class FakeTable:
    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.changelog: list[tuple[int | None, Any, Any]] = []

    def send_changelog(self, partition: int | None, key: Any, value: Any) -> None:
        self.changelog.append((partition, key, value))


SUFFIX = re.compile(r":[0-9a-f]{12}")


def entry(partition: int, offset: int, n: int = 0, suffix: str = "0123456789ab") -> str:
    """An entry name as remember() writes it (with a fixed suffix for table fixtures)."""
    return f"{partition}:{offset:015d}:{n}:{suffix}"


def prefix(partition: int, offset: int, n: int = 0) -> str:
    """The deterministic part of an entry name: ``partition:first_offset:n``."""
    return f"{partition}:{offset:015d}:{n}"


def base(name: str) -> str:
    """An entry name without its unique per-write suffix (which must be present)."""
    head, sep, suffix = name.rpartition(":")
    assert sep and SUFFIX.fullmatch(sep + suffix), name
    return head


def log_of(table: FakeTable) -> list[tuple[int | None, str, Any]]:
    """The changelog with entry names reduced to their deterministic prefix."""
    return [(p, base(k), v) for p, k, v in table.changelog]


def keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


class TestRemember:
    def test_one_changelog_record_per_batch(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(3, 42, ["p:a", "p:b", "a:c"])
        assert log_of(table) == [(3, prefix(3, 42), ["p:a", "p:b", "a:c"])]
        [(_, name, _)] = table.changelog
        assert re.fullmatch(r"3:000000000000042:0:[0-9a-f]{12}", name)
        assert table.data == {name: ["p:a", "p:b", "a:c"]}
        assert all(state.seen(k) for k in ("p:a", "p:b", "a:c"))
        assert not state.seen("p:d")
        assert len(state) == 3

    def test_chunks_of_chunk_keys(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=10 * CHUNK)
        batch = keys("k", 2 * CHUNK + 1)
        state.remember(0, 7, batch)
        assert [(p, k, len(v)) for p, k, v in log_of(table)] == [
            (0, prefix(0, 7, 0), CHUNK),
            (0, prefix(0, 7, 1), CHUNK),
            (0, prefix(0, 7, 2), 1),
        ]
        assert len({k for _, k, _ in table.changelog}) == 3
        assert [k for _, _, v in table.changelog for k in v] == batch
        assert len(state) == 2 * CHUNK + 1

    def test_exactly_one_chunk(self) -> None:
        table = FakeTable()
        DedupState(table, capacity=10 * CHUNK).remember(0, 0, keys("k", CHUNK))
        assert len(table.changelog) == 1

    def test_known_keys_are_not_written_again(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(0, 0, ["a", "b"])
        state.remember(0, 2, ["b", "c"])
        state.remember(0, 4, ["a", "c"])
        assert log_of(table) == [(0, prefix(0, 0), ["a", "b"]), (0, prefix(0, 2), ["c"])]
        assert len(state) == 3

    def test_nothing_to_remember(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(0, 0, [])
        state.remember(0, 1, iter([]))
        assert table.changelog == []
        assert table.data == {}
        assert len(state) == 0

    def test_capacity_zero_disables(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=0)
        state.remember(0, 0, ["a", "b"])
        assert table.changelog == []
        assert table.data == {}
        assert not state.seen("a")
        assert len(state) == 0

    def test_entries_of_partitions_are_separate(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(0, 5, ["a"])
        state.remember(1, 5, ["b"])
        assert sorted(base(k) for k in table.data) == [prefix(0, 5), prefix(1, 5)]
        assert sorted(int(k.split(":")[0]) for k in table.data) == [0, 1]
        assert state.seen("a") and state.seen("b")

    def test_remembered_keys_survive_a_later_batch_with_the_same_first_offset(self) -> None:
        # A re-read that starts at the same offset (Faust re-delivery) holds new keys too.
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(0, 10, ["a", "b"])
        state.remember(0, 10, ["a", "b", "c"])
        assert all(state.seen(k) for k in ("a", "b", "c"))
        # Two entries with the same prefix but distinct names: nothing overwritten.
        assert log_of(table) == [(0, prefix(0, 10), ["a", "b"]), (0, prefix(0, 10), ["c"])]
        assert len(table.data) == 2
        assert sorted(table.data.values()) == [["a", "b"], ["c"]]
        recovered = DedupState(FakeTable(table.data), capacity=100)
        recovered.load_partitions([0])
        assert all(recovered.seen(k) for k in ("a", "b", "c"))


class TestEviction:
    def test_oldest_entry_is_evicted_with_a_tombstone(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=5)
        state.remember(0, 0, ["a", "b", "c"])
        first = table.changelog[-1][1]
        state.remember(1, 0, ["d", "e"])
        assert log_of(table)[-1] == (1, prefix(1, 0), ["d", "e"])  # 5 keys: nothing evicted
        assert all(v is not None for _, _, v in table.changelog)
        state.remember(0, 3, ["f"])
        assert log_of(table)[-2] == (0, prefix(0, 3), ["f"])
        assert table.changelog[-1] == (0, first, None)  # the tombstone names the exact entry
        assert first not in table.data
        assert not any(state.seen(k) for k in "abc")
        assert all(state.seen(k) for k in "def")
        assert len(state) == 3

    def test_evicts_as_many_entries_as_needed(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=3)
        for offset, ks in enumerate((["a"], ["b"], ["c"])):
            state.remember(2, offset, ks)
        written = [k for _, k, _ in table.changelog]
        state.remember(2, 9, ["d", "e", "f"])
        tombstones = [(p, k) for p, k, v in table.changelog if v is None]
        assert tombstones == [(2, k) for k in written]
        assert [base(k) for k in written] == [prefix(2, 0), prefix(2, 1), prefix(2, 2)]
        assert [base(k) for k in table.data] == [prefix(2, 9)]
        assert len(state) == 3

    def test_a_batch_larger_than_the_capacity_is_not_kept(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=2)
        state.remember(0, 0, ["a", "b", "c"])
        assert log_of(table) == [(0, prefix(0, 0), ["a", "b", "c"]), (0, prefix(0, 0), None)]
        assert table.changelog[0][1] == table.changelog[1][1]
        assert len(state) == 0
        assert table.data == {}

    def test_a_key_also_held_by_a_newer_entry_survives_eviction(self) -> None:
        table = FakeTable({entry(0, 1): ["a", "b"], entry(0, 2): ["b", "c"]})
        state = DedupState(table, capacity=2)
        state.load_partitions([0])
        assert (0, entry(0, 1), None) in table.changelog
        assert not state.seen("a")
        assert state.seen("b") and state.seen("c")
        assert len(state) == 2


class TestPartitions:
    DATA: ClassVar[dict[str, list[str]]] = {
        entry(0, 1): ["p:a", "p:b"],
        entry(1, 1): ["p:c"],
        entry(2, 1): ["a:d"],
        entry(2, 5): ["a:e", "a:f"],
        entry(10, 1): ["p:g"],
    }

    def test_load_rebuilds_the_index_for_those_partitions_only(self) -> None:
        table = FakeTable(self.DATA)
        state = DedupState(table, capacity=100)
        assert state.load_partitions([0, 2]) == 5
        assert all(state.seen(k) for k in ("p:a", "p:b", "a:d", "a:e", "a:f"))
        assert not state.seen("p:c")
        assert not state.seen("p:g")  # partition 10 is not partition 1 or 0
        assert len(state) == 5
        assert table.changelog == []  # loading writes nothing
        assert table.data == self.DATA

    def test_loading_twice_is_a_no_op(self) -> None:
        state = DedupState(FakeTable(self.DATA), capacity=100)
        state.load_partitions([0])
        assert state.load_partitions([0]) == 0
        assert state.load_partitions([]) == 0
        assert state.load_partitions([0, 1]) == 1
        assert len(state) == 3

    def test_load_takes_any_iterable(self) -> None:
        state = DedupState(FakeTable(self.DATA), capacity=100)
        assert state.load_partitions({10: 0}) == 1  # the processor passes a dict
        assert state.seen("p:g")

    def test_tombstones_and_foreign_values_in_the_table_are_skipped(self) -> None:
        table = FakeTable({entry(0, 1): None, entry(0, 2): "junk", entry(0, 3): ["k"]})
        state = DedupState(table, capacity=100)
        assert state.load_partitions([0]) == 1
        assert state.seen("k")

    def test_forget_drops_those_partitions(self) -> None:
        table = FakeTable(self.DATA)
        state = DedupState(table, capacity=100)
        state.load_partitions([0, 1, 2])
        state.forget_partitions([2, 7])
        assert not any(state.seen(k) for k in ("a:d", "a:e", "a:f"))
        assert state.seen("p:a") and state.seen("p:c")
        assert len(state) == 3
        assert table.data == self.DATA  # the table keeps them for whoever owns them next
        assert table.changelog == []

    def test_a_forgotten_partition_is_re_read_when_it_returns(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(4, 0, ["x", "y"])
        state.forget_partitions([4])
        assert not state.seen("x")
        assert state.load_partitions([4]) == 2
        assert state.seen("x") and state.seen("y")

    def test_a_remembered_partition_loaded_later_is_not_double_counted(self) -> None:
        table = FakeTable()
        state = DedupState(table, capacity=100)
        state.remember(0, 0, ["x"])
        state.load_partitions([0])
        assert len(state) == 1

    def test_load_beyond_capacity_evicts_the_oldest(self) -> None:
        table = FakeTable(self.DATA)
        state = DedupState(table, capacity=2)
        state.load_partitions([2])
        assert [(p, k, v) for p, k, v in table.changelog] == [(2, entry(2, 1), None)]
        assert state.seen("a:e") and state.seen("a:f") and not state.seen("a:d")

    def test_capacity_zero_remembers_nothing_after_a_load(self) -> None:
        table = FakeTable(self.DATA)
        state = DedupState(table, capacity=0)
        assert state.load_partitions([0, 1, 2, 10]) == 0
        assert len(state) == 0
        assert not state.seen("p:a")
        # Loading nothing also evicts nothing: the table is left whole for other owners.
        assert table.changelog == []
        assert table.data == self.DATA

    def test_entries_written_before_the_unique_suffix_still_load(self) -> None:
        legacy = {prefix(0, 1): ["p:a"], prefix(1, 1): ["p:b"], entry(0, 2): ["p:c"]}
        state = DedupState(FakeTable(legacy), capacity=100)
        assert state.load_partitions([0]) == 2
        assert state.seen("p:a") and state.seen("p:c")
        assert not state.seen("p:b")


@settings(max_examples=50, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 3),  # first offsets repeat: re-reads from the same offset
            st.lists(st.sampled_from(keys("k", 30)), max_size=6),
        ),
        max_size=12,
    ),
    st.integers(1, 12),
)
def test_index_matches_the_table_and_stays_within_capacity(
    batches: list[tuple[int, int, list[str]]], capacity: int
) -> None:
    table = FakeTable()
    state = DedupState(table, capacity)
    for partition, offset, ks in batches:
        state.remember(partition, offset, ks)
        assert len(state) <= capacity
    # Replaying the changelog gives the table; reloading it gives the same answers.
    replayed: dict[str, Any] = {}
    for _, k, v in table.changelog:
        if v is None:
            replayed.pop(k, None)
        else:
            replayed[k] = v
    assert replayed == table.data
    fresh = DedupState(FakeTable(replayed), capacity)
    fresh.load_partitions(range(4))
    for k in keys("k", 30):
        assert fresh.seen(k) == state.seen(k), k
