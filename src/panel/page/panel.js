// The gc-assist prompt panel: signs the agent in (Genesys implicit grant, exchanged for a
// gc-assist session), reads the conversation's prompts over SSE with fetch() (so the
// session travels in a header, no cookie), reconnects with Last-Event-ID, draws prompts
// (as text, never HTML), and reports engagements. The service is the authority on slots;
// the page applies the same limits to what it draws.
'use strict';
(function () {
  var UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  var params, conv, lang;
  function readParams() {
    params = new URLSearchParams(location.search);
    conv = (params.get('conversationId') || params.get('gcConversationId') || params.get('pcConversationId') || '').trim();
    lang = params.get('lang') || params.get('gcLangTag') || '';
  }
  readParams();
  var el = function (id) { return document.getElementById(id); };
  var store = (function () {
    try { var s = window.sessionStorage; s.setItem('gca.t', '1'); s.removeItem('gca.t'); return s; } catch (e) { return null; }
  })();
  var mem = {};
  function get(k) { return store ? store.getItem(k) : (k in mem ? mem[k] : null); }
  function put(k, v) { if (store) { store.setItem(k, v); } else { mem[k] = v; } }
  function drop(k) { if (store) { store.removeItem(k); } else { delete mem[k]; } }

  var S = {
    session: null, sessionEnds: 0, renewTimer: 0, agentToken: null, cfg: null,
    lastId: null, skew: 0, abort: null, backoff: 500, stopped: false,
    shown: new Map(), // injectionId -> {li, data, tick, viewTimer, viewed}
    pending: [],      // prompts waiting for a slot on screen
    done: new Set(),  // injections that left the screen: a replay must not bring them back
    drawn: {}         // injectionId -> epoch ms when drawn (read by the tests and the bench)
  };
  window.gcAssistPanel = S;

  function setConn(state, text) { var c = el('conn'); c.dataset.state = state; el('conn-text').textContent = text; }
  function notice(text) { var n = el('notice'); n.textContent = text; n.hidden = !text; }
  function announce(text) { el('announce').textContent = text; }
  function now() { return Date.now() + S.skew; }
  function fatal(text) { S.stopped = true; if (S.abort) { S.abort.abort(); } setConn('error', 'Stopped'); notice(text); }

  // ---- sign-in -------------------------------------------------------------------------

  function fromFragment() {
    if (!location.hash || location.hash.length < 2) { return; }
    var f = new URLSearchParams(location.hash.slice(1));
    var back = get('gca.return');
    if (f.get('error')) {
      history.replaceState(null, '', back || location.pathname + location.search);
      fatal('Sign-in failed: ' + (f.get('error_description') || f.get('error')));
      return;
    }
    var token = f.get('access_token');
    if (!token) { return; }
    if (f.get('state') !== get('gca.state')) {
      history.replaceState(null, '', back || location.pathname + location.search);
      fatal('Sign-in answer did not match this panel; reload the interaction to try again.');
      return;
    }
    var ttl = parseInt(f.get('expires_in') || '0', 10) || 3600;
    put('gca.agent', JSON.stringify({ token: token, ends: Date.now() + ttl * 1000 }));
    drop('gca.state');
    history.replaceState(null, '', back || location.pathname);
    // Back from the login host: the panel's own query (conversationId, ...) is restored.
    readParams();
  }

  function agentToken() {
    try {
      var a = JSON.parse(get('gca.agent') || 'null');
      if (a && a.token && a.ends > Date.now() + 5000) { return a.token; }
    } catch (e) { /* a damaged entry is the same as none */ }
    return null;
  }

  function redirectToLogin() {
    var tries = parseInt(get('gca.tries') || '0', 10);
    if (tries >= 2) { drop('gca.tries'); fatal('Could not sign you in. Reload the interaction to try again.'); return; }
    put('gca.tries', String(tries + 1));
    var rnd = new Uint8Array(16); crypto.getRandomValues(rnd);
    var state = Array.prototype.map.call(rnd, function (b) { return ('0' + b.toString(16)).slice(-2); }).join('');
    put('gca.state', state);
    put('gca.return', location.pathname + location.search);
    var u = new URL(S.cfg.authorizeUrl);
    u.searchParams.set('response_type', 'token');
    u.searchParams.set('client_id', S.cfg.oauthClientId);
    u.searchParams.set('redirect_uri', location.origin + location.pathname);
    u.searchParams.set('state', state);
    setConn('connecting', 'Signing in…');
    location.assign(u.toString());
  }

  function exchange() {
    S.agentToken = agentToken();
    if (!S.agentToken) { redirectToLogin(); return Promise.reject(new Error('signing in')); }
    return fetch('/panel/session', {
      method: 'POST',
      headers: { 'Authorization': 'Bearer ' + S.agentToken, 'Content-Type': 'application/json' },
      body: JSON.stringify({ conversationId: conv })
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (b) {
        if (r.status === 201) {
          drop('gca.tries');
          S.session = b.session;
          S.sessionEnds = Date.now() + b.expiresInSecs * 1000;
          if (b.userName) { el('agent').textContent = b.userName; }
          clearTimeout(S.renewTimer);
          // Renew a minute before the end, while the agent's Genesys token is still good.
          S.renewTimer = setTimeout(function () { exchange().catch(function () {}); }, Math.max(10, b.expiresInSecs - 60) * 1000);
          return;
        }
        if (r.status === 401) { drop('gca.agent'); redirectToLogin(); throw new Error('signing in'); }
        if (r.status === 403) { fatal(b.message || 'You are not the agent on this conversation.'); throw new Error('forbidden'); }
        throw new Error(b.message || ('sign-in answered ' + r.status));
      });
    });
  }

  // ---- the stream ----------------------------------------------------------------------

  function connect() {
    if (S.stopped) { return; }
    var headers = { 'Authorization': 'Bearer ' + S.session, 'Accept': 'text/event-stream' };
    if (S.lastId !== null) { headers['Last-Event-ID'] = String(S.lastId); }
    S.abort = new AbortController();
    setConn('connecting', 'Connecting…');
    fetch('/panel/conversations/' + encodeURIComponent(conv) + '/stream', { headers: headers, signal: S.abort.signal, cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) { return exchange().then(function () { S.backoff = 500; }); }
        if (r.status === 403) { return r.json().then(function (b) { fatal(b.message); }); }
        if (!r.ok || !r.body) { throw new Error('stream answered ' + r.status); }
        setConn('live', 'Live');
        S.backoff = 500;
        return read(r.body.getReader());
      })
      .catch(function () { /* reconnect below */ })
      .then(function () {
        if (S.stopped) { return; }
        setConn('connecting', 'Reconnecting…');
        var wait = S.backoff; S.backoff = Math.min(S.backoff * 2, 10000);
        setTimeout(function () {
          if (S.session && Date.now() > S.sessionEnds - 5000) { exchange().then(connect, function () { setTimeout(connect, 2000); }); } else { connect(); }
        }, wait);
      });
  }

  function read(reader) {
    var dec = new TextDecoder(); var buf = '';
    function pump() {
      return reader.read().then(function (x) {
        if (x.done) { return; }
        buf += dec.decode(x.value, { stream: true }).replace(/\r\n?/g, '\n');
        var cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) { frame(buf.slice(0, cut)); buf = buf.slice(cut + 2); }
        return pump();
      });
    }
    return pump();
  }

  function frame(text) {
    var ev = 'message', data = [], id = null;
    text.split('\n').forEach(function (line) {
      if (!line || line[0] === ':') { return; }
      var i = line.indexOf(':'); var f = i < 0 ? line : line.slice(0, i);
      var v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (f === 'event') { ev = v; } else if (f === 'data') { data.push(v); } else if (f === 'id') { id = v; }
    });
    if (id !== null && /^\d+$/.test(id)) { S.lastId = id; }
    var d; try { d = JSON.parse(data.join('\n')); } catch (e) { return; }
    if (ev === 'hello' && d.serverTime) { var t = Date.parse(d.serverTime); if (!isNaN(t)) { S.skew = t - Date.now(); } }
    else if (ev === 'prompt') { admit(d); }
    else if (ev === 'remove') { leave(d.injectionId); }
  }

  // ---- drawing -------------------------------------------------------------------------

  function limit(d) {
    var m = d.maxConcurrentPrompts || 3;
    S.shown.forEach(function (p) { m = Math.min(m, p.data.maxConcurrentPrompts || 3); });
    return m;
  }

  function admit(d) {
    var id = d.injectionId;
    if (!id || S.shown.has(id) || S.done.has(id) || S.pending.some(function (p) { return p.injectionId === id; })) { return; }
    if (Date.parse(d.expiresAt) <= now()) { S.done.add(id); return; }
    if (S.shown.size >= limit(d)) { S.pending.push(d); return; }
    draw(d);
  }

  function safeUrl(raw) {
    if (!raw) { return null; }
    try { var u = new URL(raw); return (u.protocol === 'https:' || u.protocol === 'http:') ? u.href : null; } catch (e) { return null; }
  }

  function draw(d) {
    var id = d.injectionId;
    var li = el('prompt-tpl').content.firstElementChild.cloneNode(true);
    var pr = String(d.priority || 'normal');
    li.dataset.priority = pr;
    li.dataset.injectionId = id;
    var titleId = 'p-' + id;
    li.querySelector('.prompt-title').textContent = d.title || '';
    li.querySelector('.prompt-title').id = titleId;
    li.setAttribute('aria-labelledby', titleId);
    li.querySelector('.badge').textContent = pr;
    li.querySelector('.prompt-body').textContent = d.body || '';
    var title = d.title || 'prompt';
    li.querySelector('.dismiss').setAttribute('aria-label', 'Dismiss: ' + title);
    li.querySelector('.rate').setAttribute('aria-label', 'Was this helpful?');
    li.querySelector('.rate-up').setAttribute('aria-label', 'Helpful');
    li.querySelector('.rate-down').setAttribute('aria-label', 'Not helpful');
    var link = safeUrl(d.url); var a = li.querySelector('.open');
    if (link) {
      a.href = link; a.hidden = false; a.setAttribute('aria-label', 'Open: ' + title + ' (new tab)');
      a.addEventListener('click', function () { engage(id, { type: 'clicked' }); leave(id); });
    }
    li.querySelector('.dismiss').addEventListener('click', function () { engage(id, { type: 'dismissed' }); leave(id); });
    li.querySelector('.rate-up').addEventListener('click', function () { rate(li, id, 1); });
    li.querySelector('.rate-down').addEventListener('click', function () { rate(li, id, -1); });
    li.addEventListener('keydown', function (e) { if (e.key === 'Escape') { engage(id, { type: 'dismissed' }); leave(id); } });
    var p = { li: li, data: d, tick: 0, viewTimer: 0, viewed: false };
    S.shown.set(id, p);
    el('prompts').appendChild(li);
    el('empty').hidden = true;
    S.drawn[id] = performance.timeOrigin + performance.now();
    li.dataset.drawnAt = String(Math.round(S.drawn[id]));
    announce('New prompt: ' + title);
    countdown(p);
    p.tick = setInterval(function () { countdown(p); }, 250);
    watchView(p);
  }

  function countdown(p) {
    var ends = Date.parse(p.data.expiresAt); var total = p.data.autoDismissMs || (ends - Date.parse(p.data.shownAt)) || 1;
    var left = ends - now();
    if (left <= 0) { leave(p.data.injectionId); return; }
    var secs = Math.ceil(left / 1000);
    var label = p.li.querySelector('.left');
    label.textContent = secs + ' s';
    label.setAttribute('aria-label', 'Closes in ' + secs + ' seconds');
    p.li.querySelector('.fill').style.transform = 'scaleX(' + Math.max(0, Math.min(1, left / total)).toFixed(3) + ')';
  }

  // Viewed: at least half the prompt on screen for a second while the tab is visible.
  var observer = 'IntersectionObserver' in window ? new IntersectionObserver(function (entries) {
    entries.forEach(function (en) {
      var p = S.shown.get(en.target.dataset.injectionId);
      if (!p || p.viewed) { return; }
      p.onScreen = en.isIntersecting;
      armView(p);
    });
  }, { threshold: 0.5 }) : null;

  function armView(p) {
    var want = p.onScreen && document.visibilityState === 'visible' && !p.viewed;
    if (want && !p.viewTimer) {
      p.viewTimer = setTimeout(function () { p.viewTimer = 0; p.viewed = true; engage(p.data.injectionId, { type: 'viewed' }); }, 1000);
    } else if (!want && p.viewTimer) { clearTimeout(p.viewTimer); p.viewTimer = 0; }
  }

  function watchView(p) { if (observer) { observer.observe(p.li); } else { p.onScreen = true; armView(p); } }
  document.addEventListener('visibilitychange', function () { S.shown.forEach(armView); });

  function leave(id) {
    S.done.add(id);
    S.pending = S.pending.filter(function (d) { return d.injectionId !== id; });
    var p = S.shown.get(id);
    if (!p) { return; }
    S.shown.delete(id);
    clearInterval(p.tick); clearTimeout(p.viewTimer);
    if (observer) { observer.unobserve(p.li); }
    var hadFocus = p.li.contains(document.activeElement);
    var next = p.li.nextElementSibling || p.li.previousElementSibling;
    p.li.remove();
    if (hadFocus && next) { next.focus(); }
    while (S.pending.length && S.shown.size < limit(S.pending[0])) {
      var d = S.pending.shift();
      if (Date.parse(d.expiresAt) > now()) { draw(d); } else { S.done.add(d.injectionId); }
    }
    el('empty').hidden = S.shown.size > 0;
  }

  function rate(li, id, r) {
    var up = li.querySelector('.rate-up'), down = li.querySelector('.rate-down');
    up.setAttribute('aria-pressed', String(r > 0)); down.setAttribute('aria-pressed', String(r < 0));
    up.disabled = true; down.disabled = true;
    engage(id, { type: 'feedback', rating: r });
    announce('Thanks for the feedback');
  }

  // ---- engagements ---------------------------------------------------------------------

  function engage(id, body, attempt) {
    attempt = attempt || 0;
    return fetch('/panel/injections/' + encodeURIComponent(id) + '/engagements', {
      method: 'POST',
      headers: { 'Authorization': 'Bearer ' + S.session, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      keepalive: true
    }).then(function (r) {
      if (r.status === 401 && attempt < 2) { return exchange().then(function () { return engage(id, body, attempt + 1); }); }
      if (r.status >= 500 && attempt < 3) { return later(engage, id, body, attempt); }
    }, function () { if (attempt < 3) { return later(engage, id, body, attempt); } });
  }

  function later(f, id, body, attempt) {
    return new Promise(function (res) { setTimeout(res, 500 * (attempt + 1)); }).then(function () { return f(id, body, attempt + 1); });
  }

  // ---- start ---------------------------------------------------------------------------

  function start() {
    fromFragment();
    if (/^[a-z]{2,3}(-[a-z0-9]{2,8})*$/i.test(lang)) { document.documentElement.lang = lang; }
    if (S.stopped) { return; }
    if (!UUID.test(conv)) { fatal('Open this panel from an interaction: its URL needs conversationId={{gcConversationId}}.'); return; }
    var q = params.get('gcHostOrigin') ? '?gcHostOrigin=' + encodeURIComponent(params.get('gcHostOrigin')) : '';
    fetch('/panel/config' + q).then(function (r) { return r.json().then(function (b) { return { r: r, b: b }; }); })
      .then(function (x) {
        if (!x.r.ok) { fatal(x.b.message || 'The panel is not set up for this environment.'); return; }
        S.cfg = x.b;
        if (!S.cfg.signIn) { fatal('Agent sign-in is not configured on this gc-assist service (panel.oauth_client_id).'); return; }
        exchange().then(connect, function (e) {
          if (!S.stopped && e.message !== 'signing in' && e.message !== 'forbidden') { setConn('error', 'Retrying…'); setTimeout(start, 3000); }
        });
      }, function () { setConn('error', 'Offline'); setTimeout(start, 3000); });
  }

  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', start); } else { start(); }
})();
