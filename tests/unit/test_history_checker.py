"""The cluster history checker (tests/support/history.py) on made-up histories: a clean run is
valid, and each anomaly the cluster test relies on it to find (a lost acknowledgement, a
duplicate, a gap, a failed append that was applied, a stale-fence write, a follower that saw a
duplicate or skipped an event, a slow takeover) is found and counted, so a checker that passes
the real run is one that could have failed it."""

from __future__ import annotations

import json

import pytest

from tests.support.history import (
    Fault,
    FollowerLog,
    History,
    LogEvent,
    Op,
    Outcome,
    Report,
    calm_latency,
    check,
    classify,
)

MARK = "h:"


def created() -> LogEvent:
    return LogEvent(1, "session_created")


def message(seq: int, text: str) -> LogEvent:
    return LogEvent(seq, "conversation_added", text)


def run() -> tuple[History, dict[str, list[LogEvent]]]:
    """Two sessions, three acknowledged appends, one failed, one indeterminate that was
    applied and one that was not: a history the checker must find valid."""
    history = History()
    for text, sid, seq in (("h:a1", "a", 2), ("h:a2", "a", 3), ("h:b1", "b", 2)):
        history.complete(history.invoke("w1", sid, text, "n1"), "ok", seq=seq)
    history.complete(history.invoke("w2", "a", "h:a-refused", "n2"), "fail", detail="404")
    history.complete(history.invoke("w2", "b", "h:b-maybe", "n3"), "info", detail="timeout")
    history.complete(history.invoke("w2", "b", "h:b-lost-reply", "n3"), "info", detail="503")
    logs = {
        "a": [created(), message(2, "h:a1"), message(3, "h:a2")],
        "b": [created(), message(2, "h:b1"), message(3, "h:b-lost-reply")],
    }
    return history, logs


def test_a_clean_history_is_valid() -> None:
    history, logs = run()
    follower = FollowerLog("a", seen=list(logs["a"][:2]), connections=["n2", "n3"])
    fault = Fault("kill", "n1", started=1.0, writable={"a": 2.5, "b": 3.0})
    report = check(
        history.ops, logs, followers=[follower], faults=[fault], takeover_bound=4.0, marker=MARK
    )
    assert report.valid, report.summary()
    assert (report.operations, report.ok, report.failed, report.indeterminate) == (6, 3, 1, 2)
    assert report.indeterminate_applied == 1
    assert report.worst_takeover == pytest.approx(2.0)
    assert json.loads(report.to_json())["valid"] is True


def test_a_lost_acknowledgement_is_found() -> None:
    history, logs = run()
    logs["a"] = logs["a"][:2]  # h:a2 was acknowledged at seq 3, and is gone
    report = check(history.ops, logs, marker=MARK)
    assert (report.lost, report.valid) == (1, False)
    assert "h:a2" in report.examples["lost"][0]


def test_a_duplicate_is_found() -> None:
    history, logs = run()
    logs["a"].append(message(4, "h:a1"))  # the same append applied twice (a retried forward)
    report = check(history.ops, logs, marker=MARK)
    assert report.duplicated == 1
    assert not report.valid


def test_a_gap_in_the_seqs_is_found() -> None:
    history, logs = run()
    logs["b"] = [created(), message(2, "h:b1"), message(4, "h:b-lost-reply")]
    report = check(history.ops, logs, marker=MARK)
    assert report.gaps == 1
    assert "missing [3]" in report.examples["gap"][0]


def test_a_failed_append_that_was_applied_is_found() -> None:
    history, logs = run()
    logs["a"].append(message(4, "h:a-refused"))
    report = check(history.ops, logs, marker=MARK)
    assert report.failed_but_applied == 1


def test_stale_fence_writes_are_found() -> None:
    """Three ways a write under a lost fence shows: an acknowledged seq holding someone
    else's message, two acknowledgements of one seq, a message nobody sent."""
    history, logs = run()
    zombie = history.invoke("w3", "a", "h:zombie", "n1")
    history.complete(zombie, "ok", seq=3)  # acknowledged at seq 3, where h:a2 is
    logs["a"].append(message(4, "h:zombie"))
    logs["a"].append(message(5, "h:nobody-sent-this"))
    report = check(history.ops, logs, marker=MARK)
    assert report.stale_fence_writes == 3, report.summary()
    assert set(report.examples) == {"ack-seq-mismatch", "seq-acked-twice", "unrequested"}


def test_a_follower_that_saw_a_duplicate_is_found() -> None:
    history, logs = run()
    seen = [logs["a"][0], logs["a"][1], logs["a"][1], logs["a"][2]]  # replayed after reconnect
    report = check(history.ops, logs, followers=[FollowerLog("a", seen=seen)], marker=MARK)
    assert report.follower_anomalies == 1
    assert "follower-duplicate" in report.examples


def test_a_follower_that_skipped_an_event_is_found() -> None:
    history, logs = run()
    seen = [logs["b"][0], logs["b"][2]]  # seq 2 never delivered
    report = check(history.ops, logs, followers=[FollowerLog("b", seen=seen)], marker=MARK)
    assert "follower-gap" in report.examples


