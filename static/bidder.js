// A bidder's own page (不见面开标): log in by scanning a code with the phone (扫码登录), then see
// the bidder's bid, its decryption QR code while it waits for the key, and its objections with
// the agent's answers; raise an objection in the bidder's name. The session token stays in this
// tab (sessionStorage). The page refreshes its view whenever the opening's public log moves on.
(function () {
  const main = document.getElementById('bidder');
  const opening = main.dataset.opening;
  const status = document.getElementById('status');
  const key = 'kaibiao-bidder-' + opening;
  let token = sessionStorage.getItem(key);
  let refreshing = null;
  function esc(s) { return String(s == null ? '' : s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c])); }
  function time(ms) { return ms == null ? '—' : new Date(ms).toLocaleString('zh-CN'); }
  const STATES = { received: '已递交，等待开标', awaiting_key: '待解密', decrypting: '解密中', decrypted: '已解密', failed: '解密失败', not_decrypted: '未解密' };

  async function post(path, body, auth) {
    const headers = { 'content-type': 'application/json' };
    if (auth) headers.authorization = 'Bearer ' + auth;
    const res = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body || {}) });
    return { status: res.status, body: await res.json().catch(() => ({})) };
  }

  // Shows a fresh login code and waits for the phone; takes the session when it has signed.
  async function login() {
    document.getElementById('me').hidden = true;
    const code = await post('/api/openings/' + opening + '/bidder-login');
    if (code.status !== 201) { status.textContent = code.body.message || '无法获取登录二维码'; return; }
    const img = document.getElementById('login-qr');
    img.src = '/api/openings/' + opening + '/bidder-login/' + code.body.nonce + '/qr.svg';
    img.dataset.url = code.body.qr_url;
    document.getElementById('check-code').textContent = code.body.check_code;
    document.getElementById('login').hidden = false;
    status.textContent = '等待手机扫码登录…';
    const wait = async () => {
      let r;
      try { r = await post('/api/bidder-login/' + code.body.nonce + '/session', { secret: code.body.secret }); }
      catch (e) { setTimeout(wait, 2000); return; }  // the network: ask again
      if (r.status === 202) { setTimeout(wait, 1000); return; }
      if (r.status === 409) { login(); return; }  // expired or used: a new code
      if (r.status !== 200) { setTimeout(wait, 2000); return; }  // the server's trouble: ask again
      token = r.body.token; sessionStorage.setItem(key, token);
      document.getElementById('login').hidden = true;
      show();
      connect();
    };
    setTimeout(wait, 1000);
  }

  async function show() {
    const res = await fetch('/api/openings/' + opening + '/me', { headers: { authorization: 'Bearer ' + token } });
    if (res.status === 401) { sessionStorage.removeItem(key); token = null; login(); return; }
    const v = await res.json().catch(() => ({}));
    if (!res.ok) { status.textContent = v.message || res.statusText; return; }
    status.textContent = '已登录';
    document.getElementById('me-name').textContent = v.bidder.name + '（' + v.bidder.uscc + '）';
    const b = v.bid;
    const facts = [['签到', v.bidder.signed_in_ms ? time(v.bidder.signed_in_ms) : '未签到']];
    if (b) {
      facts.push(['投标文件', '递交于 ' + time(b.received_ms)], ['文件 SM3', b.sm3], ['状态', STATES[b.state] || b.state]);
      if (['decrypted', 'failed', 'not_decrypted'].includes(b.state)) facts.push(['解密结果', b.outcome]);
      if (b.failure) facts.push(['原因', b.failure]);
      if (b.summary) facts.push(['投标报价', '¥' + (b.summary.price_fen / 100).toFixed(2)]);
    } else facts.push(['投标文件', '未递交']);
    document.getElementById('me-facts').innerHTML = facts.map(([k, val]) => '<tr><th>' + esc(k) + '</th><td id="fact-' + esc(k) + '">' + esc(val) + '</td></tr>').join('');
    const qr = b && b.qr;
    document.getElementById('decrypt').hidden = !qr;
    if (qr) {
      const img = document.getElementById('decrypt-qr');
      const src = '/api/openings/' + opening + '/bids/' + b.id + '/qr.svg';
      if (img.dataset.url !== qr.url) { img.src = src + '?' + Date.now(); img.dataset.url = qr.url; }
    }
    document.getElementById('sign-in').hidden = !v.sign_in;
    if (v.sign_in) { const img = document.getElementById('sign-in-qr'); if (!img.src) img.src = '/api/openings/' + opening + '/sign-in/qr.svg'; }
    const r = v.record;
    document.getElementById('record').hidden = !r;
    if (r) {
      document.getElementById('record-said').textContent = r.confirmed
        ? '已确认开标记录（第 ' + r.version + ' 版）'
        : '开标记录第 ' + r.version + ' 版已发布：请查阅后用手机证书扫描下方二维码签章确认。';
      const img = document.getElementById('record-qr');
      img.hidden = r.confirmed;
      const src = '/api/openings/' + opening + '/record/issued/' + r.version + '/qr.svg';
      if (!r.confirmed && !img.src.endsWith(src)) img.src = src;
    }
    document.getElementById('my-objections').innerHTML = v.objections.map(o =>
      '<li>' + esc(o.text) + '<div class="rate">' + esc(time(o.raised_ms)) + '</div>' +
      (o.answer ? '<div>答复：' + esc(o.answer) + '</div>' : '<div class="rate">等待答复</div>') + '</li>').join('');
    document.getElementById('me').hidden = false;
  }

  // Any event of the opening may change what the bidder sees: its view is read again.
  let ws = null;
  function connect() {
    if (ws) return;
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(proto + '//' + location.host + '/ws/openings/' + opening);
    ws.onmessage = ev => {
      const m = JSON.parse(ev.data);
      if (m.type === 'event' && token && !refreshing) refreshing = setTimeout(() => { refreshing = null; show(); }, 300);
    };
    ws.onclose = () => { ws = null; setTimeout(connect, 1500); };
  }

  document.getElementById('logout').addEventListener('click', async () => {
    await post('/api/openings/' + opening + '/me/logout', {}, token);
    sessionStorage.removeItem(key); token = null;
    login();
  });

  document.getElementById('objection-form').addEventListener('submit', async ev => {
    ev.preventDefault();
    const text = document.getElementById('objection-text');
    const r = await post('/api/openings/' + opening + '/me/objections', { text: text.value }, token);
    document.getElementById('objection-said').textContent = r.status === 201 ? '已提出，异议 ' + r.body.n : (r.body.message || '未能提出');
    if (r.status === 201) { text.value = ''; show(); }
  });

  if (token) { show(); connect(); } else login();
})();
