// chat-service client page. No framework, no build step; `io` comes from /socket.io.min.js.
//
// Rules this file keeps:
// - every piece of text that comes from a user or the server is rendered with textContent
//   (never innerHTML), so a message like `<img onerror=...>` is shown as text;
// - on every (re)connect it authenticates, then joins with `since: lastMessageId`, so the server
//   replays exactly what was missed; messages are deduplicated by messageId (a message sent
//   while joining may come both in message_history and as new_message);
// - a message is a record in `msgs`; every change to it (edit, delete, reaction, receipt)
//   updates the record and repaints its <li> with paint().
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
  const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮'];
  // The page only hears the events of its own room: the unread counts of the others are
  // reloaded on focus and at this interval.
  const ROOMS_REFRESH_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), statusText: $('status-text'),
    form: $('connect-form'), userId: $('userId'), username: $('username'), token: $('token'),
    roomId: $('roomId'), connect: $('connect'),
    users: $('users'), userCount: $('user-count'),
    errors: $('errors'), messages: $('messages'), empty: $('empty'), typing: $('typing'),
    sendForm: $('send-form'), input: $('message'), send: $('send'),
    rooms: $('rooms'), roomsEmpty: $('rooms-empty'),
    compose: $('compose'), composeText: $('compose-text'), composeCancel: $('compose-cancel'),
  };

  let session = null; // the current connection: {socket, userId, username, token, roomId, me, joined}
  let lastMessageId = null;
  // messageId -> {messageId, userId, username, message, messageType, timestamp, replyTo,
  //               editedAt, deleted, reactions: Map(emoji -> {count, users: Set}), li}
  const msgs = new Map();
  const receipts = new Map(); // userId -> {messageId, readAt}: each member's read marker
  const names = new Map(); // userId -> username, of everyone seen in this room (for receipts)
  let compose = null; // {mode: 'reply' | 'edit', messageId} while the composer replies or edits
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

  const isMe = (userId) => Boolean(session && session.me && userId === session.me.userId);
  const nameOf = (userId) => users.get(userId) || names.get(userId) || userId;

  /** Copies the changeable state of a history item (or new_message) into a record. */
  function applyState(rec, m) {
    rec.deleted = m.deleted === true;
    rec.message = rec.deleted ? '' : String(m.message ?? '');
    rec.editedAt = Number(m.editedAt) || null;
    rec.reactions = new Map();
    for (const r of Array.isArray(m.reactions) ? m.reactions : []) {
      if (!r || typeof r.emoji !== 'string' || !(Number(r.count) > 0)) continue;
      const who = Array.isArray(r.userIds) ? r.userIds.map(String) : [];
      rec.reactions.set(r.emoji, { count: Number(r.count), users: new Set(who) });
    }
  }

  function addMessage(msg) {
    if (!session || !msg || typeof msg.messageId !== 'string') return;
    if (msg.roomId !== undefined && msg.roomId !== session.roomId) return;
    const known = msgs.get(msg.messageId);
    if (known) {
      // Sent while we joined: it comes in message_history and as new_message. The history
      // item (it has `reactions`) is the complete one.
      if (Array.isArray(msg.reactions)) { applyState(known, msg); paint(known); }
      return;
    }
    ui.empty.hidden = true;

    const rec = {
      messageId: msg.messageId,
      userId: String(msg.userId ?? ''),
      username: String(msg.username || msg.userId || '?'),
      messageType: ['text', 'image', 'file', 'system'].includes(msg.messageType) ? msg.messageType : 'text',
      timestamp: Number(msg.timestamp) || 0,
      replyTo: typeof msg.replyTo === 'string' ? msg.replyTo : null,
      li: h('li'),
    };
    applyState(rec, msg);
    msgs.set(rec.messageId, rec);
    if (rec.messageType !== 'system') names.set(rec.userId, rec.username);
    const li = rec.li;
    li.dataset.testid = 'message';
    li.dataset.messageId = rec.messageId;
    li.dataset.userId = rec.userId;
    li.dataset.timestamp = String(rec.timestamp);
    paint(rec);

    // Keep the list in server order: a live message can overtake the history of a join.
    const stick = nearBottom();
    let after = ui.messages.lastElementChild;
    while (after && after !== ui.empty && Number(after.dataset.timestamp) > rec.timestamp) {
      after = after.previousElementSibling;
    }
    if (after) after.after(li); else ui.messages.prepend(li);
    const newest = ui.messages.lastElementChild;
    if (newest && newest.dataset.messageId) lastMessageId = newest.dataset.messageId;

    while (ui.messages.children.length > MAX_RENDERED + 1) {
      const oldest = ui.empty.nextElementSibling;
      if (!oldest) break;
      msgs.delete(oldest.dataset.messageId);
      oldest.remove();
    }
    repaintReplies(rec.messageId);
    if (stick || isMe(rec.userId)) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function button(action, text, title, className = 'act') {
    const b = h('button', className, text);
    b.type = 'button';
    b.dataset.action = action;
    b.dataset.testid = action;
    if (title) { b.title = title; b.setAttribute('aria-label', title); }
    return b;
  }

  /** The quoted original of a reply. */
  function quote(id) {
    const q = h('div', 'quote');
    q.dataset.testid = 'quote';
    q.dataset.action = 'jump';
    const orig = msgs.get(id);
    if (!orig) {
      q.append(h('span', 'quote-text', 'original message not loaded'));
    } else {
      q.append(h('span', 'quote-author', orig.username));
      q.append(h('span', `quote-text${orig.deleted ? ' tombstone' : ''}`,
        orig.deleted ? 'message deleted' : orig.message));
    }
    return q;
  }

  /** (Re)renders a message from its record. */
  function paint(rec) {
    const { li } = rec;
    const mine = isMe(rec.userId);
    const type = rec.messageType;
    li.className = `msg msg-${type}${mine ? ' mine' : ''}${rec.deleted ? ' deleted' : ''}`;
    const parts = [];
    if (type !== 'system') {
      const meta = h('div', 'meta');
      meta.append(h('span', 'author', rec.username));
      const time = h('time', 'time', formatTime(rec.timestamp));
      const date = new Date(rec.timestamp);
      if (Number.isFinite(date.getTime())) {
        time.dateTime = date.toISOString();
        time.title = date.toLocaleString();
      }
      meta.append(time);
      if (type !== 'text') meta.append(h('span', 'kind', type));
      if (rec.editedAt && !rec.deleted) {
        const edited = h('span', 'edited', 'edited');
        edited.dataset.testid = 'edited';
        edited.title = `edited ${new Date(rec.editedAt).toLocaleString()}`;
        meta.append(edited);
      }
      parts.push(meta);
    }
    if (rec.replyTo) parts.push(quote(rec.replyTo));
    parts.push(rec.deleted ? h('div', 'body tombstone', 'message deleted') : h('div', 'body', rec.message));

    if (rec.reactions.size && !rec.deleted) {
      const row = h('div', 'reactions');
      for (const [emoji, r] of rec.reactions) {
        const chip = button('react', `${emoji} ${r.count}`, null, 'reaction');
        chip.dataset.testid = 'reaction';
        chip.dataset.emoji = emoji;
        chip.setAttribute('aria-pressed', String([...r.users].some(isMe)));
        chip.title = [...r.users].map(nameOf).join(', ');
        row.append(chip);
      }
      parts.push(row);
    }

    // "read by": the others whose read marker is this message (its author aside).
    const readers = [...receipts]
      .filter(([u, r]) => r.messageId === rec.messageId && u !== rec.userId && !isMe(u))
      .map(([u]) => nameOf(u)).sort((a, b) => a.localeCompare(b));
    if (readers.length) {
      const line = h('div', 'receipts', `read by ${readers.join(', ')}`);
      line.dataset.testid = 'receipts';
      parts.push(line);
    }

    if (type !== 'system' && !rec.deleted) {
      const bar = h('div', 'actions');
      bar.append(button('reply', 'Reply', 'Reply to this message'));
      for (const emoji of QUICK_EMOJI) {
        const b = button('react', emoji, `React with ${emoji}`);
        b.dataset.testid = 'quick-react';
        b.dataset.emoji = emoji;
        bar.append(b);
      }
      if (mine) {
        bar.append(button('edit', 'Edit', 'Edit your message'), button('delete', 'Delete', 'Delete your message'));
      }
      parts.push(bar);
    }
    li.replaceChildren(...parts);
  }

  /** Repaints the replies to a message (their quote shows its current text). */
  function repaintReplies(id) {
    for (const rec of msgs.values()) if (rec.replyTo === id) paint(rec);
  }

  /** A read marker moved (never backwards: an older answer does not undo a newer event). */
  function setReceipt(userId, messageId, readAt) {
    const old = receipts.get(userId);
    if (old && old.readAt > readAt) return;
    receipts.set(userId, { messageId, readAt });
    for (const id of new Set([old && old.messageId, messageId])) {
      const rec = id && msgs.get(id);
      if (rec) paint(rec);
    }
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
    msgs.clear();
    receipts.clear();
    names.clear();
    endCompose();
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
    if (!session || !session.joined || (compose && compose.mode === 'edit')) return;
    if (!ui.input.value.trim()) { stopTyping(); return; }
    if (!typingOn) {
      typingOn = true;
      session.socket.emit('typing', { roomId: session.roomId, isTyping: true });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  });

  // ---------------------------------------------------------------- sending, replying, editing

  /** Replies to or edits `rec` with the composer; the bar above it says which. */
  function startCompose(mode, rec) {
    if (compose && compose.mode === 'edit') ui.input.value = '';
    compose = { mode, messageId: rec.messageId };
    ui.composeText.textContent = mode === 'edit'
      ? 'Editing your message (Enter to save)'
      : `Replying to ${rec.username}: ${rec.message}`;
    ui.compose.hidden = false;
    if (mode === 'edit') { stopTyping(); ui.input.value = rec.message; }
    ui.input.focus();
  }

  function endCompose() {
    if (compose && compose.mode === 'edit') ui.input.value = '';
    compose = null;
    ui.compose.hidden = true;
  }

  ui.composeCancel.addEventListener('click', endCompose);
  ui.input.addEventListener('keydown', (ev) => { if (ev.key === 'Escape' && compose) endCompose(); });

  /** A change to a message; a refusal is shown. */
  function change(s, event, payload) {
    return request(s, event, { roomId: s.roomId, ...payload })
      .catch((e) => { if (session === s) showError(e.code, e.message); });
  }

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const s = session;
    const text = ui.input.value;
    if (!s || !s.joined || !text.trim()) return;
    const was = compose;
    if (was && was.mode === 'edit') {
      const rec = msgs.get(was.messageId);
      endCompose();
      if (!rec || rec.message === text) return;
      request(s, 'edit_message', { roomId: s.roomId, messageId: was.messageId, message: text })
        .catch((e) => {
          if (session !== s) return;
          showError(e.code, e.message);
          if (ui.input.value || compose || rec.deleted) return;
          startCompose('edit', rec);
          ui.input.value = text; // give the text back
        });
      return;
    }
    stopTyping();
    ui.input.value = '';
    endCompose();
    // clientMessageId makes a retried send idempotent on the server.
    const clientMessageId = `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    const payload = { roomId: s.roomId, message: text, clientMessageId };
    if (was) payload.replyTo = was.messageId;
    request(s, 'send_message', payload)
      .catch((e) => {
        if (session !== s) return;
        showError(e.code, e.message);
        if (ui.input.value) return;
        const orig = was && !compose && msgs.get(was.messageId);
        if (orig) startCompose('reply', orig);
        ui.input.value = text; // give the text back, and the reply
      });
  });

  // The buttons of the messages: one listener for the whole list.
  ui.messages.addEventListener('click', (ev) => {
    const el = ev.target.closest('[data-action]');
    const li = el && el.closest('li[data-message-id]');
    const rec = li && msgs.get(li.dataset.messageId);
    const s = session;
    if (!rec || !s || !s.joined) return;
    const { messageId } = rec;
    switch (el.dataset.action) {
      case 'reply': startCompose('reply', rec); break;
      case 'edit': startCompose('edit', rec); break;
      case 'delete':
        if (window.confirm('Delete this message for everyone?')) change(s, 'delete_message', { messageId });
        break;
      case 'react': {
        // A click toggles: my own reaction is removed, any other added.
        const { emoji } = el.dataset;
        const r = rec.reactions.get(emoji);
        const mineAlready = Boolean(r && [...r.users].some(isMe));
        change(s, mineAlready ? 'remove_reaction' : 'add_reaction', { messageId, emoji });
        break;
      }
      case 'jump': {
        const orig = msgs.get(rec.replyTo);
        if (orig) orig.li.scrollIntoView({ block: 'center', behavior: 'smooth' });
        break;
      }
    }
  });

  // ---------------------------------------------------------------- read markers, rooms

  /** Marks the newest message read, when the page is in view (and it is not marked yet). */
  function markRead() {
    const s = session;
    const id = lastMessageId;
    if (!s || !s.joined || !id || id === s.markedRead || document.visibilityState !== 'visible') return;
    s.markedRead = id;
    request(s, 'mark_read', { roomId: s.roomId, messageId: id })
      .catch(() => { if (s.markedRead === id) s.markedRead = null; }); // tried again on the next one
  }

  /** REST as the connected user: Bearer token when one was given, else X-User-Id (AUTH_MODE=none). */
  async function api(s, path) {
    const headers = {};
    if (s.token) headers.Authorization = `Bearer ${s.token}`;
    if (s.me) headers['X-User-Id'] = s.me.userId;
    const res = await fetch(path, { headers, cache: 'no-store' });
    if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
    return res.json();
  }

  function renderRooms(list) {
    const rooms = Array.isArray(list) ? list.filter((r) => r && typeof r.roomId === 'string') : [];
    ui.rooms.replaceChildren(...rooms.map((r) => {
      const li = h('li', 'room');
      li.dataset.testid = 'room';
      li.dataset.roomId = r.roomId;
      const b = h('button', 'room-link');
      b.type = 'button';
      b.append(h('span', 'room-name', r.roomId));
      const unread = Number(r.unreadCount) || 0;
      li.dataset.unread = String(unread);
      if (unread > 0) {
        const badge = h('span', 'unread', unread > 99 ? '99+' : unread);
        badge.dataset.testid = 'unread';
        badge.title = `${unread} unread`;
        b.append(badge);
      }
      if (session && r.roomId === session.roomId) b.setAttribute('aria-current', 'true');
      b.addEventListener('click', () => {
        if (session && session.roomId === r.roomId) return;
        ui.roomId.value = r.roomId;
        if (session) stop();
        start();
      });
      li.append(b);
      return li;
    }));
    ui.roomsEmpty.hidden = rooms.length > 0;
  }

  let roomsTimer = null;
  let roomsSeq = 0;
  /** Reloads the rooms list soon (several events in a row: one request). */
  function refreshRooms(delay = 300) {
    clearTimeout(roomsTimer);
    roomsTimer = setTimeout(async () => {
      const s = session;
      if (!s || !s.me) return;
      const seq = ++roomsSeq;
      try {
        const res = await api(s, '/api/chat/rooms');
        if (seq === roomsSeq && session === s) renderRooms(res.rooms);
      } catch { /* an extra: keep the last list */ }
    }, delay);
  }

  async function loadReceipts(s) {
    try {
      const res = await api(s, `/api/chat/${s.roomId}/receipts`);
      if (session !== s) return;
      for (const r of Array.isArray(res.receipts) ? res.receipts : []) {
        if (r && r.userId !== undefined) setReceipt(String(r.userId), String(r.messageId), Number(r.readAt) || 0);
      }
    } catch { /* receipts are an extra */ }
  }

  const inView = () => { markRead(); refreshRooms(0); };
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible') inView(); });
  window.addEventListener('focus', inView);
  setInterval(() => { if (session && session.joined) refreshRooms(0); }, ROOMS_REFRESH_MS);

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
      loadReceipts(s);
      refreshRooms(0);
      markRead();
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
      markRead();
      if (msg && !isMe(String(msg.userId))) refreshRooms();
    }));
    socket.on('message_edited', mine((e) => {
      const rec = e && e.roomId === s.roomId && msgs.get(e.messageId);
      if (!rec || rec.deleted) return;
      rec.message = String(e.message ?? '');
      rec.editedAt = Number(e.editedAt) || Date.now();
      paint(rec);
      repaintReplies(rec.messageId);
    }));
    socket.on('message_deleted', mine((e) => {
      const rec = e && e.roomId === s.roomId && msgs.get(e.messageId);
      if (!rec) return;
      rec.deleted = true;
      rec.message = '';
      rec.reactions.clear();
      if (compose && compose.messageId === rec.messageId) endCompose();
      paint(rec);
      repaintReplies(rec.messageId);
      refreshRooms();
    }));
    socket.on('reaction_updated', mine((e) => {
      const rec = e && e.roomId === s.roomId && msgs.get(e.messageId);
      if (!rec || typeof e.emoji !== 'string') return;
      const r = rec.reactions.get(e.emoji) || { count: 0, users: new Set() };
      if (e.added) r.users.add(String(e.userId)); else r.users.delete(String(e.userId));
      r.count = Number(e.count) || 0;
      if (r.count > 0) rec.reactions.set(e.emoji, r); else rec.reactions.delete(e.emoji);
      paint(rec);
    }));
    socket.on('read_receipt', mine((e) => {
      if (!e || e.roomId !== s.roomId || e.userId === undefined) return;
      setReceipt(String(e.userId), String(e.messageId), Number(e.readAt) || 0);
      if (isMe(String(e.userId))) refreshRooms();
    }));
    socket.on('room_users', mine((list) => {
      users.clear();
      for (const u of Array.isArray(list) ? list : []) {
        if (u && u.userId !== undefined) users.set(String(u.userId), String(u.username ?? u.userId));
      }
      for (const [id, name] of users) names.set(id, name);
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
    renderRooms([]);
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
    endCompose();
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
