// chat-service client page. No framework, no build step; `io` comes from /socket.io.min.js.
//
// Rules this file keeps:
// - every piece of text that comes from a user or the server is rendered with textContent
//   (never innerHTML), so a message like `<img onerror=...>` is shown as text;
// - on every (re)connect it authenticates, then joins with `since: lastMessageId`, so the server
//   replays exactly what was missed; messages are deduplicated by messageId (a message sent
//   while joining may come both in message_history and as new_message).
'use strict';

(() => {
  const TYPING_IDLE_MS = 2000;
  const ACK_TIMEOUT_MS = 10000;
  // The server answers a `since` join with at most this many messages; a full page means
  // there may be more, so the page joins again from the newest one it got.
  const RESUME_PAGE = 1000;
  const MAX_RENDERED = 1000;
  const MAX_ERRORS = 4;
  const ROOM_RE = /^[A-Za-z0-9_\-:.@]{1,128}$/;
  // Errors after which reconnecting by ourselves would only fail again.
  const FATAL = new Set(['auth_failed', 'token_expired', 'too_many_connections', 'forbidden']);

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), statusText: $('status-text'),
    form: $('connect-form'), userId: $('userId'), username: $('username'), token: $('token'),
    roomId: $('roomId'), connect: $('connect'),
    users: $('users'), userCount: $('user-count'),
    errors: $('errors'), messages: $('messages'), empty: $('empty'), typing: $('typing'),
    sendForm: $('send-form'), input: $('message'), send: $('send'),
  };

  let session = null; // the current connection: {socket, userId, username, token, roomId, me, joined}
  let lastMessageId = null;
  const seen = new Set();
  const users = new Map(); // userId -> username
  const typers = new Map(); // userId -> username
  let typingOn = false;
  let typingTimer = null;
  let lastError = { key: '', at: 0 };

  // ---------------------------------------------------------------- small helpers

  function h(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.statusText.textContent = text;
  }

  function showError(code, message) {
    code = String(code || 'error');
    message = String(message || '');
    // A refused event with an ack gets both the failed ack and an `error` event: show it once.
    const key = `${code}\u0000${message}`;
    const now = Date.now();
    if (key === lastError.key && now - lastError.at < 2000) return;
    lastError = { key, at: now };
    const li = h('li', 'error');
    li.dataset.testid = 'error';
    li.dataset.code = code;
    li.append(h('span', 'code', code), h('span', 'text', message));
    const close = h('button', 'dismiss', '\u00d7');
    close.type = 'button';
    close.title = 'Dismiss';
    li.append(close);
    // The error lines sit above the message list and shrink it: keep the newest message in view.
    const keepBottom = () => {
      const stick = nearBottom();
      return () => { if (stick) ui.messages.scrollTop = ui.messages.scrollHeight; };
    };
    close.addEventListener('click', () => { const restore = keepBottom(); li.remove(); restore(); });
    const restore = keepBottom();
    ui.errors.append(li);
    while (ui.errors.children.length > MAX_ERRORS) ui.errors.firstElementChild.remove();
    restore();
  }

  function ackError(res, err) {
    if (err) return { code: 'timeout', message: 'The server did not answer in time' };
    if (res && res.success) return null;
    const e = (res && res.error) || {};
    return { code: e.code || 'error', message: e.message || 'Request failed' };
  }

  /** Emits with an ack and a timeout; resolves to the ack, rejects with {code, message}. */
  function request(s, event, payload) {
    return new Promise((resolve, reject) => {
      s.socket.timeout(ACK_TIMEOUT_MS).emit(event, payload, (err, res) => {
        const e = ackError(res, err);
        if (e) reject(e); else resolve(res);
      });
    });
  }

  // ---------------------------------------------------------------- rendering

  function formatTime(ms) {
    const d = new Date(Number(ms));
    return Number.isFinite(d.getTime())
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '';
  }

  function nearBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  function addMessage(msg) {
    if (!session || !msg || typeof msg.messageId !== 'string') return;
    if (msg.roomId !== undefined && msg.roomId !== session.roomId) return;
    if (seen.has(msg.messageId)) return;
    seen.add(msg.messageId);
    ui.empty.hidden = true;

    const mine = session.me && msg.userId === session.me.userId;
    const type = ['text', 'image', 'file', 'system'].includes(msg.messageType) ? msg.messageType : 'text';
    const li = h('li', `msg msg-${type}${mine ? ' mine' : ''}`);
    li.dataset.testid = 'message';
    li.dataset.messageId = msg.messageId;
    li.dataset.userId = String(msg.userId ?? '');
    li.dataset.timestamp = String(Number(msg.timestamp) || 0);
    if (type !== 'system') {
      const meta = h('div', 'meta');
      meta.append(h('span', 'author', msg.username || msg.userId || '?'));
      const time = h('time', 'time', formatTime(msg.timestamp));
      const date = new Date(Number(msg.timestamp));
      if (Number.isFinite(date.getTime())) {
        time.dateTime = date.toISOString();
        time.title = date.toLocaleString();
      }
      meta.append(time);
      if (type !== 'text') meta.append(h('span', 'kind', type));
      li.append(meta);
    }
    li.append(h('div', 'body', msg.message ?? ''));

    // Keep the list in server order: a live message can overtake the history of a join.
    const stick = nearBottom();
    const ts = Number(li.dataset.timestamp);
    let after = ui.messages.lastElementChild;
    while (after && after !== ui.empty && Number(after.dataset.timestamp) > ts) {
      after = after.previousElementSibling;
    }
    if (after) after.after(li); else ui.messages.prepend(li);
    const newest = ui.messages.lastElementChild;
    if (newest && newest.dataset.messageId) lastMessageId = newest.dataset.messageId;

    while (ui.messages.children.length > MAX_RENDERED + 1) {
      const oldest = ui.empty.nextElementSibling;
      if (!oldest) break;
      oldest.remove();
    }
    if (stick || mine) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function renderUsers() {
    const items = [...users].sort((a, b) => a[1].localeCompare(b[1]));
    ui.users.replaceChildren(...items.map(([id, name]) => {
      const li = h('li', 'user');
      li.dataset.testid = 'user';
      li.dataset.userId = id;
      li.append(h('span', 'avatar', (name || id || '?').trim().charAt(0).toUpperCase() || '?'));
      li.append(h('span', 'name', name || id));
      if (session && session.me && id === session.me.userId) {
        li.classList.add('me');
        li.append(h('span', 'you', 'you'));
      }
      return li;
    }));
    ui.userCount.textContent = String(users.size);
  }

  function renderTyping() {
    const names = [...typers.values()];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    ui.typing.textContent = text;
  }

  function resetRoomView() {
    seen.clear();
    users.clear();
    typers.clear();
    lastMessageId = null;
    ui.messages.replaceChildren(ui.empty);
    ui.empty.hidden = false;
    renderUsers();
    renderTyping();
  }

  function setComposer(enabled) {
    ui.input.disabled = !enabled;
    ui.send.disabled = !enabled;
  }

  // ---------------------------------------------------------------- typing

  function stopTyping() {
    clearTimeout(typingTimer);
    typingTimer = null;
    if (typingOn && session && session.joined) {
      session.socket.emit('typing', { roomId: session.roomId, isTyping: false });
    }
    typingOn = false;
  }

  ui.input.addEventListener('input', () => {
    if (!session || !session.joined) return;
    if (!ui.input.value.trim()) { stopTyping(); return; }
    if (!typingOn) {
      typingOn = true;
      session.socket.emit('typing', { roomId: session.roomId, isTyping: true });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  // ---------------------------------------------------------------- sending

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const s = session;
    const text = ui.input.value;
    if (!s || !s.joined || !text.trim()) return;
    stopTyping();
    ui.input.value = '';
    // clientMessageId makes a retried send idempotent on the server.
    const clientMessageId = `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    request(s, 'send_message', { roomId: s.roomId, message: text, clientMessageId })
      .catch((e) => {
        if (session !== s) return;
        showError(e.code, e.message);
        if (!ui.input.value) ui.input.value = text; // give the text back
      });
  });

  // ---------------------------------------------------------------- connection

  async function onConnect(s) {
    s.joined = false;
    setStatus('connecting', 'Authenticating…');
    const creds = {};
    if (s.token) creds.token = s.token;
    if (s.userId) creds.userId = s.userId;
    if (s.username) creds.username = s.username;
    try {
      const auth = await request(s, 'authenticate', creds);
      if (session !== s) return;
      s.me = { userId: String(auth.userId), username: String(auth.username) };
      setStatus('connecting', `Joining ${s.roomId}…`);
      // Resume: the server sends exactly the messages after lastMessageId (all of them, a
      // page at a time), or the last HISTORY_ON_JOIN on a first join.
      for (let pages = 0; pages < 50; pages++) {
        const since = lastMessageId;
        const historyDone = nextHistory(s);
        await request(s, 'join_room', since ? { roomId: s.roomId, since } : { roomId: s.roomId });
        const count = await historyDone;
        if (session !== s) return;
        if (!since || count < RESUME_PAGE) break;
      }
      s.joined = true;
      setStatus('online', `Online as ${s.me.username} in ${s.roomId}`);
      setComposer(true);
      renderUsers();
    } catch (e) {
      for (const w of [...s.historyWaiters]) w(0);
      if (session !== s) return;
      showError(e.code, e.message);
      if (e.code === 'timeout' || e.code === 'unavailable' || e.code === 'internal') {
        // Transient: drop this connection and let the reconnection logic try again.
        s.socket.io.engine.close();
      } else {
        stop(`Not connected (${e.code})`);
      }
    }
  }

  /** Resolves with the size of the next message_history of this session. */
  function nextHistory(s) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => done(0), ACK_TIMEOUT_MS);
      function done(n) {
        clearTimeout(timer);
        const i = s.historyWaiters.indexOf(done);
        if (i >= 0) s.historyWaiters.splice(i, 1);
        resolve(n);
      }
      s.historyWaiters.push(done);
    });
  }

  function wire(s) {
    const { socket } = s;
    const mine = (fn) => (...args) => { if (session === s) fn(...args); };

    socket.on('connect', mine(() => onConnect(s)));
    socket.on('disconnect', mine((reason) => {
      s.joined = false;
      typingOn = false;
      clearTimeout(typingTimer);
      setComposer(false);
      typers.clear();
      renderTyping();
      for (const w of [...s.historyWaiters]) w(0);
      if (reason === 'io server disconnect') {
        // The server closed this connection on purpose (limits, shutdown): socket.io does
        // not reconnect by itself then. Try again unless the last error says it is pointless.
        const code = lastError.key.split('\u0000')[0];
        if (FATAL.has(code) && Date.now() - lastError.at < 5000) {
          stop(`Disconnected by the server (${code})`);
          return;
        }
        setStatus('reconnecting', 'Disconnected by the server, reconnecting…');
        s.retry = setTimeout(mine(() => socket.connect()), 1000 + Math.random() * 2000);
        return;
      }
      setStatus('reconnecting', 'Connection lost, reconnecting…');
    }));
    socket.on('connect_error', mine((err) => {
      setStatus('reconnecting', `Cannot reach the server (${err && err.message ? err.message : 'error'}), retrying…`);
    }));
    socket.io.on('reconnect_attempt', mine((n) => {
      setStatus('reconnecting', `Reconnecting (attempt ${n})…`);
    }));

    socket.on('authenticated', mine((who) => {
      if (who && who.userId !== undefined) {
        s.me = { userId: String(who.userId), username: String(who.username ?? who.userId) };
      }
    }));
    socket.on('message_history', mine((list) => {
      const arr = Array.isArray(list) ? list : [];
      arr.forEach(addMessage);
      const w = s.historyWaiters[0];
      if (w) w(arr.length);
    }));
    socket.on('new_message', mine((msg) => {
      addMessage(msg);
      if (msg && typers.delete(String(msg.userId))) renderTyping();
    }));
    socket.on('room_users', mine((list) => {
      users.clear();
      for (const u of Array.isArray(list) ? list : []) {
        if (u && u.userId !== undefined) users.set(String(u.userId), String(u.username ?? u.userId));
      }
      renderUsers();
    }));
    socket.on('user_joined', mine((u) => {
      if (!u || u.roomId !== s.roomId) return;
      users.set(String(u.userId), String(u.username ?? u.userId));
      renderUsers();
    }));
    socket.on('user_left', mine((u) => {
      if (!u || u.roomId !== s.roomId) return;
      users.delete(String(u.userId));
      typers.delete(String(u.userId));
      renderUsers();
      renderTyping();
    }));
    socket.on('user_typing', mine((t) => {
      if (!t || t.roomId !== s.roomId) return;
      const id = String(t.userId);
      if (s.me && id === s.me.userId) return;
      if (t.isTyping) typers.set(id, String(t.username ?? id)); else typers.delete(id);
      renderTyping();
    }));
    socket.on('error', mine((e) => {
      showError(e && e.code, e && e.message);
    }));
  }

  function start() {
    const userId = ui.userId.value.trim();
    const username = ui.username.value.trim();
    const token = ui.token.value.trim();
    const roomId = ui.roomId.value.trim();
    if (!ROOM_RE.test(roomId)) {
      showError('invalid_payload', 'Room: 1-128 characters among A-Z a-z 0-9 _ - : . @');
      return;
    }
    if (!token && !userId) {
      showError('invalid_payload', 'Enter a user id (or a token)');
      return;
    }
    try {
      localStorage.setItem('chat-service.page', JSON.stringify({ userId, username, roomId }));
    } catch { /* storage may be disabled */ }

    resetRoomView();
    ui.errors.replaceChildren();
    // Short reconnection delays: after a network drop the page is back within ~2 s of the
    // network returning.
    const socket = io({ reconnectionDelay: 500, reconnectionDelayMax: 2000, timeout: 8000 });
    session = { socket, userId, username, token, roomId, me: null, joined: false, historyWaiters: [] };
    wire(session);
    for (const f of [ui.userId, ui.username, ui.token, ui.roomId]) f.disabled = true;
    ui.connect.textContent = 'Disconnect';
    ui.connect.classList.add('secondary');
    setStatus('connecting', 'Connecting…');
  }

  function stop(text = 'Not connected') {
    const s = session;
    session = null;
    if (s) {
      clearTimeout(s.retry);
      clearTimeout(typingTimer);
      typingOn = false;
      s.socket.disconnect();
      s.socket.off();
      s.socket.io.off();
    }
    setComposer(false);
    users.clear();
    typers.clear();
    renderUsers();
    renderTyping();
    for (const f of [ui.userId, ui.username, ui.token, ui.roomId]) f.disabled = false;
    ui.connect.textContent = 'Connect';
    ui.connect.classList.remove('secondary');
    setStatus(s ? 'disconnected' : 'idle', text);
  }

  // Chromium's offline mode (and some real network losses) leave an open WebSocket looking
  // alive until a ping is missed, 45 s later with the server defaults. engine.io-client
  // closes its transport on the browser's `offline` event, but not for pages served from
  // "localhost"; doing it here makes the page notice at once wherever it is served from, and
  // reconnect + resume as soon as the network is back.
  window.addEventListener('offline', () => {
    if (session && session.socket.connected) session.socket.io.engine.close();
  });

  ui.form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (session) stop(); else start();
  });

  // Fields: remembered from last time, else a random guest identity.
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem('chat-service.page') || '{}') || {}; } catch { saved = {}; }
  const guest = Math.random().toString(36).slice(2, 6);
  ui.userId.value = typeof saved.userId === 'string' && saved.userId ? saved.userId : `user-${guest}`;
  ui.username.value = typeof saved.username === 'string' && saved.username ? saved.username : `Guest ${guest}`;
  ui.roomId.value = typeof saved.roomId === 'string' && saved.roomId ? saved.roomId : 'general';
  if (typeof io !== 'function') {
    showError('unavailable', 'The Socket.IO client (/socket.io.min.js) did not load');
    ui.connect.disabled = true;
  }
})();
