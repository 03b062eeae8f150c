// The hall display: renders the opening's snapshot once, then keeps it current from the
// websocket's events alone (a thousand viewers must not turn each event into a thousand snapshot
// requests); the countdown is computed from the server's clock, never the browser's.
(function () {
  const main = document.getElementById('hall');
  const opening = main.dataset.opening;
  const rows = document.getElementById('rows');
  const STATES = { received: '已递交', awaiting_key: '待解密', decrypting: '解密中', decrypted: '解密成功', failed: '解密失败', not_decrypted: '未解密（视为撤销）' };
  const OPENING_STATES = { scheduled: '等待开标', decrypting: '解密中', decryption_ended: '解密结束', released: '已发送评标', closed: '开标结束', failed: '开标失败' };
  let snapshot = null, lastSeq = 0, clockOffset = 0, refusals = {}, progress = {}, ws = null, pending = null;

  function esc(s) { return String(s == null ? '' : s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c])); }
  function mib(n) { return (n / 1048576).toFixed(1) + ' MiB'; }
  function serverNow() { return Date.now() + clockOffset; }

  // The snapshot over HTTP, then the websocket from its last event on: the server replays what
  // happened in between, so nothing is missed or applied twice.
  async function load() {
    pending = null;
    try {
      const res = await fetch('/api/openings/' + opening, { credentials: 'same-origin' });
      if (!res.ok) throw new Error(res.status);
      adopt(await res.json());
    } catch (e) { retry(); return; }
    if (!ws) connect();
  }
  // A message for the whole room, above the table, until the page is loaded again.
  function notice(text) { const el = document.getElementById('notice'); el.textContent = text; el.hidden = false; }
  // The log's chain value after the last event shown, its first 16 hex digits.
  function showHead(hash) { if (hash) document.getElementById('head').textContent = hash.slice(0, 16); }
  function retry() { if (!pending) pending = setTimeout(load, 1500); }
  function adopt(s) {
    snapshot = s; lastSeq = s.last_seq; document.getElementById('seq').textContent = lastSeq;
    showHead(s.last_hash);
    if (s.server_ms) clockOffset = s.server_ms - Date.now();
    render();
  }

  // The bidders are published with the start of decryption (or a failed opening): the event
  // carries the list a public viewer was not shown before the deadline.
  function publish(d) {
    if (!d.bids) return;
    snapshot.bids = d.bids; snapshot.bidders = d.bidders || []; snapshot.bidders_published = true;
  }

  function bid(id) { return snapshot.bids.find(b => b.id === id); }
  function setBid(id, change) { const b = bid(id); if (b) Object.assign(b, change); return !!b; }

  // Applies one event to the snapshot as the server applied it to its tables. Returns false for an
  // event this page does not know, after which it reloads the snapshot instead of guessing.
  function apply(kind, d) {
    const o = snapshot.opening;
    switch (kind) {
      case 'bid.received':
        snapshot.bids = snapshot.bids.filter(b => b.bidder_code !== d.bidder_code);
        snapshot.bids.push({ id: d.bid_id, bidder_code: d.bidder_code, bidder_name: d.bidder_name, state: d.state || 'received', size: d.size, sm3: d.sm3, received_ms: d.received_ms });
        return true;
      case 'bid.withdrawn': snapshot.bids = snapshot.bids.filter(b => b.id !== d.bid_id); return true;
      case 'decryption.started':
        Object.assign(o, { state: 'decrypting', decrypt_started_ms: d.started_ms, decrypt_deadline_ms: d.deadline_ms });
        publish(d);
        snapshot.bids.forEach(b => { if (b.state === 'received') b.state = 'awaiting_key'; });
        return true;
      case 'decryption.extended':
        o.decrypt_deadline_ms = d.deadline_ms;
        notice('开标系统中断 ' + Math.ceil(d.extended_ms / 60000) + ' 分钟（' + new Date(d.down_from_ms).toLocaleTimeString('zh-CN') + '–' +
          new Date(d.down_to_ms).toLocaleTimeString('zh-CN') + '），解密时限顺延至 ' + new Date(d.deadline_ms).toLocaleString('zh-CN'));
        return true;
      case 'qr.issued': return setBid(d.bid_id, { qr: { nonce: d.nonce, url: d.url, expires_ms: d.expires_ms } });
      case 'bid.refused': refusals[d.bid_id] = d.message; return true;
      case 'bid.key_accepted': delete refusals[d.bid_id]; return setBid(d.bid_id, { state: 'decrypting', qr: null });
      case 'bid.summary': return setBid(d.bid_id, { summary: d.summary });
      case 'bid.delayed': return setBid(d.bid_id, { delay: d.message });
      case 'bid.decrypted': delete progress[d.bid_id]; return setBid(d.bid_id, { state: 'decrypted', plaintext_len: d.bytes, progress: null, delay: null });
      case 'bid.failed': delete progress[d.bid_id]; return setBid(d.bid_id, { state: 'failed', failure: d.message, fault: d.fault, progress: null });
      case 'decryption.ended':
        o.state = 'decryption_ended';
        d.not_decrypted.forEach(id => setBid(id, { state: 'not_decrypted', failure: d.failure, fault: d.fault || 'bidder', qr: null }));
        snapshot.bids.forEach(b => { b.qr = null; });
        return true;
      case 'objection.raised':
        (snapshot.objections = snapshot.objections || []).push({ n: d.n, bidder: d.bidder, text: d.text, answer: null });
        return true;
      case 'objection.answered': {
        const x = (snapshot.objections || []).find(x => x.n === d.n);
        if (x) x.answer = d.answer;
        return !!x;
      }
      case 'record.issued': snapshot.record = { version: d.version, digest: d.digest, confirmations: [] }; return true;
      case 'record.confirmed':
        if (!snapshot.record || snapshot.record.version !== d.version) return false;
        snapshot.record.confirmations.push(d.bidder);
        return true;
      case 'opening.failed': Object.assign(o, { state: 'failed', failure: d.reason }); publish(d); return true;
      case 'files.released': o.state = 'released'; return true;
      case 'opening.closed': o.state = 'closed'; return true;
      case 'bidder.signed_in': {
        const b = (snapshot.bidders || []).find(x => x.uscc === d.bidder.uscc);
        if (b) b.signed_in_ms = d.signed_in_ms;
        return true;
      }
      case 'opening.created': case 'bidder.registered': case 'bid.digest': case 'evaluator.token_issued': case 'bid.not_filed': return true;
      default: return false;
    }
  }

  // Objections (异议) and the agent's answers, as the record will hold them.
  function renderObjections() {
    const list = snapshot.objections || [];
    document.getElementById('objections').hidden = !list.length;
    document.getElementById('objection-list').innerHTML = list.map(x =>
      '<li data-n="' + x.n + '"><div class="objection">' + (x.bidder ? esc(x.bidder.name) + '：' : '') + esc(x.text) + '</div>' +
      '<div class="answer">' + (x.answer == null ? '（待答复）' : '答复：' + esc(x.answer)) + '</div></li>').join('');
  }

  // The record issued for the bidders to confirm: one QR code for all, and who has confirmed.
  function renderRecord() {
    const r = snapshot.record;
    document.getElementById('confirm').hidden = !r;
    if (!r) return;
    const img = document.getElementById('record-qr'), src = '/api/openings/' + opening + '/record/issued/' + r.version + '/qr.svg';
    if (img.getAttribute('src') !== src) img.setAttribute('src', src);
    document.getElementById('record-version').textContent = r.version;
    document.getElementById('record-digest').textContent = r.digest.slice(0, 16);
    document.getElementById('record-page').href = '/hall/' + opening + '/record';
    document.getElementById('confirmed').textContent = r.confirmations.map(c => c.name).join('、') || '无';
  }

  function render() {
    // The opening record, once decryption is over.
    document.getElementById('record-open').hidden = !['decryption_ended', 'released', 'closed', 'failed'].includes(snapshot.opening.state);
    renderSignIn();
    renderObjections();
    renderRecord();
    const o = snapshot.opening;
    document.getElementById('state').textContent = OPENING_STATES[o.state] || o.state;
    if (snapshot.bidders_published === false) { rows.innerHTML = '<tr><td colspan="5" class="hidden-list">开标前不公开投标人名称和数量，开始解密时公布</td></tr>'; return; }
    if (!snapshot.bids.length) { rows.innerHTML = '<tr><td colspan="5">尚无投标文件</td></tr>'; return; }
    rows.innerHTML = snapshot.bids.map(b => {
      const p = progress[b.id] || b.progress;
      const pct = b.state === 'decrypted' ? 100 : (p && p.total ? Math.floor(100 * p.done / p.total) : 0);
      const rate = progress[b.id] && progress[b.id].rate ? mib(progress[b.id].rate) + '/s' : '';
      const qr = b.qr ? '<div class="qr"><img alt="解密二维码" src="/api/openings/' + opening + '/bids/' + b.id + '/qr.svg?n=' + b.qr.nonce + '"></div>' : '';
      const s = b.summary;
      const summary = s ? '<div class="summary"><div class="price">¥' + esc((s.price_fen / 100).toFixed(2)) + '</div><div>工期 ' + esc(s.duration_days) + ' 天 · 质量 ' + esc(s.quality) + '</div>' +
        Object.entries(s.fields || {}).map(([k, v]) => '<div>' + esc(k) + '：' + esc(v) + '</div>').join('') + '</div>' : '';
      const note = b.failure || (b.state === 'awaiting_key' && refusals[b.id]) || (b.state === 'decrypting' && b.delay);
      const why = note ? '<div class="refusal">' + esc(note) + '</div>' : '';
      const bidder = (snapshot.bidders || []).find(x => x.uscc === b.bidder_code);
      const signedIn = bidder && bidder.signed_in_ms ? '<div class="rate signed-in">已签到 ' + esc(new Date(bidder.signed_in_ms).toLocaleTimeString('zh-CN')) + '</div>' : '';
      return '<tr data-bid="' + b.id + '"><td><div>' + esc(b.bidder_name) + '</div><div class="rate">' + esc(b.bidder_code) + ' · ' + mib(b.size) + '</div>' + signedIn + '</td>' +
        '<td><span class="state ' + esc(b.state) + '">' + esc(b.state === 'not_decrypted' && b.fault === 'platform' ? '未解密（平台原因，视为撤回）' : STATES[b.state] || b.state) + '</span>' + why + '</td>' +
        '<td>' + qr + '</td>' +
        '<td><div class="bar"><div style="width:' + pct + '%"></div></div><div class="rate">' + pct + '% ' + rate + '</div></td>' +
        '<td>' + summary + '</td></tr>';
    }).join('');
  }

  // The sign-in QR code, from half an hour before the opening until decryption starts.
  function renderSignIn() {
    const o = snapshot.opening;
    const open = o.state === 'scheduled' && serverNow() >= o.opening_ms - 30 * 60000;
    const section = document.getElementById('sign-in'), img = document.getElementById('sign-in-qr');
    if (open && section.hidden) img.setAttribute('src', '/api/openings/' + opening + '/sign-in/qr.svg');
    section.hidden = !open;
  }

  function tickClock() {
    if (!snapshot) return;
    renderSignIn();
    const o = snapshot.opening, el = document.getElementById('countdown'), label = document.getElementById('countdown-label');
    let target = null;
    if (o.state === 'scheduled') { target = o.opening_ms; label.textContent = '距开标'; }
    else if (o.state === 'decrypting') { target = o.decrypt_deadline_ms; label.textContent = '解密倒计时'; }
    if (!target) { el.textContent = '--:--'; return; }
    const left = Math.max(0, Math.floor((target - serverNow()) / 1000));
    const h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
    el.textContent = (h ? h + ':' : '') + String(m).padStart(2, '0') + ':' + String(s).padStart(2, '0');
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(proto + '//' + location.host + '/ws/openings/' + opening + '?since=' + lastSeq);
    ws.onopen = () => { document.getElementById('conn').className = 'on'; document.getElementById('conn-text').textContent = '实时'; };
    ws.onmessage = ev => {
      const m = JSON.parse(ev.data);
      if (m.type === 'hello') { clockOffset = m.server_ms - Date.now(); }
      else if (m.type === 'head') { keepHead(m.head); }
      else if (m.type === 'event') {
        if (m.seq <= lastSeq) return;
        lastSeq = m.seq; document.getElementById('seq').textContent = lastSeq; showHead(m.hash);
        if (apply(m.kind, m.data)) render(); else { ws.onclose = null; ws.close(); ws = null; load(); }
      } else if (m.type === 'snapshot') { adopt(m.snapshot); }
      else if (m.type === 'progress') {
        progress[m.bid_id] = m;
        const row = rows.querySelector('tr[data-bid="' + m.bid_id + '"]');
        if (row) { const pct = Math.floor(100 * m.done / Math.max(1, m.total)); row.querySelector('.bar > div').style.width = pct + '%'; row.querySelector('td:nth-child(4) .rate').textContent = pct + '% ' + mib(m.rate) + '/s'; }
      }
    };
    ws.onclose = () => {
      ws = null;
      document.getElementById('conn').className = ''; document.getElementById('conn-text').textContent = '重新连接中…';
      setTimeout(connect, 1500);
    };
  }

  // The platform's latest signed head of the log, pushed while the log moves on (and asked for
  // once at load): proof of what the log held, kept in this browser and saved on request.
  let signedHead = null;
  function keepHead(h) {
    if (!h || (signedHead && signedHead.seq > h.seq)) return;
    signedHead = h;
    try { localStorage.setItem('kaibiao-head-' + opening, JSON.stringify(h)); } catch (e) { /* private mode */ }
    const link = document.getElementById('save-head');
    link.hidden = false;
    link.title = '平台签名：事件 ' + h.seq + '，链值 ' + h.hash.slice(0, 16) + '…';
  }
  window.kaibiaoSignedHead = () => signedHead;
  document.getElementById('save-head').addEventListener('click', ev => {
    ev.preventDefault();
    if (!signedHead) return;
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([JSON.stringify(signedHead, null, 2)], { type: 'application/json' }));
    a.download = 'kaibiao-head-' + opening + '-' + signedHead.seq + '.json';
    a.click();
  });
  fetch('/api/openings/' + opening + '/events/head', { credentials: 'same-origin' })
    .then(r => r.ok ? r.json() : null).then(keepHead).catch(() => {});

  setInterval(tickClock, 250);
  load();
})();
