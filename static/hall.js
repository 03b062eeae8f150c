// The hall display: renders the opening's snapshot and follows the websocket; the countdown is
// computed from the server's clock, never the browser's.
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

  async function load() {
    const res = await fetch('/api/openings/' + opening, { credentials: 'same-origin' });
    if (!res.ok) return;
    snapshot = await res.json();
    clockOffset = snapshot.server_ms - Date.now();
    render();
  }
  function scheduleLoad() { if (!pending) pending = setTimeout(() => { pending = null; load(); }, 150); }

  function render() {
    const o = snapshot.opening;
    document.getElementById('state').textContent = OPENING_STATES[o.state] || o.state;
    if (!snapshot.bids.length) { rows.innerHTML = '<tr><td colspan="5">尚无投标文件</td></tr>'; return; }
    rows.innerHTML = snapshot.bids.map(b => {
      const p = progress[b.id] || b.progress;
      const pct = b.state === 'decrypted' ? 100 : (p && p.total ? Math.floor(100 * p.done / p.total) : 0);
      const rate = progress[b.id] && progress[b.id].rate ? mib(progress[b.id].rate) + '/s' : '';
      const qr = b.qr ? '<div class="qr"><img alt="解密二维码" src="/api/openings/' + opening + '/bids/' + b.id + '/qr.svg?n=' + b.qr.nonce + '"></div>' : '';
      const s = b.summary;
      const summary = s ? '<div class="summary"><div class="price">¥' + esc((s.price_fen / 100).toFixed(2)) + '</div><div>工期 ' + esc(s.duration_days) + ' 天 · 质量 ' + esc(s.quality) + '</div>' +
        Object.entries(s.fields || {}).map(([k, v]) => '<div>' + esc(k) + '：' + esc(v) + '</div>').join('') + '</div>' : '';
      const why = b.failure ? '<div class="refusal">' + esc(b.failure) + '</div>' : (refusals[b.id] && b.state === 'awaiting_key' ? '<div class="refusal">' + esc(refusals[b.id]) + '</div>' : '');
      return '<tr data-bid="' + b.id + '"><td><div>' + esc(b.bidder_name) + '</div><div class="rate">' + esc(b.bidder_code) + ' · ' + mib(b.size) + '</div></td>' +
        '<td><span class="state ' + esc(b.state) + '">' + esc(STATES[b.state] || b.state) + '</span>' + why + '</td>' +
        '<td>' + qr + '</td>' +
        '<td><div class="bar"><div style="width:' + pct + '%"></div></div><div class="rate">' + pct + '% ' + rate + '</div></td>' +
        '<td>' + summary + '</td></tr>';
    }).join('');
  }

  function tickClock() {
    if (!snapshot) return;
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
    ws.onopen = () => { document.getElementById('conn').className = 'on'; document.getElementById('conn-text').textContent = '实时'; load(); };
    ws.onmessage = ev => {
      const m = JSON.parse(ev.data);
      if (m.type === 'hello') { clockOffset = m.server_ms - Date.now(); }
      else if (m.type === 'event') {
        lastSeq = m.seq; document.getElementById('seq').textContent = lastSeq;
        if (m.kind === 'bid.refused') refusals[m.data.bid_id] = m.data.message;
        if (m.kind === 'bid.decrypted' || m.kind === 'bid.failed') delete progress[m.data.bid_id];
        scheduleLoad();
      } else if (m.type === 'snapshot') { snapshot = m.snapshot; lastSeq = snapshot.last_seq; render(); }
      else if (m.type === 'progress') {
        progress[m.bid_id] = m;
        const row = rows.querySelector('tr[data-bid="' + m.bid_id + '"]');
        if (row) { const pct = Math.floor(100 * m.done / Math.max(1, m.total)); row.querySelector('.bar > div').style.width = pct + '%'; row.querySelector('td:nth-child(4) .rate').textContent = pct + '% ' + mib(m.rate) + '/s'; }
      }
    };
    ws.onclose = () => { document.getElementById('conn').className = ''; document.getElementById('conn-text').textContent = '重新连接中…'; setTimeout(connect, 1500); };
  }

  setInterval(tickClock, 250);
  load();
  connect();
})();
