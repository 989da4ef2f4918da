// The callvault web page: log in with a token, search the catalog, read a recording's metadata
// and play it with its DTMF and pause markers on a timeline; the audit trail for auditors.
// Plain JavaScript, no build step and nothing fetched from elsewhere: the page is served under
// a Content-Security-Policy that allows this origin only (no inline scripts or styles).
'use strict';

(() => {
  const TOKEN_KEY = 'callvault.token';

  const $ = (sel) => document.querySelector(sel);

  const state = {
    token: null,
    me: null,
    query: null,
    nextCursor: null,
    // Bumped at every selection: answers for an earlier one are dropped.
    selection: 0,
    // Bumped at every search: a page answering an earlier one is dropped.
    searches: 0,
    recording: null,
    linkExpires: 0,
    linkRetried: false,
    // Which audio file plays (a separate-layout recording has one per leg).
    leg: 0,
    dragging: false,
    auditAfter: null,
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One API call with the session's token; the error's message is the server's.
  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + state.token, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', 'Cannot reach the callvault server (' + e.message + ').');
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!r.ok) {
      const err = data && data.error;
      throw new ApiError(r.status, err ? err.code : 'http', err ? err.message : (text || r.statusText));
    }
    return data;
  }

  // --- messages -------------------------------------------------------------------------------

  function showError(message) {
    const el = $('#error');
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    const el = $('#error');
    el.textContent = '';
    el.hidden = true;
  }

  // Shows why a call failed; a refused token ends the session.
  function fail(e) {
    if (e instanceof ApiError && e.status === 401) {
      logout();
      showError('The server refused the token (401: ' + e.message + '). Paste a valid token to log in again.');
      return;
    }
    if (e instanceof ApiError && e.status === 403) {
      showError('Not allowed (403): ' + e.message + '.');
      return;
    }
    if (e instanceof ApiError && e.status) {
      showError('Error ' + e.status + ': ' + e.message);
      return;
    }
    showError(e.message || String(e));
  }

  // --- formatting -----------------------------------------------------------------------------

  function clock(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) seconds = 0;
    const tenths = Math.floor(seconds * 10 + 1e-6);
    const m = Math.floor(tenths / 600);
    const s = Math.floor((tenths % 600) / 10);
    return m + ':' + String(s).padStart(2, '0') + '.' + (tenths % 10);
  }

  function text(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  function fillDl(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) {
      dl.append(el('dt', { text: k }), el('dd', { text: text(v) }));
    }
    if (!pairs.length) dl.append(el('dd', { class: 'note', text: 'none' }));
  }

  function fillTable(table, columns, rows) {
    const head = table.tHead || table.createTHead();
    head.replaceChildren(el('tr', {}, columns.map(([, title]) => el('th', { scope: 'col', text: title }))));
    const body = table.tBodies[0] || table.createTBody();
    body.replaceChildren(...rows.map((r) => el('tr', {}, columns.map(([key]) => el('td', { text: text(r[key]) })))));
  }

  const can = (perm) => !!(state.me && state.me.permissions.includes(perm));

  // --- log in and out -------------------------------------------------------------------------

  async function login(token) {
    state.token = token;
    const me = await api('GET', '/api/me');
    state.me = me;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#token').value = '';
    const scope = me.scope && !me.scope.all
      ? 'queues: ' + (me.scope.queues.join(', ') || 'none') + '; teams: ' + (me.scope.teams.join(', ') || 'none')
      : 'every recording';
    const who = $('#whoami');
    who.textContent = me.user + ' (' + me.role + ')';
    who.title = 'permissions: ' + me.permissions.join(', ') + '; scope: ' + scope;
    $('#logout').hidden = false;
    $('#login-section').hidden = true;
    $('#search-section').hidden = !can('search');
    $('#search-none').hidden = can('search');
    $('#audit').hidden = !can('audit.read');
    if (can('search')) {
      $('#search-agent').focus();
      // The newest recordings in scope at once, rather than an empty table.
      search(false).catch(fail);
    }
    if (can('audit.read')) loadAudit(false).catch(fail);
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.me = null;
    state.recording = null;
    state.selection += 1;
    stopPlayer();
    $('#whoami').textContent = '';
    $('#whoami').title = '';
    $('#logout').hidden = true;
    for (const s of ['#search-section', '#search-none', '#detail', '#audit']) $(s).hidden = true;
    $('#search-form').reset();
    $('#results').tBodies[0].replaceChildren();
    $('#results-note').textContent = '';
    $('#more').hidden = true;
    $('#audit-entries').tBodies[0].replaceChildren();
    $('#chain-result').hidden = true;
    $('#login-section').hidden = false;
    $('#token').focus();
  }

  // --- search ---------------------------------------------------------------------------------

  // A date is its midnight (UTC) to the catalog; "to" is exclusive there and inclusive here.
  function nextDay(date) {
    const d = new Date(date + 'T00:00:00Z');
    d.setUTCDate(d.getUTCDate() + 1);
    return d.toISOString().slice(0, 10);
  }

  function searchQuery() {
    const q = new URLSearchParams();
    const fields = [
      ['call_id', '#search-call-id'], ['agent', '#search-agent'], ['queue', '#search-queue'],
      ['caller', '#search-caller'], ['called', '#search-called'], ['direction', '#search-direction'],
      ['from', '#search-from'],
    ];
    for (const [name, sel] of fields) {
      const v = $(sel).value.trim();
      if (v) q.set(name, v);
    }
    const to = $('#search-to').value;
    if (to) q.set('to', nextDay(to));
    for (const pair of $('#search-meta').value.trim().split(/\s+/).filter(Boolean)) {
      const at = pair.indexOf('=');
      if (at < 1) throw new Error('Metadata filter "' + pair + '": write KEY=VALUE, e.g. team=south.');
      const key = 'meta.' + pair.slice(0, at);
      // A second value for a key would silently replace the first: refused, as the API does.
      if (q.has(key)) throw new Error('Metadata filter "' + pair.slice(0, at) + '" is given twice: give each key once.');
      q.set(key, pair.slice(at + 1));
    }
    q.set('limit', '50');
    return q;
  }

  async function search(more) {
    clearError();
    if (!more) {
      state.query = searchQuery();
      state.nextCursor = null;
    }
    const q = new URLSearchParams(state.query);
    if (more && state.nextCursor) q.set('cursor', state.nextCursor);
    const mine = ++state.searches;
    const page = await api('GET', '/api/recordings?' + q.toString());
    if (mine !== state.searches || !state.me) return;
    const body = $('#results').tBodies[0];
    if (!more) body.replaceChildren();
    for (const r of page.recordings) body.append(resultRow(r));
    state.nextCursor = page.next_cursor || null;
    $('#more').hidden = !state.nextCursor;
    const n = body.rows.length;
    $('#results-note').textContent = n === 0
      ? 'No recordings match.'
      : n + ' recording' + (n === 1 ? '' : 's') + (state.nextCursor ? ' so far: "More" shows the next page.' : '.')
        + (can('read') ? ' Select one to see it.' : '');
  }

  function resultRow(r) {
    const meta = r.metadata || {};
    const cells = [
      r.started_at, r.call_id, meta.agent ?? meta.agent_id, meta.queue,
      clock((r.duration_ms || 0) / 1000), r.state || r.end_reason, r.format, r.stored ? 'yes' : 'not yet',
    ];
    const tr = el('tr', { dataset: { id: r.recording_id } }, cells.map((c) => el('td', { text: text(c) })));
    if (can('read')) {
      tr.tabIndex = 0;
      tr.classList.add('selectable');
      tr.setAttribute('aria-label', 'Recording ' + r.recording_id + ', call ' + (r.call_id || ''));
    }
    return tr;
  }

  function selectRow(tr) {
    if (!tr || !tr.dataset.id || !can('read')) return;
    for (const row of $('#results').tBodies[0].rows) {
      row.classList.toggle('selected', row === tr);
      row.removeAttribute('aria-current');
    }
    tr.setAttribute('aria-current', 'true');
    openRecording(tr.dataset.id).catch(fail);
  }

  // --- one recording --------------------------------------------------------------------------

  async function openRecording(id) {
    clearError();
    const mine = ++state.selection;
    const s = await api('GET', '/api/recordings/' + encodeURIComponent(id));
    if (mine !== state.selection) return;
    state.recording = s;
    renderDetail(s);
    $('#detail').hidden = false;
    const playable = can('play') && can('link');
    $('#player-section').hidden = !playable;
    $('#no-play').hidden = playable;
    $('#verify').hidden = !can('verify');
    $('#verify-result').hidden = true;
    stopPlayer();
    renderLegChoice(s);
    renderTimeline(s);
    if (playable) await loadAudio(mine);
  }

  function renderDetail(s) {
    $('#detail-title').textContent = 'Recording ' + s.recording_id;
    fillDl($('#summary'), [
      ['recording id', s.recording_id], ['call id', s.call_id], ['started (UTC)', s.started_at],
      ['duration', clock((s.duration_ms || 0) / 1000)], ['state', s.state], ['end reason', s.end_reason],
      ['format', s.format], ['sample rate', s.sample_rate ? s.sample_rate + ' Hz' : ''],
      ['channels', s.channels], ['layout', s.layout], ['encrypted', s.encrypted],
      ['audio files', (s.audio || []).map((a) => a.name + (a.sealed ? ' (sealed)' : '')).join(', ')],
    ].filter(([, v]) => v !== undefined && v !== null && v !== ''));
    fillDl($('#metadata'), Object.entries(s.metadata || {}));
    fillTable($('#legs'), [
      ['label', 'Leg'], ['channel', 'Ch'], ['packets', 'Packets'], ['lost', 'Lost'], ['late', 'Late'],
      ['duplicates', 'Dup'], ['reordered', 'Reord.'], ['concealed', 'Concealed'],
      ['ssrc_changes', 'SSRC chg'], ['discontinuities', 'Discont.'], ['decode_errors', 'Decode err'],
      ['kernel_drops', 'Kernel drops'], ['silent', 'Silent'],
    ], s.legs || []);
    const seals = s.seals || [];
    const keys = [...new Set(seals.flatMap((x) => Object.keys(x)))];
    fillTable($('#seals'), keys.map((k) => [k, k.replace(/_/g, ' ')]), seals);
    const events = $('#events');
    events.replaceChildren();
    for (const m of markersOf(s)) {
      const b = el('button', { type: 'button', class: 'link', text: clock(m.at / 1000) });
      b.addEventListener('click', () => seekTo(m.at / 1000, true));
      events.append(el('li', {}, [b, ' ' + m.label]));
    }
    if (!events.children.length) events.append(el('li', { class: 'note', text: 'none' }));
  }

  // DTMF events of every leg and the pauses, in time order.
  function markersOf(s) {
    const out = [];
    (s.legs || []).forEach((leg, i) => {
      for (const d of leg.dtmf || []) {
        const digit = d.digit !== undefined ? 'digit ' + d.digit : 'digit not kept';
        out.push({
          kind: 'dtmf', leg: i, at: d.offset_ms, end: d.offset_ms + (d.duration_ms || 0),
          label: 'DTMF on ' + leg.label + ': ' + digit + ' (' + (d.duration_ms || 0) + ' ms)',
          digit: d.digit,
        });
      }
    });
    for (const p of s.pauses || []) {
      const end = p.end_ms ?? s.duration_ms;
      out.push({
        kind: 'pause', at: p.start_ms, end,
        label: 'paused (' + (p.mode || 'mask') + ') until ' + clock(end / 1000),
      });
    }
    return out.sort((a, b) => a.at - b.at);
  }

  // --- the player -----------------------------------------------------------------------------

  function timelineMs() {
    const s = state.recording;
    if (s && s.duration_ms > 0) return s.duration_ms;
    const d = $('#player').duration;
    return Number.isFinite(d) ? d * 1000 : 0;
  }

  function renderTimeline(s) {
    const total = timelineMs();
    const box = $('#markers');
    box.replaceChildren();
    const seek = $('#seek');
    seek.max = String(total);
    seek.value = '0';
    const pct = (ms) => (total > 0 ? Math.min(100, Math.max(0, (ms / total) * 100)) : 0) + '%';
    const legs = new Set();
    for (const m of markersOf(s)) {
      const b = el('button', { type: 'button', title: m.label + ' at ' + clock(m.at / 1000) });
      b.setAttribute('aria-label', m.label + ' at ' + clock(m.at / 1000));
      // Positions are set through the CSSOM, which the page's policy allows (style attributes
      // in markup it does not).
      b.style.left = pct(m.at);
      if (m.kind === 'pause') {
        b.className = 'marker pause';
        b.style.width = 'calc(' + pct(m.end) + ' - ' + pct(m.at) + ')';
      } else {
        b.className = 'marker dtmf leg-' + (m.leg % 4);
        b.textContent = m.digit ?? '';
        legs.add(m.leg);
      }
      b.dataset.at = String(m.at);
      b.addEventListener('click', () => seekTo(m.at / 1000, true));
      box.append(b);
    }
    const legend = $('#legend');
    legend.replaceChildren();
    for (const i of [...legs].sort()) {
      legend.append(el('span', { class: 'swatch leg-' + (i % 4), text: 'DTMF ' + s.legs[i].label }));
    }
    if ((s.pauses || []).length) legend.append(el('span', { class: 'swatch pause', text: 'paused' }));
    showTime();
  }

  // A separate-layout recording has an audio file per leg: a choice of which one plays, named
  // by the legs' labels.
  function renderLegChoice(s) {
    const files = s.audio || [];
    const select = $('#leg');
    select.replaceChildren();
    state.leg = 0;
    $('#leg-choice').hidden = files.length < 2;
    if (files.length < 2) return;
    files.forEach((f, i) => {
      const n = f.leg ?? i;
      const leg = (s.legs || [])[n];
      select.append(el('option', { value: String(n), text: leg && leg.label ? leg.label : 'leg ' + n }));
    });
    state.leg = Number(select.value);
  }

  async function newLink(id) {
    // The server's default lifetime: 15 minutes, or less where [api] link_max_ttl_s says so.
    const r = await api('POST', '/api/recordings/' + encodeURIComponent(id) + '/link', {});
    state.linkExpires = Date.parse(r.expires_at) || Date.now() + r.ttl_s * 1000;
    // G.711 WAV is served as 16-bit PCM WAV, which every browser plays; other formats as stored.
    let url = r.url + (r.url.includes('?') ? '&' : '?') + 'format=browser';
    if ((state.recording.audio || []).length > 1) url += '&leg=' + state.leg;
    return url;
  }

  async function loadAudio(mine) {
    const id = state.recording.recording_id;
    const url = await newLink(id);
    if (mine !== state.selection) return;
    state.linkRetried = false;
    const audio = $('#player');
    audio.src = url;
    audio.load();
  }

  const linkStale = () => Date.now() > state.linkExpires - 10000;

  // A link that ran out is replaced, keeping the position (and playing on when it played).
  async function renewLink(resume) {
    const s = state.recording;
    if (!s) return;
    const mine = state.selection;
    const audio = $('#player');
    const at = audio.currentTime;
    const url = await newLink(s.recording_id);
    if (mine !== state.selection) return;
    audio.src = url;
    audio.addEventListener('loadedmetadata', () => {
      audio.currentTime = at;
      if (resume) audio.play().catch(playFailed);
    }, { once: true });
    audio.load();
  }

  function stopPlayer() {
    const audio = $('#player');
    audio.pause();
    audio.removeAttribute('src');
    audio.load();
    state.linkExpires = 0;
    $('#seek').value = '0';
    $('#play').textContent = 'Play';
    showTime();
  }

  function playFailed(e) {
    if (e && e.name === 'AbortError') return;
    showError('Cannot play: ' + (e && e.message ? e.message : e));
  }

  async function togglePlay() {
    const audio = $('#player');
    if (!audio.paused && !audio.ended) {
      audio.pause();
      return;
    }
    if (linkStale()) {
      await renewLink(true);
      return;
    }
    await audio.play();
  }

  function seekTo(seconds, play) {
    const audio = $('#player');
    if ($('#player-section').hidden) return;
    const max = timelineMs() / 1000;
    audio.currentTime = Math.max(0, Math.min(seconds, max));
    $('#seek').value = String(audio.currentTime * 1000);
    showTime();
    if (play && audio.paused) audio.play().catch(playFailed);
  }

  function showTime() {
    const audio = $('#player');
    const total = timelineMs() / 1000;
    const now = state.dragging ? Number($('#seek').value) / 1000 : audio.currentTime;
    $('#time').textContent = clock(now) + ' / ' + clock(total);
    $('#seek').setAttribute('aria-valuetext', clock(now) + ' of ' + clock(total));
  }

  function wirePlayer() {
    const audio = $('#player');
    const seek = $('#seek');
    audio.addEventListener('timeupdate', () => {
      if (!state.dragging) seek.value = String(audio.currentTime * 1000);
      showTime();
    });
    audio.addEventListener('loadedmetadata', () => {
      if (!(state.recording && state.recording.duration_ms > 0)) seek.max = String(timelineMs());
      showTime();
    });
    audio.addEventListener('play', () => { $('#play').textContent = 'Pause'; });
    audio.addEventListener('pause', () => { $('#play').textContent = audio.ended ? 'Play again' : 'Play'; });
    audio.addEventListener('ended', () => { $('#play').textContent = 'Play again'; });
    audio.addEventListener('error', () => {
      if (!audio.getAttribute('src') || !state.recording) return;
      if (linkStale() && !state.linkRetried) {
        state.linkRetried = true;
        renewLink(false).catch(fail);
        return;
      }
      const codes = { 1: 'aborted', 2: 'a network error', 3: 'the audio could not be decoded', 4: 'the format is not supported by this browser' };
      const why = audio.error ? codes[audio.error.code] || 'error ' + audio.error.code : 'unknown';
      showError('Playback failed: ' + why + '. Select the recording again to retry.');
    });
    // Another leg plays from the same position, playing on if it played.
    $('#leg').addEventListener('change', () => {
      state.leg = Number($('#leg').value);
      renewLink(!audio.paused && !audio.ended).catch(fail);
    });
    seek.addEventListener('pointerdown', () => { state.dragging = true; });
    const release = () => { state.dragging = false; };
    seek.addEventListener('pointerup', release);
    seek.addEventListener('pointercancel', release);
    seek.addEventListener('input', () => {
      audio.currentTime = Number(seek.value) / 1000;
      showTime();
    });
    seek.addEventListener('change', () => {
      state.dragging = false;
      audio.currentTime = Number(seek.value) / 1000;
      showTime();
    });
    $('#play').addEventListener('click', () => togglePlay().catch(playFailed));
  }

  // --- verification ---------------------------------------------------------------------------

  async function verifyRecording() {
    clearError();
    const s = state.recording;
    if (!s) return;
    const out = $('#verify-result');
    out.hidden = false;
    out.textContent = 'Verifying…';
    const r = await api('GET', '/api/recordings/' + encodeURIComponent(s.recording_id) + '/verify');
    const lines = [(r.ok ? 'OK: ' : 'FAILED: ') + r.message];
    for (const f of r.files || []) {
      lines.push((f.verified ? '  ok      ' : '  FAILED  ') + f.name + (f.error ? ': ' + f.error : ''));
    }
    out.textContent = lines.join('\n');
    out.classList.toggle('bad', !r.ok);
  }

  // --- audit ----------------------------------------------------------------------------------

  async function loadAudit(more) {
    const q = new URLSearchParams({ limit: '100' });
    if (more && state.auditAfter !== null) q.set('after', String(state.auditAfter));
    const page = await api('GET', '/api/audit?' + q.toString());
    const body = $('#audit-entries').tBodies[0];
    if (!more) body.replaceChildren();
    for (const e of page.entries) {
      const row = el('tr', { dataset: { seq: String(e.seq) } },
        [e.seq, e.at, e.actor, e.action, e.target, e.source, e.result].map((c) => el('td', { text: text(c) })));
      if (e.result !== 'ok') row.classList.add('refused');
      if (e.detail && Object.keys(e.detail).length) row.title = JSON.stringify(e.detail);
      body.append(row);
    }
    state.auditAfter = page.next_after ?? null;
    $('#audit-more').hidden = state.auditAfter === null;
  }

  async function verifyChain() {
    clearError();
    const out = $('#chain-result');
    out.hidden = false;
    out.textContent = 'Verifying…';
    const r = await api('GET', '/api/audit/verify');
    const lines = [r.ok
      ? 'The chain is intact: ' + r.entries + ' entries (' + text(r.first_seq) + '–' + text(r.last_seq) + '), '
        + r.anchors_checked + ' anchor(s) checked.'
      : 'The chain is broken:'];
    for (const p of r.problems || []) lines.push('  seq ' + text(p.seq) + ' ' + p.kind + ': ' + p.message);
    out.textContent = lines.join('\n');
    out.classList.toggle('bad', !r.ok);
  }

  // --- wiring ---------------------------------------------------------------------------------

  function start() {
    $('#login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      clearError();
      const token = $('#token').value.trim();
      if (!token) {
        showError('Paste a token first.');
        return;
      }
      login(token).catch(fail);
    });
    $('#logout').addEventListener('click', () => {
      clearError();
      logout();
    });
    $('#search-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      search(false).catch(fail);
    });
    $('#more').addEventListener('click', () => search(true).catch(fail));
    const results = $('#results').tBodies[0];
    results.addEventListener('click', (ev) => selectRow(ev.target.closest('tr[data-id]')));
    results.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        selectRow(ev.target.closest('tr[data-id]'));
      }
    });
    $('#verify').addEventListener('click', () => verifyRecording().catch(fail));
    $('#audit-refresh').addEventListener('click', () => loadAudit(false).catch(fail));
    $('#audit-more').addEventListener('click', () => loadAudit(true).catch(fail));
    $('#verify-chain').addEventListener('click', () => verifyChain().catch(fail));
    wirePlayer();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      login(saved).catch(fail);
    } else {
      $('#token').focus();
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
