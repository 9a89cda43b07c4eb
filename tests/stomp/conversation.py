#!/usr/bin/env python3
"""A scripted stomp.py conversation with a running tandem broker (issue 7, item 4).

    .venv/bin/python tests/stomp/conversation.py HOST PORT

The broker must offer STOMP heart-beats of at most 1000 ms (`heartbeat_ms = 1000`); the Rust
system test tests/t40_stomp_py.rs starts it that way. Each step prints "ok: ..." or
"FAIL: ..."; the script exits 1 on the first failure, 0 when every step passed.
"""

import sys
import threading
import time
import uuid

import stomp

TIMEOUT = 15.0


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


class Recorder(stomp.ConnectionListener):
    """Records everything the broker sends; tests wait on it with a condition."""

    def __init__(self):
        self.cond = threading.Condition()
        self.messages = []
        self.receipts = set()
        self.errors = []
        self.heartbeats = 0
        self.disconnected = False

    def _record(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_message(self, frame):
        self._record(lambda: self.messages.append(frame))

    def on_receipt(self, frame):
        self._record(lambda: self.receipts.add(frame.headers.get("receipt-id")))

    def on_error(self, frame):
        self._record(lambda: self.errors.append(frame))

    def on_heartbeat(self):
        def bump():
            self.heartbeats += 1
        self._record(bump)

    def on_disconnected(self):
        def gone():
            self.disconnected = True
        self._record(gone)

    def wait(self, predicate, what, timeout=TIMEOUT):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise Failed("timed out waiting for " + what)

    def receipt(self, rid):
        self.wait(lambda: rid in self.receipts or self.errors, "RECEIPT " + rid)
        check(not self.errors, "ERROR instead of RECEIPT %s: %s" % (rid, self.errors))

    def take(self, n, what):
        self.wait(lambda: len(self.messages) >= n or self.errors, "%d x %s" % (n, what))
        check(not self.errors, "ERROR while waiting for %s: %s" % (what, self.errors))
        with self.cond:
            got, self.messages = self.messages[:n], self.messages[n:]
        return got

    def quiet(self, seconds):
        time.sleep(seconds)
        with self.cond:
            return not self.messages and not self.errors


def connect(host, port, heartbeats=(0, 0)):
    conn = stomp.Connection12([(host, port)], heartbeats=heartbeats)
    rec = Recorder()
    conn.set_listener("recorder", rec)
    conn.connect("guest", "guest", wait=True)
    return conn, rec


def fresh(kind):
    return "/%s/py.%s" % (kind, uuid.uuid4().hex[:10])


def send_receive(host, port):
    conn, rec = connect(host, port)
    q = fresh("queue")
    conn.send(q, "hello from python", content_type="text/plain",
              headers={"receipt": "send-1", "persistent": "true", "priority": "6",
                       "custom-header": "kept", "correlation-id": "c-1"})
    rec.receipt("send-1")
    conn.subscribe(q, id="s1", ack="auto", headers={"receipt": "sub-1"})
    rec.receipt("sub-1")
    (m,) = rec.take(1, "the message sent before subscribing")
    h = m.headers
    check(m.body == "hello from python", "body: %r" % m.body)
    check(h.get("subscription") == "s1", "subscription header: %s" % h)
    check(h.get("destination") == q, "destination header: %s" % h)
    check(h.get("persistent") == "true", "persistent header: %s" % h)
    check(h.get("priority") == "6", "priority header: %s" % h)
    check(h.get("custom-header") == "kept", "custom header: %s" % h)
    check(h.get("correlation-id") == "c-1", "correlation-id: %s" % h)
    check(h.get("redelivered") == "false", "redelivered: %s" % h)
    check(h.get("content-type", "").startswith("text/plain"), "content-type: %s" % h)
    conn.send(q, "second", content_type="text/plain")
    (m,) = rec.take(1, "a message sent while subscribed")
    check(m.body == "second", "body: %r" % m.body)
    conn.unsubscribe("s1", headers={"receipt": "unsub-1"})
    rec.receipt("unsub-1")
    conn.disconnect(receipt="bye-1")
    rec.wait(lambda: "bye-1" in rec.receipts, "the DISCONNECT receipt")
    print("ok: send/receive, headers both ways, receipts on SEND/SUBSCRIBE/UNSUBSCRIBE/DISCONNECT")


def individual_ack_and_nack(host, port):
    conn, rec = connect(host, port)
    q = fresh("queue")
    for body in ["a", "b", "c"]:
        conn.send(q, body, content_type="text/plain", headers={"receipt": "s-" + body})
        rec.receipt("s-" + body)
    conn.subscribe(q, id="ci", ack="client-individual",
                   headers={"activemq.prefetchSize": "10", "receipt": "sub"})
    rec.receipt("sub")
    got = {m.body: m for m in rec.take(3, "three messages")}
    check(sorted(got) == ["a", "b", "c"], "bodies: %s" % sorted(got))
    conn.ack(got["b"].headers["ack"], receipt="ack-b")
    rec.receipt("ack-b")
    conn.nack(got["a"].headers["ack"], receipt="nack-a")
    rec.receipt("nack-a")
    (again,) = rec.take(1, "the NACKed message again")
    check(again.body == "a", "redelivered body: %r" % again.body)
    check(again.headers.get("redelivered") == "true", "redelivered: %s" % again.headers)
    check(again.headers.get("JMSXDeliveryCount") == "2", "delivery count: %s" % again.headers)
    check(again.headers["message-id"] == got["a"].headers["message-id"], "same message-id")
    conn.ack(again.headers["ack"], receipt="ack-a")
    rec.receipt("ack-a")
    conn.ack(got["c"].headers["ack"], receipt="ack-c")
    rec.receipt("ack-c")
    conn.unsubscribe("ci", headers={"receipt": "unsub"})
    rec.receipt("unsub")
    # Everything was acknowledged: a new subscription sees nothing.
    conn.subscribe(q, id="ci2", ack="client-individual", headers={"receipt": "sub2"})
    rec.receipt("sub2")
    check(rec.quiet(0.5), "acknowledged messages came back: %s" % rec.messages)
    conn.disconnect()
    print("ok: client-individual ACK, NACK redelivery with redelivered:true")


def selectors(host, port):
    conn, rec = connect(host, port)
    q = fresh("queue")
    for i, color in enumerate(["red", "blue", "red", "green"]):
        conn.send(q, "%s-%d" % (color, i), content_type="text/plain",
                  headers={"color": color, "receipt": "c%d" % i})
        rec.receipt("c%d" % i)
    conn.subscribe(q, id="red", ack="auto",
                   headers={"selector": "color = 'red'", "receipt": "sub"})
    rec.receipt("sub")
    bodies = sorted(m.body for m in rec.take(2, "the red messages"))
    check(bodies == ["red-0", "red-2"], "selected: %s" % bodies)
    check(rec.quiet(0.5), "a message the selector rejects arrived: %s" % rec.messages)
    conn.disconnect()
    print("ok: selector")


def topic_fan_out(host, port):
    a, ra = connect(host, port)
    b, rb = connect(host, port)
    t = fresh("topic")
    a.subscribe(t, id="a", headers={"receipt": "ra"})
    ra.receipt("ra")
    b.subscribe(t, id="b", headers={"receipt": "rb"})
    rb.receipt("rb")
    a.send(t, "to everyone", content_type="text/plain", headers={"receipt": "pub"})
    ra.receipt("pub")
    check(ra.take(1, "topic message (a)")[0].body == "to everyone", "subscriber a")
    check(rb.take(1, "topic message (b)")[0].body == "to everyone", "subscriber b")
    a.disconnect()
    b.disconnect()
    print("ok: topic fan-out")


def heart_beats(host, port):
    conn, rec = connect(host, port, heartbeats=(500, 500))
    time.sleep(3.5)
    with rec.cond:
        beats, gone = rec.heartbeats, rec.disconnected
    check(not gone, "the broker dropped a heart-beating client")
    check(beats >= 2, "only %d heart-beats from the broker in 3.5 s" % beats)
    q = fresh("queue")
    conn.subscribe(q, id="hb", headers={"receipt": "sub"})
    rec.receipt("sub")
    conn.send(q, "after the pause", content_type="text/plain")
    check(rec.take(1, "a message after idling")[0].body == "after the pause", "body")
    conn.disconnect()
    print("ok: heart-beats both ways (%d received while idle)" % beats)


def transactions(host, port):
    conn, rec = connect(host, port)
    q = fresh("queue")
    # SENDs inside a transaction are invisible until COMMIT ...
    conn.subscribe(q, id="tx", ack="client-individual", headers={"receipt": "sub"})
    rec.receipt("sub")
    conn.begin(transaction="tx-1")
    conn.send(q, "one", content_type="text/plain", transaction="tx-1")
    conn.send(q, "two", content_type="text/plain", transaction="tx-1",
              headers={"receipt": "s2"})
    rec.receipt("s2")
    check(rec.quiet(0.5), "a message of an open transaction arrived: %s" % rec.messages)
    conn.commit(transaction="tx-1", headers={"receipt": "c1"})
    rec.receipt("c1")
    got = rec.take(2, "the committed messages")
    check([m.body for m in got] == ["one", "two"], "committed, in order: %s" % got)
    # ... ABORT drops a transaction's SENDs and gives back what it ACKed (redelivered).
    conn.begin(transaction="tx-2")
    conn.send(q, "dropped", content_type="text/plain", transaction="tx-2")
    conn.ack(got[0].headers["ack"], transaction="tx-2")
    conn.abort(transaction="tx-2", headers={"receipt": "a2"})
    rec.receipt("a2")
    (again,) = rec.take(1, "the message ACKed in the aborted transaction")
    check(again.body == "one", "redelivered body: %r" % again.body)
    check(again.headers.get("redelivered") == "true", "redelivered: %s" % again.headers)
    check(rec.quiet(0.5), "a SEND of the aborted transaction arrived: %s" % rec.messages)
    # An ACK inside a committed transaction acknowledges for good.
    conn.begin(transaction="tx-3")
    conn.ack(again.headers["ack"], transaction="tx-3")
    conn.ack(got[1].headers["ack"], transaction="tx-3")
    conn.commit(transaction="tx-3", headers={"receipt": "c3"})
    rec.receipt("c3")
    conn.unsubscribe("tx", headers={"receipt": "unsub"})
    rec.receipt("unsub")
    conn.subscribe(q, id="tx2", ack="auto", headers={"receipt": "sub2"})
    rec.receipt("sub2")
    check(rec.quiet(0.5), "messages acknowledged by a commit came back: %s" % rec.messages)
    conn.disconnect()
    print("ok: transactions (BEGIN/SEND/ACK/COMMIT/ABORT)")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    steps = [send_receive, individual_ack_and_nack, selectors, topic_fan_out, heart_beats,
             transactions]
    for step in steps:
        try:
            step(host, port)
        except Failed as e:
            print("FAIL: %s: %s" % (step.__name__, e))
            return 1
        except Exception as e:  # a client exception is a failure too, with its type
            print("FAIL: %s: %s: %s" % (step.__name__, type(e).__name__, e))
            return 1
    print("all %d steps passed" % len(steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