def test_a_follower_that_saw_something_else_is_found() -> None:
    history, logs = run()
    seen = [logs["b"][0], message(2, "h:other")]
    report = check(history.ops, logs, followers=[FollowerLog("b", seen=seen)], marker=MARK)
    assert "follower-mismatch" in report.examples


def test_a_follower_starting_later_sees_the_rest() -> None:
    history, logs = run()
    follower = FollowerLog("a", after_seq=1, seen=logs["a"][1:])
    assert check(history.ops, logs, followers=[follower], marker=MARK).valid


def test_slow_and_missing_takeovers_are_found() -> None:
    history, logs = run()
    faults = [
        Fault("stop", "n2", started=10.0, writable={"a": 16.5}),
        Fault("kill", "n3", started=20.0, writable={"a": 21.0, "b": None}),
        Fault("cut-redis", "n1", started=30.0),  # nothing probed: no takeover to judge
    ]
    report = check(history.ops, logs, faults=faults, takeover_bound=4.0, marker=MARK)
    assert report.slow_takeovers == 2
    assert report.worst_takeover == float("inf")
    assert report.takeover_by_kind == {"stop": 6.5, "kill": float("inf"), "cut-redis": None}
    document = json.loads(report.to_json())
    assert document["worst_takeover"] == "never"
    assert [f["takeover"] for f in document["fault_log"]] == [6.5, "never", None]
    assert "1 never writable: ['b']" in report.summary()


def test_the_calm_latency_leaves_out_faults_probes_and_refusals() -> None:
    """What a write costs with no failover in it: acknowledged appends, probes aside, but not
    those to a session a fault's probes were after, sent in that fault's window (its start to
    its heal plus the settling time)."""

    def op(worker: str, invoked: float, took: float, outcome: Outcome = "ok") -> Op:
        return Op(0, worker, "a", "h:x", "n1", invoked, outcome, invoked + took)

    ops = [
        op("w1", 1.0, 0.1),
        op("w1", 2.0, 0.3),
        op("w2", 3.0, 0.2),
        op("w1", 11.0, 5.0),  # during the fault, to a session it took: waited for the takeover
        op("w1", 16.0, 4.0),  # healed at 14, settling until 16
        op("probe", 30.0, 9.0),
        op("w2", 31.0, 7.0, "info"),
        op("w2", 32.0, 0.4),
    ]
    faults = [Fault("stop", "n2", started=10.0, healed=14.0, writable={"a": 11.0})]
    assert calm_latency(ops, faults, settle=2.0) == pytest.approx(0.4)
    elsewhere = [Fault("stop", "n2", started=10.0, healed=14.0, writable={"b": 11.0})]
    assert calm_latency(ops, elsewhere, settle=2.0) == pytest.approx(5.0)  # "a" was not hit
    through = [Fault("stop", "n1", started=10.0, healed=14.0, writable={"b": 11.0})]
    assert calm_latency(ops, through, settle=2.0) == pytest.approx(0.4)  # sent through n1
    assert calm_latency(ops, faults, settle=2.0, quantile=0.5) == pytest.approx(0.3)
    assert calm_latency([], faults, settle=2.0) == 0.0


def test_an_operation_cannot_complete_twice() -> None:
    history = History()
    op = history.complete(history.invoke("w", "s", "t", "n1"), "ok", seq=2)
    with pytest.raises(RuntimeError, match="twice"):
        history.complete(op, "fail")


@pytest.mark.parametrize(
    ("status", "problem", "outcome"),
    [
        (201, None, "ok"),
        (None, None, "info"),
        (404, "https://jidoka.dev/problems/session-not-found", "fail"),
        (409, "https://jidoka.dev/problems/session-busy", "fail"),
        (421, "https://jidoka.dev/problems/not-owner", "info"),
        (408, None, "info"),
        (429, "https://jidoka.dev/problems/limit-exceeded", "info"),
        (503, "https://jidoka.dev/problems/store-unavailable", "info"),
        (503, "https://jidoka.dev/problems/commit-outcome-unknown", "info"),
        (409, "https://jidoka.dev/problems/commit-outcome-unknown", "info"),
        (500, None, "info"),
        (502, None, "info"),
    ],
)
def test_only_a_definite_refusal_is_a_failure(
    status: int | None, problem: str | None, outcome: str
) -> None:
    assert classify(status, problem) == outcome


def test_an_unfinished_operation_is_indeterminate() -> None:
    ops = [Op(0, "w", "a", "h:x", "n1", invoked=0.0)]
    report = check(ops, {"a": [created()]}, marker=MARK)
    assert (report.indeterminate, report.valid) == (1, True)
    assert isinstance(report, Report)


def test_a_fault_that_went_wrong_is_an_anomaly() -> None:
    history, logs = run()
    fault = Fault("term", "n1", started=1.0, writable={"a": 2.0}, problem="still running")
    report = check(history.ops, logs, faults=[fault], takeover_bound=4.0, marker=MARK)
    assert (report.fault_problems, report.valid) == (1, False)
    assert "term n1: still running" in report.summary()
