#!/usr/bin/env python3
"""Interop: Tern against the Python `websockets` library (PyPI), a client
no one here wrote. Starts a real `tern serve` (binary from $TERN_BIN) on free
loopback ports with a temp data dir, creates users and tokens through the
HTTP API, and checks both subprotocols, fragmentation, ping/pong, close
codes and error paths against PROTOCOL.md.

Run: TERN_BIN=path/to/tern python3 interop_test.py   (tests/interop/run.sh does)
Prints one line per test and a closing "N passed, N failed" line; exits 1
when any test failed.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

API_KEY = "interop-key-py"
JSON = "tern.v1.json"
RKYV = "tern.v1.rkyv"
# Bound on every wait for a server answer: a test fails, it never hangs.
REPLY_S = 5.0
# The server's default max_frame_bytes (PROTOCOL.md: 64 KiB).
FRAME_MAX = 64 * 1024
# Bound for `tern serve` to answer /healthz after spawn.
STARTUP_S = 20.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One `tern serve` process with its own data dir and ports."""

    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="tern-interop-py-")
        self.ws_port = free_port()
        self.http_port = free_port()
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, "serve",
             "--data-dir", os.path.join(self.dir, "data"),
             "--ws-addr", f"127.0.0.1:{self.ws_port}",
             "--http-addr", f"127.0.0.1:{self.http_port}",
             "--api-key", API_KEY, "--shards", "2", "--no-pin",
             "--durability", "os"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tern serve exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.http("/healthz"), timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tern serve not healthy:\n{self.logs()}")

    def http(self, path):
        return f"http://127.0.0.1:{self.http_port}{path}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.http(path), data=data, method=method)
        req.add_header("Authorization", f"Bearer {API_KEY}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=REPLY_S) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, (json.loads(raw) if raw else None)

    def user_token(self, user, device=None):
        st, v = self.request("PUT", f"/v1/users/{user}", {})
        assert st == 200, (st, v)
        st, v = self.request("POST", f"/v1/users/{user}/tokens",
                             {"device": device} if device else {})
        assert st == 200, (st, v)
        return v["token"]

    def logs(self):
        self.log.flush()
        with open(os.path.join(self.dir, "server.log"), "rb") as f:
            return f.read()[-8000:].decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ws_connect(server, subprotocols=(JSON,)):
    """A websockets client with no compression (frames on the wire are
    exactly what the test sends), no proxy, and its own keepalive off."""
    return connect(server.ws_url,
                   subprotocols=list(subprotocols) if subprotocols is not None else None,
                   compression=None, proxy=None, ping_interval=None,
                   open_timeout=REPLY_S, close_timeout=REPLY_S,
                   max_size=16 * 1024 * 1024)


async def recv_json(ws):
    msg = await asyncio.wait_for(ws.recv(), REPLY_S)
    assert isinstance(msg, str), f"expected a text frame, got {msg!r}"
    return json.loads(msg)


async def expect_type(ws, ty):
    """The next frame of type `ty`, skipping others (e.g. receipts)."""
    deadline = time.monotonic() + REPLY_S
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {ty} frame in time"
        msg = await asyncio.wait_for(ws.recv(), left)
        v = json.loads(msg)
        if v.get("type") == ty:
            return v


async def expect_close(ws):
    """Read until the server closes; return the code it sent."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), REPLY_S)
    except ConnectionClosed as e:
        assert e.rcvd is not None, f"closed without a close frame: {e!r}"
        return e.rcvd.code


async def login(server, ws, token, device):
    await ws.send(json.dumps({"type": "auth", "token": token, "device": device}))
    ok = await recv_json(ws)
    assert ok["type"] == "auth_ok", ok
    return ok


# --------------------------------------------------------------------------
# Tests. Each takes the server and uses its own user ids.
# --------------------------------------------------------------------------

async def test_json_dm_send_ack_msg(s):
    ta, tb = s.user_token("py_a1"), s.user_token("py_b1")
    async with ws_connect(s) as a, ws_connect(s) as b:
        assert a.subprotocol == JSON and b.subprotocol == JSON
        ok = await login(s, a, ta, "phone")
        assert ok["user"] == "py_a1" and ok["device"] == "phone"
        assert ok["heartbeat_ms"] > 0 and ok["ack_timeout_ms"] > 0
        await login(s, b, tb, "laptop")
        send = {"type": "send", "cmid": "m1", "to": "user:py_b1",
                "kind": "text", "body": "héllo from python"}
        await a.send(json.dumps(send))
        ack = await expect_type(a, "send_ack")
        assert ack["conv"] == "dm:py_a1:py_b1" and ack["seq"] == 1, ack
        msg = await expect_type(b, "msg")
        assert msg["from"] == "py_a1" and msg["device"] == "phone", msg
        assert msg["body"] == "héllo from python" and msg["seq"] == 1
        await b.send(json.dumps({"type": "ack", "conv": msg["conv"], "seq": 1}))
        # Exactly-once effect: the same cmid again gets the original ack.
        await a.send(json.dumps(send))
        again = await expect_type(a, "send_ack")
        assert (again["seq"], again["ts"]) == (ack["seq"], ack["ts"]), again
        # The ack was taken: no redelivery to b, and sync returns the one msg.
        await b.send(json.dumps({"type": "sync", "conv": msg["conv"], "after": 0}))
        res = await expect_type(b, "sync_result")
        assert [m["seq"] for m in res["messages"]] == [1], res


async def test_fragmented_client_message(s):
    ta, tb = s.user_token("py_a2"), s.user_token("py_b2")
    async with ws_connect(s) as a, ws_connect(s) as b:
        await login(s, a, ta, "d")
        await login(s, b, tb, "d")
        frame = json.dumps({"type": "send", "cmid": "frag", "to": "user:py_b2",
                            "kind": "text", "body": "x" * 3000})
        # websockets sends an iterable as one message in several frames:
        # a text frame with FIN=0, then continuation frames.
        third = len(frame) // 3
        await a.send([frame[:third], frame[third:2 * third], frame[2 * third:]])
        ack = await expect_type(a, "send_ack")
        assert ack["cmid"] == "frag", ack
        msg = await expect_type(b, "msg")
        assert msg["body"] == "x" * 3000
        # A fragmented auth-free frame kind works too (ping).
        await a.send(['{"type":', '"ping"}'])
        assert (await expect_type(a, "pong"))["ts"] > 0


async def test_ws_ping_pong_and_app_ping(s):
    t = s.user_token("py_p")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        waiter = await ws.ping(b"interop")
        latency = await asyncio.wait_for(waiter, REPLY_S)
        assert latency >= 0
        await ws.send(json.dumps({"type": "ping"}))
        pong = await expect_type(ws, "pong")
        assert isinstance(pong["ts"], int)


async def test_client_close_1000_echoed(s):
    t = s.user_token("py_c")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        await ws.close(1000, "bye")
        assert ws.protocol.close_rcvd is not None, "server sent no close frame"
        assert ws.protocol.close_rcvd.code == 1000, ws.protocol.close_rcvd


async def test_oversized_message_1009(s):
    t = s.user_token("py_o")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        await ws.send("x" * (FRAME_MAX + 1024))
        assert await expect_close(ws) == 1009


async def test_oversized_fragmented_message_1009(s):
    t = s.user_token("py_of")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        # Each fragment is small; the message as a whole is over the limit.
        await ws.send(["y" * 16384] * 5)
        assert await expect_close(ws) == 1009


async def test_invalid_utf8_text_1007(s):
    t = s.user_token("py_u")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        await ws.send(b'{"type":"ping","x":"\xff\xfe"}', text=True)
        assert await expect_close(ws) == 1007


async def test_bad_frames_get_bad_request_and_stay_open(s):
    t = s.user_token("py_bad")
    async with ws_connect(s) as ws:
        await login(s, ws, t, "d")
        for bad in ["not json", '{"type":"no_such_type"}', '{"type":"send"}', "[1,2]"]:
            await ws.send(bad)
            e = await expect_type(ws, "error")
            assert e["code"] == "bad_request", (bad, e)
        await ws.send(json.dumps({"type": "send", "cmid": "z", "to": "user:nobody_here",
                                  "kind": "text", "body": "?"}))
        err = await expect_type(ws, "send_err")
        assert err["code"] == "no_such_user" and err["cmid"] == "z", err
        await ws.send(json.dumps({"type": "ping"}))
        await expect_type(ws, "pong")


async def test_auth_errors_4401(s):
    t = s.user_token("py_auth", device="phone")
    # A forged token.
    async with ws_connect(s) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "forged.token", "device": "phone"}))
        e = await recv_json(ws)
        assert e["type"] == "error" and e["code"] == "unauthorized", e
        assert await expect_close(ws) == 4401
    # A token minted for another device.
    async with ws_connect(s) as ws:
        await ws.send(json.dumps({"type": "auth", "token": t, "device": "laptop"}))
        e = await recv_json(ws)
        assert e["code"] == "unauthorized", e
        assert await expect_close(ws) == 4401
    # A well-formed frame other than auth before auth_ok.
    async with ws_connect(s) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        e = await recv_json(ws)
        assert e["code"] == "unauthorized", e
        assert await expect_close(ws) == 4401
    # A malformed frame before auth: bad_request, and auth still works.
    async with ws_connect(s) as ws:
        await ws.send("{")
        e = await recv_json(ws)
        assert e["code"] == "bad_request", e
        await login(s, ws, t, "phone")


async def test_kicked_4409_on_replace(s):
    t = s.user_token("py_k")
    async with ws_connect(s) as old, ws_connect(s) as new:
        await login(s, old, t, "same")
        await login(s, new, t, "same")
        k = await expect_type(old, "kicked")
        assert k["reason"] == "replaced", k
        assert await expect_close(old) == 4409


async def test_no_subprotocol_defaults_to_json(s):
    t = s.user_token("py_ns")
    async with ws_connect(s, subprotocols=None) as ws:
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        await login(s, ws, t, "d")


async def test_unknown_subprotocol_answered_with_none(s):
    t = s.user_token("py_us")
    try:
        async with ws_connect(s, subprotocols=["chat.v9"]) as ws:
            # The server selected none and speaks JSON.
            assert ws.subprotocol is None
            await login(s, ws, t, "d")
    except Exception as e:  # websockets may refuse a missing answer itself
        raise AssertionError(f"handshake with an unknown offer failed: {e!r}")


async def test_first_known_offer_wins(s):
    async with ws_connect(s, subprotocols=["chat.v9", RKYV, JSON]) as ws:
        assert ws.subprotocol == RKYV


async def test_wrong_path_is_rejected(s):
    try:
        async with connect(f"ws://127.0.0.1:{s.ws_port}/nope", proxy=None,
                           open_timeout=REPLY_S):
            raise AssertionError("upgrade on /nope succeeded")
    except InvalidStatus as e:
        assert e.response.status_code == 404, e


async def test_rkyv_error_paths_binary_frames(s):
    async with ws_connect(s, subprotocols=[RKYV]) as ws:
        assert ws.subprotocol == RKYV
        # Garbage is not a valid archive: an error frame, as a binary frame
        # (the subprotocol's encoding), and the connection stays open.
        for junk in [b"\x00\x01\x02", b"\xff" * 64]:
            await ws.send(junk)
            reply = await asyncio.wait_for(ws.recv(), REPLY_S)
            assert isinstance(reply, bytes) and len(reply) > 0, reply
        # WebSocket ping/pong is subprotocol-independent.
        waiter = await ws.ping(b"rk")
        await asyncio.wait_for(waiter, REPLY_S)
        await ws.close(1000)
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000


async def test_rkyv_oversized_1009_and_bad_utf8_1007(s):
    async with ws_connect(s, subprotocols=[RKYV]) as ws:
        await ws.send(b"\x00" * (FRAME_MAX + 1))
        assert await expect_close(ws) == 1009
    async with ws_connect(s, subprotocols=[RKYV]) as ws:
        # A text frame is still UTF-8-checked (RFC 6455), whatever the
        # subprotocol.
        await ws.send(b"\xc3\x28", text=True)
        assert await expect_close(ws) == 1007


async def test_rkyv_auth_timeout_4401(s):
    async with ws_connect(s, subprotocols=[RKYV]) as ws:
        # No auth within 5 s: an error frame (binary) and 4401.
        start = time.monotonic()
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(m, bytes), m
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 4401, e
        took = time.monotonic() - start
        assert 4.0 <= took <= 9.0, took


TESTS = [v for k, v in list(globals().items()) if k.startswith("test_")]


async def main():
    binary = os.environ.get("TERN_BIN")
    if not binary:
        print("TERN_BIN is not set", file=sys.stderr)
        return 2
    server = Server(binary)
    passed = failed = 0
    try:
        for t in TESTS:
            try:
                await asyncio.wait_for(t(server), 30)
                passed += 1
                print(f"ok   {t.__name__}")
            except Exception:  # report and go on with the next test
                failed += 1
                print(f"FAIL {t.__name__}\n{traceback.format_exc()}")
        if failed:
            print(server.logs())
    finally:
        server.stop()
    print(f"python-websockets: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
