"""A node that never answers an offer (its lamp post lost power, it is out of range) no longer holds
a rollout forever: after `[ota] answer_within_s` from its first offer it is skipped, with why, and
the rollout goes on; a canary stage whose every canary was skipped halts instead of going on to the
waves on the strength of no canary at all. `decide` is pure: these tests give it the rollout as
the store holds it and read what it decided; the store's part (migration 8, the first offer kept)
runs on a real SQLite file. The same through the real gateway process: tests/gateway/test_rollouts.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meetkit_gateway.config import ConfigError, OtaConfig, load
from meetkit_gateway.rollouts import RolloutNode, decide
from meetkit_gateway.store import MIGRATIONS, SCHEMA_VERSION, EventRow, RolloutNodeRow, RolloutRow, Store
from meetkit_gateway.timefmt import iso

T0 = 1_800_000_000.0
OTA = OtaConfig(release_keys=(), releases=Path("."), offer_every_s=60, prove_within_s=3600, answer_within_s=6 * 3600)
R = "0.3.0"


def rollout(stage: int = 0) -> RolloutRow:
    return RolloutRow(1, R, False, 1, 2, "running", stage, None, T0, T0, 0)


def node(name: str, stage: int, state: str = "waiting", offers: int = 0, first: float | None = None,
         last: float | None = None, reason: str | None = None) -> RolloutNode:
    return RolloutNode.of(RolloutNodeRow(1, name, stage, state, reason, offers, last, None, T0, first))


def offered(name: str, stage: int, first: float, last: float, offers: int = 360) -> RolloutNode:
    return node(name, stage, "offered", offers, first, last)


def ev(i: int, name: str, state: str, at: float, **body: str) -> EventRow:
    return EventRow(i, name, "ota", state, at, {"v": 1, "node": name, "kind": "ota", "state": state,
                                                "release": R, **body})


def step(nodes: list[RolloutNode], now: float, stage: int = 0, events: tuple[EventRow, ...] = (),
         fw: dict[str, str] | None = None, heard: dict[str, float | None] | None = None, since: float = T0):
    by = {n.node: n for n in nodes}
    return by, decide(rollout(stage), by, fw or {}, list(events), now, OTA, heard or {}, since)


# -- the node away ---------------------------------------------------------------------------------

def test_a_node_silent_past_answer_within_s_is_skipped_and_the_next_stage_starts():
    first = T0 + 10
    now = first + OTA.answer_within_s + 1
    nodes = [node("a", 0, "done", 3, first, first + 100, None), offered("b", 0, first, now - 60),
             node("c", 1), node("d", 1)]
    by, d = step(nodes, now, heard={"a": now - 5, "b": first - 300})
    assert by["b"].state == "skipped"
    assert by["b"].reason == f"not heard since {iso(first - 300)}, no answer to 360 offers in 21600 s"
    assert d.failed == [] and d.skipped == ["b"]
    assert d.state == "running" and d.stage == 1 and d.offer == ["c", "d"]  # the wave goes on


def test_not_yet_skipped_one_second_before_and_offered_again_instead():
    first = T0 + 10
    now = first + OTA.answer_within_s - 1
    by, d = step([offered("a", 0, first, now - 60)], now)
    assert by["a"].state == "offered" and d.skipped == [] and d.offer == ["a"]


def test_a_node_heard_but_not_answering_is_told_apart_from_one_away():
    first = T0
    now = first + OTA.answer_within_s + 60
    nodes = [offered("away", 1, first, now - 60), offered("mute", 1, first, now - 60),
             offered("never", 1, first, now - 60), node("x", 0, "done", 1, T0, T0)]
    by, d = step(nodes, now, stage=1, heard={"away": first - 1, "mute": now - 30, "never": None})
    assert sorted(d.skipped) == ["away", "mute", "never"]
    assert by["away"].reason.startswith(f"not heard since {iso(first - 1)}, no answer")
    assert by["never"].reason == "never heard, no answer to 360 offers in 21600 s"
    assert by["mute"].reason == (f"heard at {iso(now - 30)} but no answer to 360 offers in 21600 s (does its firmware "
                                 "take offers? is its ota topic in the broker's ACL?)")
    # the last wave: the rollout is done, and says who did not get the release
    assert d.state == "done" and d.reason == "3 nodes skipped: away, mute, never"


def test_only_silence_skips_a_node_that_answered_is_held_to_prove_within_s():
    first = T0
    now = first + OTA.answer_within_s + 60
    a = node("a", 0, "accepted", 2, first, first + 60)
    a.accepted_at = now - 10  # it answered late, but it answered: it has prove_within_s from there
    by, d = step([a, node("b", 1)], now)
    assert by["a"].state == "accepted" and d.skipped == [] and d.stage == 0


def test_an_install_the_node_could_not_make_halts_at_once_with_its_reason():
    """After "installed" the node's boot could not install it (appswap.py: event "refused"): the
    rollout halts then, not prove_within_s later."""
    a = node("a", 0, "installed", 1, T0, T0)
    a.accepted_at = T0
    why = "install failed: no room to copy 22016 bytes: 12 KB free"
    by, d = step([a, node("b", 1)], T0 + 90, events=(ev(1, "a", "refused", T0 + 80, reason=why),))
    assert by["a"].state == "failed" and by["a"].reason == f"refused: {why}"
    assert d.failed == [f"a (canary) refused: {why}"] and d.offer == []


def test_after_a_gateway_restart_a_node_is_offered_again_and_given_a_whole_period_first():
    """The gateway was away for hours: the node's events may still be queued at the broker. The
    first step of this run offers it again; it is skipped only once that offer went unanswered."""
    first, started = T0, T0 + 8 * 3600
    by, d = step([offered("a", 0, first, first + 3600, 60)], started + 1, since=started)
    assert by["a"].state == "offered" and d.offer == ["a"]  # not skipped: offered again
    by["a"].offered_at = started + 1  # what step() does with the offer
    _, d = step([offered("a", 0, first, started + 1, 61)], started + 30, since=started)
    assert d.skipped == [] and d.offer == []
    by, d = step([offered("a", 0, first, started + 1, 61)], started + 61, since=started)
    assert by["a"].state == "skipped" and d.skipped == ["a"]


# -- the canaries ----------------------------------------------------------------------------------

def test_every_canary_skipped_halts_the_rollout_before_any_wave():
    first = T0
    now = first + OTA.answer_within_s + 60
    nodes = [offered("c1", 0, first, now - 60), offered("c2", 0, first, now - 60), node("w1", 1), node("w2", 1)]
    by, d = step(nodes, now)
    assert by["c1"].state == by["c2"].state == "skipped"
    assert d.failed == [f"no canary proved {R}: c1, c2 skipped; the waves are not offered a release no node has "
                        "proved (`fleet update` again once a canary is back, or with --nodes naming canaries that "
                        "are on the air)"]
    assert d.offer == [] and by["w1"].state == by["w2"].state == "waiting"


def test_one_canary_proved_is_enough_for_the_waves():
    first = T0
    now = first + OTA.answer_within_s + 60
    nodes = [offered("c1", 0, first, now - 60), node("c2", 0, "done", 1, first, first), node("w1", 1)]
    by, d = step(nodes, now)
    assert by["c1"].state == "skipped" and d.failed == [] and d.stage == 1 and d.offer == ["w1"]


def test_a_node_that_already_ran_the_release_is_no_canary():
    """Done at the plan (it runs the release: never offered) proves nothing about the update."""
    first = T0
    now = first + OTA.answer_within_s + 60
    nodes = [node("old", 0, "done", 0, None, None, "already runs it"), offered("c1", 0, first, now - 60),
             node("w1", 1)]
    _, d = step(nodes, now)
    assert d.failed and d.failed[0].startswith(f"no canary proved {R}: c1 skipped")


def test_without_canaries_skipped_wave_nodes_halt_nothing():
    first = T0
    now = first + OTA.answer_within_s + 60
    nodes = [offered("w1", 1, first, now - 60), node("w2", 2)]  # --canary 0
    by, d = step(nodes, now, stage=1)
    assert d.failed == [] and d.stage == 2 and d.offer == ["w2"]


# -- a skipped node that comes back ----------------------------------------------------------------

def test_a_skipped_node_that_comes_back_is_not_offered_again_in_this_rollout():
    first = T0
    skipped = node("a", 0, "skipped", 360, first, first + 21540, "not heard since x, no answer")
    later = first + 10 * 3600
    by, d = step([skipped, node("b", 0, "done", 1, first, first), node("w", 1, "offered", 1, later - 10, later - 10)],
                 later, stage=1, events=(ev(5, "a", "accepted", later - 1),), heard={"a": later - 1})
    assert by["a"].state == "skipped" and "a" not in d.offer and d.failed == []
    assert by["a"].reason == (f"not heard since x, no answer; answered accepted at {iso(later - 1)} after it was "
                              "skipped: not served in this rollout")
    # said once: its next events change nothing more
    reason = by["a"].reason
    by, _ = step([node("a", 0, "skipped", 360, first, first, reason)], later + 5,
                 events=(ev(6, "a", "accepted", later + 4),))
    assert by["a"].reason == reason and not by["a"].changed


# -- configuration ---------------------------------------------------------------------------------

def _toml(tmp_path: Path, ota: str) -> Path:
    pub = tmp_path / "release.pub"
    from meetkit_tools import release as rel

    if not pub.exists():
        rel.keygen(tmp_path)
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[store]\npath = "g.db"\n[fleet]\nnode_keys = "keys.json"\n[ota]\nrelease_keys = ["{pub}"]\n'
                    + ota)
    return conf


def test_answer_within_s_defaults_to_six_hours_and_must_leave_room_for_a_second_offer(tmp_path: Path):
    cfg = load(_toml(tmp_path, ""))
    assert cfg.ota is not None and cfg.ota.answer_within_s == 21600 and cfg.ota.offer_every_s == 60
    assert load(_toml(tmp_path, "answer_within_s = 120\n")).ota.answer_within_s == 120  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as e:
        load(_toml(tmp_path, "offer_every_s = 600\nanswer_within_s = 300\n"))
    assert e.value.errors == ["ota.answer_within_s: 300 is less than ota.offer_every_s (600): a node would be "
                              "skipped before a second offer"]
    with pytest.raises(ConfigError) as e:
        load(_toml(tmp_path, "answer_within_s = 0\n"))
    assert e.value.errors == ["ota.answer_within_s: must be a number of seconds from 1 to 2.592e+06, got 0 "
                              "(an integer)"]


# -- the store ---------------------------------------------------------------------------------------

def test_a_schema_7_store_with_a_rollout_under_way_is_upgraded_and_its_nodes_keep_their_offers(tmp_path: Path):
    path = tmp_path / "g.db"
    con = sqlite3.connect(path, isolation_level=None)
    for m in MIGRATIONS[:7]:
        con.executescript(m)
    con.execute("PRAGMA user_version = 7")
    con.execute("INSERT INTO rollouts (release, force, canary, wave, state, created_at, updated_at)"
                " VALUES ('0.3.0', 0, 1, 10, 'running', ?, ?)", (T0, T0))
    con.executemany("INSERT INTO rollout_nodes (rollout, node, stage, state, offers, offered_at, updated_at)"
                    " VALUES (1, ?, ?, ?, ?, ?, ?)",
                    [("a", 0, "offered", 4, T0 + 240, T0), ("b", 1, "waiting", 0, None, T0)])
    con.close()
    with Store(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) and SCHEMA_VERSION >= 8
        a, b = s.rollout_nodes(1)
        # the clock of answer_within_s starts at its last offer: later than its first, so never sooner
        assert (a.state, a.offers, a.offered_at, a.first_offered_at) == ("offered", 4, T0 + 240, T0 + 240)
        assert (b.state, b.first_offered_at) == ("waiting", None)
        s.set_rollout_node(1, "b", "offered", None, 1, T0 + 300, None, T0 + 300, T0 + 300)
        s.set_rollout_node(1, "b", "offered", None, 2, T0 + 360, None, T0 + 360)  # the first offer is kept
        assert s.rollout_nodes(1)[1].first_offered_at == T0 + 300
