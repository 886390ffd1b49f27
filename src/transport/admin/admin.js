// chat-service operator's page. No framework, no build step, no request to another origin.
//
// Rules this file keeps:
// - the token is asked for once and kept in this tab's sessionStorage; it only ever travels in
//   the Authorization header of GET /admin/api/stats, never in a URL;
// - every figure is polled (one request at a time, every POLL_MS) and rendered with
//   textContent or SVG attributes, never innerHTML;
// - a 401 forgets the token and asks again, saying why.
'use strict';

(() => {
  const POLL_MS = 2000;
  const MAX_RETRY_MS = 10000;
  const STORAGE_KEY = 'chat-service.admin-token';
  const SVG = 'http://www.w3.org/2000/svg';
  // A report older than this many of its intervals is shown as stale.
  const STALE_INTERVALS = 3;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'), statusText: $('status-text'), forget: $('forget'),
    login: $('login'), token: $('token'), loginError: $('login-error'),
    dashboard: $('dashboard'), warning: $('warning'),
    totalInstances: $('total-instances'), totalConnections: $('total-connections'),
    totalMessages: $('total-messages'), totalDeliveries: $('total-deliveries'),
    instances: $('instances'), rooms: $('rooms'), noRooms: $('no-rooms'),
    updated: $('updated'), answeredBy: $('answered-by'),
  };

  let token = null;
  let timer = null;
  let generation = 0; // bumped on every start/stop, so a late answer of an old poll is dropped
  let failures = 0;

  // ---------------------------------------------------------------- helpers

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

  function count(n) {
    return Number(n || 0).toLocaleString('en-US');
  }

  function rate(n) {
    const x = Number(n || 0);
    return x >= 100 ? count(Math.round(x)) : String(Math.round(x * 10) / 10);
  }

  function duration(ms) {
    let s = Math.max(0, Math.round(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hr = Math.floor(s / 3600); s -= hr * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d ${hr}h`;
    if (hr) return `${hr}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  const short = (id) => String(id).slice(0, 8);

  // ---------------------------------------------------------------- token and polling

  function showLogin(message) {
    stop();
    ui.dashboard.hidden = true;
    ui.forget.hidden = true;
    ui.login.hidden = false;
    ui.loginError.hidden = !message;
    ui.loginError.textContent = message || '';
    ui.token.value = '';
    ui.token.focus();
  }

  function start(newToken) {
    stop();
    token = newToken;
    failures = 0;
    ui.login.hidden = true;
    ui.forget.hidden = false;
    setStatus('loading', 'Loading…');
    poll(generation);
  }

  function stop() {
    generation += 1;
    clearTimeout(timer);
    timer = null;
  }

  function forget(message, state, statusText) {
    token = null;
    sessionStorage.removeItem(STORAGE_KEY);
    showLogin(message);
    setStatus(state, statusText);
  }

  async function poll(gen) {
    let res;
    let body = null;
    try {
      res = await fetch('/admin/api/stats', {
        headers: { Authorization: `Bearer ${token}` },
        cache: 'no-store',
        credentials: 'omit',
      });
      body = await res.json().catch(() => null);
    } catch (e) {
      res = null;
    }
    if (gen !== generation) return;
    if (res && res.status === 401) {
      const code = body && body.error && body.error.code ? ` (${body.error.code})` : '';
      forget(`401 Unauthorized${code}: this instance refused the token. Check ADMIN_TOKEN.`,
        'refused', 'Refused (401)');
      return;
    }
    if (res && res.status === 404) {
      forget('404: the operator\'s page is off on this instance (ADMIN_TOKEN is not set).',
        'refused', 'Off (404)');
      return;
    }
    if (res && res.ok && body) {
      failures = 0;
      render(body);
      const n = body.instances ? body.instances.length : 0;
      setStatus('live', `Live · ${n} instance${n === 1 ? '' : 's'}`);
      timer = setTimeout(() => poll(gen), POLL_MS);
      return;
    }
    failures += 1;
    const why = res ? `HTTP ${res.status}` : 'no answer';
    setStatus('retrying', `Retrying (${why})`);
    timer = setTimeout(() => poll(gen), Math.min(POLL_MS * 2 ** (failures - 1), MAX_RETRY_MS));
  }

  // ---------------------------------------------------------------- charts

  /** A small SVG chart of `values` at times `at` (epoch ms) over the last `windowMs`. */
  function sparkline(values, at, windowMs, label) {
    const W = 100;
    const H = 30;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('role', 'img');
    const n = Math.min(values.length, at.length);
    const title = document.createElementNS(SVG, 'title');
    if (n === 0) {
      title.textContent = `${label}: no samples yet`;
      svg.appendChild(title);
      return svg;
    }
    const end = at[n - 1];
    const begin = end - windowMs;
    let max = 0;
    for (let i = 0; i < n; i += 1) max = Math.max(max, Number(values[i]) || 0);
    const scale = max > 0 ? (H - 2) / max : 0;
    const points = [];
    for (let i = 0; i < n; i += 1) {
      if (at[i] < begin) continue;
      const x = windowMs > 0 ? ((at[i] - begin) / windowMs) * W : W;
      points.push([x, H - 1 - (Number(values[i]) || 0) * scale]);
    }
    if (points.length === 1) points.unshift([points[0][0] - 1, points[0][1]]);
    const xy = points.map(([x, y]) => `${x.toFixed(2)},${y.toFixed(2)}`).join(' ');
    const area = document.createElementNS(SVG, 'polygon');
    area.setAttribute('points',
      `${points[0][0].toFixed(2)},${H} ${xy} ${points[points.length - 1][0].toFixed(2)},${H}`);
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', xy);
    title.textContent = `${label}, last ${duration(Math.min(windowMs, end - at[0]))}: max ${max}`;
    svg.append(title, area, line);
    return svg;
  }

  // ---------------------------------------------------------------- rendering

  function figure(name, label, value, detail, series, history, windowMs) {
    const box = h('div', 'figure');
    box.dataset.figure = name;
    const v = h('span', 'value', value);
    v.dataset.testid = `figure-${name}`;
    box.append(h('span', 'label', label), v, h('span', 'detail', detail || ''));
    box.appendChild(sparkline(series || [], history.at || [], windowMs, label));
    return box;
  }

  function instanceCard(r, now, self) {
    const card = h('article', 'card instance');
    card.dataset.testid = 'instance';
    card.dataset.instanceId = r.instanceId;
    const interval = r.intervalMs || POLL_MS;
    const age = now - (r.sampledAt || 0);
    const stale = age > STALE_INTERVALS * interval;
    if (stale) card.classList.add('stale');

    const head = h('header');
    const name = h('div');
    const id = h('span', 'id mono', r.instanceId);
    id.dataset.testid = 'instance-id';
    name.appendChild(id);
    if (r.instanceId === self) name.appendChild(h('span', 'badge', 'this instance'));
    if (stale) name.appendChild(h('span', 'badge stale', 'stale'));
    const meta = h('div', 'meta',
      `v${r.version || '?'} · up ${duration(now - (r.startedAt || now))} · sampled ${duration(age)} ago`);
    head.append(name, meta);

    const history = r.history || {};
    // The charts span the history the instance has (five minutes once it has run that long),
    // at least ten samples, so a young instance's first points are not squeezed to one edge.
    const at = history.at || [];
    const span = at.length > 1 ? at[at.length - 1] - at[0] : 0;
    const windowMs = Math.max(span, 10 * interval);
    const t = r.connectionsByTransport || {};
    const figures = h('div', 'figures');
    figures.append(
      figure('connections', 'connections', count(r.connections),
        `socketio ${count(t.socketio)} · polling ${count(t.polling)} · raw ${count(t.raw)}`,
        history.connections, history, windowMs),
      figure('users', 'users', count(r.users), '', history.users, history, windowMs),
      figure('rooms', 'rooms', count(r.rooms), '', history.rooms, history, windowMs),
      figure('messages', 'messages/s', rate(r.messagesPerSec), `${count(r.messagesStored)} stored`,
        history.messagesPerSec, history, windowMs),
      figure('deliveries', 'deliveries/s', rate(r.deliveriesPerSec), `${count(r.deliveries)} total`,
        history.deliveriesPerSec, history, windowMs),
    );

    const row = h('div', 'row2');
    const deps = h('div');
    deps.appendChild(h('h3', null, 'Dependencies'));
    const list = h('ul', 'deps');
    for (const d of r.dependencies || []) {
      const item = h('li', 'dep', `${d.name} ${d.up ? 'up' : 'down'}`);
      item.dataset.testid = 'dependency';
      item.dataset.name = d.name;
      item.dataset.up = String(Boolean(d.up));
      if (d.error) item.title = d.error;
      list.appendChild(item);
    }
    deps.appendChild(list);
    const outbox = h('div', 'outbox');
    outbox.dataset.testid = 'outbox';
    outbox.appendChild(h('h3', null, 'Outbox'));
    if (r.outbox) {
      const dl = h('dl');
      dl.append(
        h('dt', null, 'waiting'), h('dd', null, count(r.outbox.depth)),
        h('dt', null, 'oldest'), h('dd', null, r.outbox.depth > 0 ? duration(r.outbox.oldestAgeMs) : '–'),
        h('dt', null, 'broker'), h('dd', null, r.outbox.brokerUp ? 'up' : 'down'),
      );
      outbox.appendChild(dl);
    } else {
      outbox.appendChild(h('span', 'hint', 'no broker (RABBITMQ_URL unset)'));
    }
    row.append(deps, outbox);

    card.append(head, figures, row);
    return card;
  }

  function roomRow(room) {
    const tr = h('tr');
    tr.dataset.testid = 'room';
    tr.dataset.roomId = room.roomId;
    const by = Object.entries(room.byInstance || {})
      .map(([id, n]) => `${short(id)} ${count(n)}`).join(' · ');
    const members = h('td', 'num', count(room.members));
    members.dataset.testid = 'room-members';
    tr.append(h('td', 'mono', room.roomId), members, h('td', 'by', by));
    return tr;
  }

  function render(view) {
    const now = view.generatedAt || Date.now();
    ui.dashboard.hidden = false;
    const totals = view.totals || {};
    ui.totalInstances.textContent = count(totals.instances);
    ui.totalConnections.textContent = count(totals.connections);
    ui.totalMessages.textContent = rate(totals.messagesPerSec);
    ui.totalDeliveries.textContent = rate(totals.deliveriesPerSec);

    if (view.fleetError) {
      ui.warning.textContent = `The other instances cannot be read (${view.fleetError}): this instance only.`;
      ui.warning.hidden = false;
    } else if (!view.shared) {
      ui.warning.textContent = 'No Redis configured: this instance runs alone.';
      ui.warning.hidden = false;
    } else {
      ui.warning.hidden = true;
    }

    ui.instances.replaceChildren(
      ...(view.instances || []).map((r) => instanceCard(r, now, view.instanceId)),
    );
    const rooms = view.biggestRooms || [];
    ui.rooms.replaceChildren(...rooms.map(roomRow));
    ui.noRooms.hidden = rooms.length > 0;
    ui.updated.textContent = new Date(now).toLocaleTimeString();
    ui.answeredBy.textContent = view.instanceId || '–';
  }

  // ---------------------------------------------------------------- wiring

  ui.login.addEventListener('submit', (e) => {
    e.preventDefault();
    const value = ui.token.value.trim();
    if (!value) return;
    sessionStorage.setItem(STORAGE_KEY, value);
    start(value);
  });

  ui.forget.addEventListener('click', () => {
    forget('', 'locked', 'Token needed');
  });

  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) start(saved);
  else showLogin('');
})();
