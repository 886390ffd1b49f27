"""chat-service with the Python Socket.IO client (python-socketio, pinned in requirements.txt).

Two `socketio.Client`s talk to one room, one on the websocket transport and one on long polling:
authenticate, join, send with an ack callback, typing, a refused payload, disconnect.

Standard library unittest only. Nothing sleeps to wait for something: every wait is a
queue.Queue / threading.Event wait bounded by a timeout. Note that python-socketio runs each
incoming event handler in its own thread, so the tests never rely on the order in which the
client's handlers see events (the server's order is covered by the Node suite).

Run from the repository root:
    .venv/bin/python -m unittest discover -s e2e/python -v
The binary is $CHAT_BIN (default: ../../target/debug/chat-service relative to this file).
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

import socketio

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_BIN = os.path.abspath(
    os.environ.get('CHAT_BIN') or os.path.join(HERE, '..', '..', 'target', 'debug', 'chat-service'))

TIMEOUT = 5.0  # one event / ack
START_TIMEOUT = 30.0  # the server printing "listening on"
STOP_TIMEOUT = 15.0  # the server exiting after SIGTERM

MESSAGE_KEYS = {'messageId', 'roomId', 'userId', 'username', 'message', 'messageType', 'timestamp'}

# Configuration that must not leak from the caller's environment into the server under test.
SCRUBBED_ENV = [
    'PORT', 'HOST', 'DATA_DIR', 'NODE_ENV', 'STORAGE', 'MONGODB_URI', 'DATABASE_URL',
    'REDIS_HOST', 'REDIS_PORT', 'REDIS_PASSWORD', 'REDIS_URL', 'RABBITMQ_URL',
    'RABBITMQ_QUEUE_NEW_MESSAGE', 'CORS_ORIGIN', 'MAX_CONNECTIONS_PER_USER', 'MAX_MESSAGE_HISTORY',
    'MESSAGE_HISTORY_TTL', 'MAX_MESSAGE_LENGTH', 'MAX_PAYLOAD_BYTES', 'RATE_LIMIT_PER_SEC',
    'RATE_LIMIT_BURST', 'HISTORY_ON_JOIN', 'AUTH_MODE', 'JWT_SECRET', 'JWT_PUBLIC_KEY',
    'JWT_ISSUER', 'JWT_AUDIENCE', 'AUTH_GRPC_URL', 'RUST_LOG', 'SHUTDOWN_TIMEOUT_SECS',
]


def uid(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:12]}'


class Server:
    """The chat-service binary on a free port (PORT=0) with a fresh DATA_DIR."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix='chat-py-e2e-')
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env.update(PORT='0', HOST='127.0.0.1', DATA_DIR=self.data_dir, RUST_LOG='warn')
        self.stderr_path = os.path.join(self.data_dir, 'server.stderr')
        self.stderr = open(self.stderr_path, 'wb')
        # cwd = the data dir, so that no stray .env file is picked up.
        self.proc = subprocess.Popen([CHAT_BIN], env=env, cwd=self.data_dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.stderr)
        lines = queue.Queue()

        def pump():  # keeps draining stdout so the server never blocks on it
            for raw in self.proc.stdout:
                lines.put(raw.decode('utf-8', 'replace').rstrip('\r\n'))
            lines.put(None)

        self.pump = threading.Thread(target=pump, daemon=True)
        self.pump.start()
        prefix = 'listening on http://127.0.0.1:'
        deadline = time.monotonic() + START_TIMEOUT
        seen = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f'server did not print "{prefix}..." within {START_TIMEOUT}s: {seen}')
            if line is None:
                self.stop()
                raise RuntimeError(f'server exited before it was ready; stdout {seen}; stderr:\n{self.stderr_tail()}')
            seen.append(line)
            if line.startswith(prefix):
                self.port = int(line[len(prefix):])
                break
        self.url = f'http://127.0.0.1:{self.port}'

    def stderr_tail(self):
        with open(self.stderr_path, 'rb') as f:
            return f.read()[-4000:].decode('utf-8', 'replace')

    def get_json(self, path):
        with urllib.request.urlopen(self.url + path, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())

    def stop(self):
        """SIGTERM, then wait (SIGKILL if it does not exit in time). Returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise
            return self.proc.returncode
        finally:
            self.pump.join(timeout=TIMEOUT)  # EOF once the server is gone
            self.proc.stdout.close()
            self.stderr.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Peer:
    """A socketio.Client that records every event it receives in a queue."""

    def __init__(self, url, transports, label):
        self.label = label
        self.sio = socketio.Client(reconnection=False)
        self.inbox = queue.Queue()  # (event, data) in the order the handler threads ran
        self.pending = []  # taken from the inbox but not yet matched by a wait
        self.seen = []  # everything ever received
        self.disconnected = threading.Event()

        def on_any(event, *args):
            item = (event, args[0] if len(args) == 1 else list(args))
            self.seen.append(item)
            self.inbox.put(item)

        self.sio.on('*', on_any)
        self.sio.on('disconnect', lambda *reason: self.disconnected.set())
        self.sio.connect(url, transports=transports, wait_timeout=TIMEOUT)

    def call(self, event, data):
        """emit with an ack callback; returns the ack payload."""
        acks = queue.Queue()
        self.sio.emit(event, data, callback=lambda *args: acks.put(args))
        try:
            args = acks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f'{self.label}: no ack for {event} within {TIMEOUT}s') from None
        if len(args) != 1:
            raise AssertionError(f'{self.label}: ack of {event} has {len(args)} arguments: {args}')
        return args[0]

    def wait_for(self, event, pred=lambda data: True, timeout=TIMEOUT):
        """The next not-yet-consumed `event` whose payload matches `pred`."""
        for i, (ev, data) in enumerate(self.pending):
            if ev == event and pred(data):
                del self.pending[i]
                return data
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev, data = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f'{self.label}: no "{event}" within {timeout}s; received {self.seen}') from None
            if ev == event and pred(data):
                return data
            self.pending.append((ev, data))

    def received(self, event):
        return [data for ev, data in self.seen if ev == event]

    def close(self):
        if self.sio.connected:
            self.sio.disconnect()


class PythonSocketIOClientTest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server()

    @classmethod
    def tearDownClass(cls):
        if cls.server is not None:
            code = cls.server.stop()
            if code != 0:
                raise AssertionError(f'server exit code after SIGTERM: {code}')

    def setUp(self):
        """Peer `ws` (websocket) and peer `poll` (polling), authenticated, in one fresh room."""
        self.room = uid('py-room')
        self.ws = self.peer(['websocket'], uid('py-ws'), 'Websocket User')
        self.poll = self.peer(['polling'], uid('py-poll'), 'Polling User')
        self.assertEqual(self.ws.sio.transport(), 'websocket')
        self.assertEqual(self.poll.sio.transport(), 'polling')

        self.assertEqual(self.ws.call('join_room', {'roomId': self.room}), {'success': True, 'roomId': self.room})
        self.assertEqual(self.ws.wait_for('message_history'), [])
        self.assertEqual(self.ws.wait_for('room_users'), [self.ws.user])

        self.assertEqual(self.poll.call('join_room', {'roomId': self.room}), {'success': True, 'roomId': self.room})
        self.assertEqual(self.poll.wait_for('message_history'), [])
        users = self.poll.wait_for('room_users')
        self.assertCountEqual(users, [self.ws.user, self.poll.user])
        self.assertEqual(self.ws.wait_for('user_joined'), {'roomId': self.room, **self.poll.user})

    def tearDown(self):
        for p in (self.ws, self.poll):
            p.close()

    def peer(self, transports, user_id, username):
        p = Peer(self.server.url, transports, user_id)
        self.addCleanup(p.close)
        p.user = {'userId': user_id, 'username': username}
        self.assertEqual(p.call('authenticate', p.user), {'success': True, **p.user})
        self.assertEqual(p.wait_for('authenticated'), p.user)
        return p

    def assert_message(self, m, **expected):
        self.assertIsInstance(m, dict, m)
        self.assertEqual(set(m), MESSAGE_KEYS, m)
        self.assertIsInstance(m['messageId'], str)
        self.assertTrue(m['messageId'])
        self.assertIs(type(m['timestamp']), int, m)
        for k, v in expected.items():
            self.assertEqual(m[k], v, k)

    def send_with_callback(self, peer, message):
        """send_message with an ack callback; the callback sets a threading.Event."""
        got = threading.Event()
        acks = []

        def on_ack(*args):
            acks.append(args)
            got.set()

        peer.sio.emit('send_message', {'roomId': self.room, 'message': message}, callback=on_ack)
        self.assertTrue(got.wait(TIMEOUT), f'no ack for send_message from {peer.label}')
        self.assertEqual(len(acks[0]), 1, acks)
        return acks[0][0]

    def test_send_message_reaches_both_transports(self):
        for sender in (self.ws, self.poll):
            with self.subTest(sender=sender.label):
                text = f'hello from {sender.user["username"]}'
                ack = self.send_with_callback(sender, text)
                self.assertEqual(set(ack), {'success', 'messageId', 'timestamp'}, ack)
                self.assertIs(ack['success'], True)
                for p in (self.ws, self.poll):
                    m = p.wait_for('new_message', lambda d, text=text: d.get('message') == text)
                    self.assert_message(m, messageId=ack['messageId'], timestamp=ack['timestamp'], roomId=self.room,
                                        message=text, messageType='text', **sender.user)
        status, body = self.server.get_json(f'/api/chat/{self.room}/history?limit=50')
        self.assertEqual(status, 200)
        self.assertEqual([m['message'] for m in body['messages']],
                         ['hello from Websocket User', 'hello from Polling User'])

    def test_typing_reaches_the_other_only(self):
        self.assertEqual(self.ws.call('typing', {'roomId': self.room, 'isTyping': True}), {'success': True})
        self.assertEqual(self.poll.wait_for('user_typing'), {'roomId': self.room, **self.ws.user, 'isTyping': True})
        # barrier: the other one types; the first typer's only user_typing is the other's
        self.assertEqual(self.poll.call('typing', {'roomId': self.room, 'isTyping': True}), {'success': True})
        self.assertEqual(self.ws.wait_for('user_typing'), {'roomId': self.room, **self.poll.user, 'isTyping': True})
        self.assertEqual([t['userId'] for t in self.ws.received('user_typing')], [self.poll.user['userId']])
        self.assertEqual([t['userId'] for t in self.poll.received('user_typing')], [self.ws.user['userId']])

    def test_empty_message_is_refused(self):
        for p, empty in ((self.ws, ''), (self.poll, '  \n ')):
            with self.subTest(peer=p.label, message=empty):
                ack = p.call('send_message', {'roomId': self.room, 'message': empty})
                self.assertEqual(set(ack), {'success', 'error'}, ack)
                self.assertIs(ack['success'], False)
                self.assertEqual(set(ack['error']), {'code', 'message'}, ack)
                self.assertEqual(ack['error']['code'], 'invalid_payload')
                err = p.wait_for('error')
                self.assertEqual(set(err), {'code', 'message'}, err)
                self.assertEqual(err['code'], 'invalid_payload')
                self.assertTrue(err['message'])
        # the connections stay usable, nothing was stored or delivered
        ack = self.send_with_callback(self.poll, 'after the refusal')
        self.assertIs(ack['success'], True, ack)
        m = self.ws.wait_for('new_message')
        self.assertEqual(m['message'], 'after the refusal')
        status, body = self.server.get_json(f'/api/chat/{self.room}/history')
        self.assertEqual(status, 200)
        self.assertEqual([m['message'] for m in body['messages']], ['after the refusal'])

    def test_disconnect_yields_user_left_for_the_other(self):
        # the websocket peer goes away: the polling peer sees it leave
        self.ws.sio.disconnect()
        self.assertTrue(self.ws.disconnected.wait(TIMEOUT), 'websocket peer did not disconnect')
        self.assertEqual(self.poll.wait_for('user_left'), {'roomId': self.room, **self.ws.user})
        # and the other way round, with a fresh websocket peer of the same user
        again = self.peer(['websocket'], self.ws.user['userId'], self.ws.user['username'])
        self.assertEqual(again.call('join_room', {'roomId': self.room}), {'success': True, 'roomId': self.room})
        self.assertEqual(self.poll.wait_for('user_joined'), {'roomId': self.room, **again.user})
        self.poll.sio.disconnect()
        self.assertTrue(self.poll.disconnected.wait(TIMEOUT), 'polling peer did not disconnect')
        self.assertEqual(again.wait_for('user_left'), {'roomId': self.room, **self.poll.user})

if __name__ == '__main__':
    unittest.main()
