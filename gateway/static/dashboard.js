// The Storeface dashboard: every number on the page comes from the public /v1 API, called
// with the key this tab holds in session storage (never a cookie, never an address).
(function () {
  'use strict';

  var KEY = 'storeface.key';
  var DAY_MS = 86400000;
  var state = { me: null, store: null, charts: {}, auditNext: null, firstChart: false };

  function $(id) { return document.getElementById(id); }

  function today() { return new Date().toISOString().slice(0, 10); }

  function shiftDay(day, n) {
    return new Date(Date.parse(day + 'T00:00:00Z') + n * DAY_MS).toISOString().slice(0, 10);
  }

  function fmt(n) { return Number(n).toLocaleString('en'); }

  function ApiError(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  async function api(method, path, body) {
    var opts = { method: method, headers: { 'X-API-Key': sessionStorage.getItem(KEY) || '' },
      cache: 'no-store' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    var r = await fetch(path, opts);
    var data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      var err = (data && data.error) || {};
      throw new ApiError(r.status, err.code || 'http_' + r.status, err.message || r.statusText);
    }
    return data;
  }

  function say(text, isError) {
    var s = $('status');
    s.textContent = text;
    s.className = isError ? 'error' : '';
  }

  function fail(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut('the key was refused (' + err.code + ')');
      return;
    }
    say(err instanceof ApiError ? err.code + ': ' + err.message : String(err), true);
  }

  function cell(row, text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function fill(tbody, rows, build) {
    tbody.replaceChildren();
    rows.forEach(function (item) {
      var tr = document.createElement('tr');
      build(tr, item);
      tbody.appendChild(tr);
    });
  }

  // --- sign in / out -------------------------------------------------------------------

  function signOut(why) {
    sessionStorage.removeItem(KEY);
    Object.keys(state.charts).forEach(function (k) { state.charts[k].destroy(); });
    state.charts = {};
    state.me = null;
    $('app').hidden = true;
    $('sign-out').hidden = true;
    $('who').textContent = '';
    $('sign-in').hidden = false;
    $('sign-in-error').textContent = why || '';
    $('key-input').value = '';
    document.documentElement.dataset.loaded = 'signed-out';
  }

  async function signIn() {
    try {
      state.me = await api('GET', '/v1/me');
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        signOut('That key was refused: check it and try again.');
        return;
      }
      throw err;
    }
    var me = state.me;
    $('sign-in').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    $('who').textContent = 'signed in as ' + me.key_id + ' (' + me.role + ', ' +
      me.stores.length + (me.stores.length === 1 ? ' store)' : ' stores)');
    var admin = me.role === 'admin';
    $('admin').hidden = !admin;
    document.querySelectorAll('.admin-only').forEach(function (el) { el.hidden = !admin; });
    var select = $('store-select');
    select.replaceChildren();
    me.stores.forEach(function (sid) {
      var opt = document.createElement('option');
      opt.value = sid;
      opt.textContent = sid;
      select.appendChild(opt);
    });
    var wanted = new URLSearchParams(location.hash.slice(1)).get('store');
    state.store = me.stores.indexOf(wanted) >= 0 ? wanted : me.stores[0] || null;
    select.value = state.store || '';
    $('to').value = today();
    $('from').value = shiftDay(today(), -29);
    var work = [loadOverview(), loadStore()];
    if (admin) { work.push(loadAudit(null)); }
    await Promise.all(work);
    performance.mark('storeface:loaded');
    document.documentElement.dataset.loaded = 'yes';
  }

  // --- chain overview ------------------------------------------------------------------

  async function loadOverview() {
    var o = await api('GET', '/v1/stats/overview');
    $('overview-day').textContent = '(UTC day ' + o.day + ')';
    fill($('overview-table').tBodies[0], o.stores, function (tr, s) {
      tr.dataset.store = s.store_id;
      tr.classList.toggle('selected', s.store_id === state.store);
      cell(tr, s.store_id);
      cell(tr, s.region || '—');
      [s.today.pv, s.today.uv, s.last_7_days.pv, s.last_7_days.uv, s.last_30_days.pv,
        s.last_30_days.uv, s.last_30_days.new, s.last_30_days.member_visits]
        .forEach(function (n) { cell(tr, fmt(n)); });
      tr.addEventListener('click', function () { selectStore(s.store_id); });
    });
  }

  function selectStore(sid) {
    state.store = sid;
    $('store-select').value = sid;
    document.querySelectorAll('#overview-table tbody tr').forEach(function (tr) {
      tr.classList.toggle('selected', tr.dataset.store === sid);
    });
    loadStore().catch(fail);
  }

  // --- one store: charts, by-day table, health, recent visits ---------------------------

  async function loadStore() {
    if (!state.store) { return; }
    await Promise.all([loadStats(), loadHealth(), loadVisits()]);
  }

  async function loadStats() {
    var sid = state.store;
    var q = '?from=' + encodeURIComponent($('from').value) + '&to=' +
      encodeURIComponent($('to').value);
    var st = await api('GET', '/v1/stores/' + encodeURIComponent(sid) + '/stats' + q);
    if (sid !== state.store) { return; }
    $('range-uv').textContent = fmt(st.unique_visitors) + ' distinct visitors from ' +
      st.from + ' to ' + st.to;
    fill($('days-table').tBodies[0], st.days, function (tr, d) {
      tr.dataset.day = d.day;
      cell(tr, d.day);
      [['pv', d.pv], ['uv', d.uv], ['new', d.new], ['returning', d.returning],
        ['member_visits', d.member_visits]].forEach(function (c) {
        cell(tr, fmt(c[1])).dataset.col = c[0];
      });
    });
    drawCharts(st.days);
    document.documentElement.dataset.shown = sid + ' ' + st.from + ' ' + st.to;
  }

  function series(label, data, color, extra) {
    return Object.assign({ label: label, data: data, backgroundColor: color, borderColor: color },
      extra || {});
  }

  function drawCharts(days) {
    if (typeof Chart === 'undefined') {
      say('The charting library is missing from this server: run `make` there.', true);
      return;
    }
    var labels = days.map(function (d) { return d.day.slice(5); });
    var pick = function (k) { return days.map(function (d) { return d[k]; }); };
    var traffic = [
      series('Visits (PV)', pick('pv'), '#2563eb', { type: 'bar' }),
      series('Visitors (UV)', pick('uv'), '#f59e0b', { type: 'line', tension: 0.25 }),
    ];
    var mix = [
      series('New', pick('new'), '#10b981', { type: 'bar', stack: 'v' }),
      series('Returning', pick('returning'), '#6366f1', { type: 'bar', stack: 'v' }),
      series('Member visits', pick('member_visits'), '#e11d48', { type: 'line', tension: 0.25 }),
    ];
    draw('chart-traffic', labels, traffic, false);
    draw('chart-mix', labels, mix, true);
    if (!state.firstChart) {
      state.firstChart = true;
      performance.mark('storeface:first-chart');
    }
  }

  function draw(id, labels, datasets, stacked) {
    var chart = state.charts[id];
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update();
      return;
    }
    state.charts[id] = new Chart($(id), {
      data: { labels: labels, datasets: datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: 'index', intersect: false },
        scales: {
          x: { stacked: stacked },
          y: { stacked: stacked, beginAtZero: true, ticks: { precision: 0 } },
        },
      },
    });
  }

  async function loadHealth() {
    var sid = state.store;
    var h = await api('GET', '/v1/stores/' + encodeURIComponent(sid) + '/health');
    if (sid !== state.store) { return; }
    var up = h.replicas_up === null ? 'behind a proxy' : h.replicas_up + ' of ' + h.replicas;
    var rows = [
      ['Node group', h.node],
      ['Replicas up', up],
      ['Reachable', h.reachable ? 'yes' : 'no'],
      ['Faces', h.faces === null ? '—' : fmt(h.faces)],
      ['Vectors', h.vectors === null ? '—' : fmt(h.vectors)],
      ['Index', h.index || '—'],
      ['Embedder', h.embedder],
      ['Threshold', h.threshold === null ? '—' : h.threshold],
      ['Visitor retention', h.visitor_retention_days === null ? 'kept' :
        h.visitor_retention_days + ' days unseen'],
    ];
    var dl = $('health-list');
    dl.replaceChildren();
    rows.forEach(function (r) {
      var dt = document.createElement('dt');
      var dd = document.createElement('dd');
      dt.textContent = r[0];
      dd.textContent = r[1];
      if (r[0] === 'Reachable') { dd.className = h.reachable ? 'ok' : 'error'; }
      dl.append(dt, dd);
    });
  }

  async function loadVisits() {
    var sid = state.store;
    var v = await api('GET', '/v1/stores/' + encodeURIComponent(sid) + '/visits?limit=25');
    if (sid !== state.store) { return; }
    var admin = state.me && state.me.role === 'admin';
    fill($('visits-table').tBodies[0], v.visits, function (tr, x) {
      tr.dataset.face = x.face_id;
      cell(tr, x.time.replace('T', ' ').replace('+00:00', ''));
      cell(tr, String(x.face_id));
      cell(tr, x.visit);
      cell(tr, x.member ? 'member' : (x.kind || '—'));
      var td = cell(tr, '', 'admin-only');
      td.hidden = !admin;
      if (admin) {
        var b = document.createElement('button');
        b.type = 'button';
        b.className = 'link';
        b.textContent = 'erase…';
        b.addEventListener('click', function () {
          $('erase-face').value = x.face_id;
          askErase();
        });
        td.appendChild(b);
      }
    });
  }

  // --- admin actions -------------------------------------------------------------------

  async function loadAudit(before) {
    var q = '?limit=20' + (before ? '&before=' + encodeURIComponent(before) : '');
    var page = await api('GET', '/v1/audit' + q);
    state.auditNext = page.next;
    $('audit-older').disabled = !page.next;
    fill($('audit-table').tBodies[0], page.entries, function (tr, e) {
      tr.dataset.face = e.face_id;
      cell(tr, e.time.replace('T', ' ').replace('+00:00', ''));
      cell(tr, e.actor);
      cell(tr, String(e.face_id));
      cell(tr, e.reason);
      cell(tr, e.stores.join(', ') || '—');
    });
  }

  function faceId(input) {
    var n = Number($(input).value);
    if (!Number.isInteger(n) || n < 1) {
      throw new ApiError(0, 'invalid_request', 'a FaceId is a whole number from 1');
    }
    return n;
  }

  async function bind(ev) {
    ev.preventDefault();
    var fid = faceId('member-face');
    var body = { member_id: $('member-id').value, move: $('member-move').checked };
    var r = await api('PUT', '/v1/faces/' + fid + '/member', body);
    say('FaceId ' + r.face_id + ' is member ' + r.member_id +
      (r.moved_from ? ' (taken from FaceId ' + r.moved_from + ')' : ''));
    await loadVisits();
  }

  async function unbind() {
    var fid = faceId('member-face');
    var r = await api('DELETE', '/v1/faces/' + fid + '/member');
    say('FaceId ' + r.face_id + ' is no longer member ' + r.member_id);
    await loadVisits();
  }

  function askErase(ev) {
    if (ev) { ev.preventDefault(); }
    var fid = faceId('erase-face');
    $('confirm-face').textContent = String(fid);
    $('confirm-erase').returnValue = '';
    $('confirm-erase').showModal();
  }

  async function erase() {
    var fid = faceId('erase-face');
    var reason = $('erase-reason').value || 'dashboard';
    var r = await api('DELETE', '/v1/faces/' + fid + '?reason=' + encodeURIComponent(reason));
    say('FaceId ' + r.face_id + ' erased everywhere (' + (r.stores.join(', ') || 'no store') +
      ').');
    await Promise.all([loadVisits(), loadAudit(null), loadHealth()]);
  }

  async function sweep(ev) {
    ev.preventDefault();
    var body = { dry_run: $('sweep-dry').checked };
    if ($('sweep-days').value) { body.older_than_days = Number($('sweep-days').value); }
    $('sweep').disabled = true;
    try {
      var r = await api('POST', '/v1/retention/sweep', body);
      say((r.dry_run ? 'Dry run: ' + r.expired + ' visitors would be erased' :
        'Retention sweep erased ' + r.erased + ' FaceIds') + ' (' + r.scanned +
        ' visitors looked at, ' + r.took_ms + ' ms).');
    } finally {
      $('sweep').disabled = false;
    }
    await Promise.all([loadAudit(null), loadVisits()]);
  }

  function guard(fn) {
    return function (ev) { Promise.resolve().then(function () { return fn(ev); }).catch(fail); };
  }

  document.addEventListener('DOMContentLoaded', function () {
    $('sign-in-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $('key-input').value.trim());
      $('key-input').value = '';
      signIn().catch(fail);
    });
    $('sign-out').addEventListener('click', function () { signOut(''); });
    $('store-select').addEventListener('change', function (ev) { selectStore(ev.target.value); });
    $('range-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      loadStats().catch(fail);
    });
    $('member-form').addEventListener('submit', guard(bind));
    $('unbind').addEventListener('click', guard(unbind));
    $('erase-form').addEventListener('submit', guard(askErase));
    $('confirm-erase').addEventListener('close', function () {
      if ($('confirm-erase').returnValue === 'erase') { guard(erase)(); }
    });
    $('sweep-form').addEventListener('submit', guard(sweep));
    $('audit-newest').addEventListener('click', guard(function () { return loadAudit(null); }));
    $('audit-older').addEventListener('click', guard(function () {
      return loadAudit(state.auditNext);
    }));
    if (sessionStorage.getItem(KEY)) {
      signIn().catch(fail);
    } else {
      signOut('');
    }
  });
})();
