// The agent console: a thin client of the JSON API (session cookie).
(function () {
  const msg = document.getElementById('message');
  let current = null;
  function say(t) { msg.textContent = t || ''; }
  async function api(method, url, body) {
    const res = await fetch(url, { method, credentials: 'same-origin', headers: body ? { 'Content-Type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(data.message || res.statusText);
    return data;
  }
  async function refresh() {
    try {
      const list = await api('GET', '/api/openings');
      document.getElementById('login-box').hidden = true;
      document.getElementById('work').hidden = false;
      const tb = document.getElementById('openings');
      tb.innerHTML = '';
      for (const o of list) {
        const tr = document.createElement('tr');
        tr.innerHTML = '<td></td><td></td><td></td><td><button>管理</button></td>';
        tr.children[0].textContent = o.tender_id + ' ' + o.name;
        tr.children[1].textContent = o.state;
        tr.children[2].textContent = new Date(o.deadline_ms).toLocaleString('zh-CN');
        tr.querySelector('button').onclick = () => show(o.id);
        tb.appendChild(tr);
      }
      if (current) show(current);
    } catch (e) { document.getElementById('login-box').hidden = false; }
  }
  async function show(id) {
    // Another opening's bind code is not left on the screen.
    if (current !== id) document.getElementById('bind-code').hidden = true;
    current = id;
    const s = await api('GET', '/api/openings/' + id);
    document.getElementById('detail').hidden = false;
    document.getElementById('detail-title').textContent = s.opening.tender_id + ' ' + s.opening.name + ' — ' + s.opening.state;
    document.getElementById('hall-link').href = '/hall/' + id;
    document.getElementById('record-link').href = '/hall/' + id + '/record';
    // Bids whose decryption keeps failing through the platform: the agent may give each up.
    const delayed = document.getElementById('delayed');
    delayed.innerHTML = '';
    for (const b of s.bids.filter(b => b.state === 'decrypting' && b.delay)) {
      const p = document.createElement('p');
      p.innerHTML = '<span class="refusal"></span> <button>放弃解密（平台原因）…</button>';
      p.firstChild.textContent = b.bidder_name + '：' + b.delay;
      p.querySelector('button').onclick = async () => {
        const reason = prompt('放弃原因（记入开标记录；按平台原因视为撤回）');
        if (!reason) return;
        try { await api('POST', '/api/openings/' + id + '/bids/' + b.id + '/abandon', { reason }); say('已放弃'); show(id); } catch (err) { say(err.message); }
      };
      delayed.appendChild(p);
    }
    // The bidders, with whether they signed in (签到), and the record issued for confirmation.
    const time = ms => new Date(ms).toLocaleString('zh-CN');
    const rows = document.getElementById('bidder-rows');
    rows.innerHTML = '';
    for (const b of s.bidders || []) {
      const tr = document.createElement('tr');
      tr.innerHTML = '<td></td><td></td><td></td><td></td><td></td>';
      const bindable = s.opening.state === 'scheduled' && s.server_ms < s.opening.deadline_ms && b.keys === 0;
      [b.name + (bindable ? '（待绑定证书）' : b.keys === 0 ? '（无证书）' : ''), b.uscc, b.has_bid ? '已递交' : '未递交', b.signed_in_ms ? time(b.signed_in_ms) : '未签到', b.logged_in ? '已登录' : ''].forEach((t, i) => { tr.children[i].textContent = t; });
      if (bindable) {
        // 扫码绑定: the bind code, as a QR code and a link, for the agent to hand to the bidder.
        const bind = document.createElement('button');
        bind.textContent = '绑定码';
        bind.className = 'bind';
        bind.onclick = async () => {
          try {
            const code = await api('POST', '/api/openings/' + id + '/bidders/' + b.uscc + '/bind-code');
            document.getElementById('bind-bidder').textContent = b.name;
            document.getElementById('bind-qr').src = code.url.replace(/^https?:\/\/[^/]+/, '') + '/qr.svg';
            const link = document.getElementById('bind-url');
            link.href = code.url;
            link.textContent = code.url;
            document.getElementById('bind-code').hidden = false;
          } catch (err) { say(err.message); }
        };
        tr.children[0].append(' ', bind);
      }
      rows.appendChild(tr);
    }
    const r = s.record;
    document.getElementById('record-status').textContent = r
      ? '开标记录第 ' + r.version + ' 版已发出签章确认，已确认：' + (r.confirmations.map(c => c.name).join('、') || '无')
      : '开标记录尚未发出签章确认（解密结束后可生成）';
    // Objections (异议): each recorded with who raised it, then answered once.
    const objections = document.getElementById('objection-items');
    objections.innerHTML = '';
    for (const x of s.objections || []) {
      const li = document.createElement('li');
      li.textContent = (x.bidder ? x.bidder.name + '：' : '') + x.text + (x.answer == null ? '' : ' — 答复：' + x.answer);
      if (x.answer == null) {
        const b = document.createElement('button');
        b.textContent = '答复…';
        b.onclick = async () => {
          const answer = prompt('对异议 ' + x.n + ' 的答复（记入开标记录，不可更改）');
          if (!answer) return;
          try { await api('POST', '/api/openings/' + id + '/objections/' + x.n + '/answer', { answer }); say('已答复'); show(id); } catch (err) { say(err.message); }
        };
        li.append(' ', b);
      }
      objections.appendChild(li);
    }
    document.getElementById('detail-body').textContent = JSON.stringify({ bidders: s.bidders, bids: s.bids.map(b => ({ bidder: b.bidder_name, state: b.state, sm3: b.sm3, failure: b.failure, digest: b.digest && (b.digest.message || b.digest.state), delay: b.delay })) }, null, 2);
  }
  document.getElementById('login').onsubmit = async e => {
    e.preventDefault();
    const f = new FormData(e.target);
    try { await api('POST', '/api/login', { username: f.get('username'), password: f.get('password') }); say(''); refresh(); } catch (err) { say(err.message); }
  };
  document.getElementById('new-opening').onsubmit = async e => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await api('POST', '/api/openings', { tender_id: f.get('tender_id'), name: f.get('name'), deadline_ms: new Date(f.get('deadline')).getTime(), opening_ms: new Date(f.get('opening')).getTime(), decrypt_limit_secs: Number(f.get('limit')) * 60 });
      say('已创建'); refresh();
    } catch (err) { say(err.message); }
  };
  document.getElementById('new-bidder').onsubmit = async e => {
    e.preventDefault();
    const f = new FormData(e.target);
    const pems = name => f.get(name).trim() ? [f.get(name)] : [];
    try { await api('POST', '/api/openings/' + current + '/bidders', { uscc: f.get('uscc'), name: f.get('name'), sign_keys: pems('sign'), enc_keys: pems('enc') }); say('已登记'); show(current); } catch (err) { say(err.message); }
  };
  document.getElementById('add-keys').onsubmit = async e => {
    e.preventDefault();
    const f = new FormData(e.target);
    const pems = name => f.get(name).trim() ? [f.get(name)] : [];
    try {
      const r = await api('POST', '/api/openings/' + current + '/bidders/' + encodeURIComponent(f.get('uscc').trim()) + '/keys', { sign_keys: pems('sign'), enc_keys: pems('enc') });
      e.target.reset(); say('已更新：签名证书 ' + r.sign_keys + ' 张，加密证书 ' + r.enc_keys + ' 张'); show(current);
    } catch (err) { say(err.message); }
  };
  document.getElementById('new-objection').onsubmit = async e => {
    e.preventDefault();
    const f = new FormData(e.target);
    try { await api('POST', '/api/openings/' + current + '/objections', { bidder: f.get('bidder') || null, text: f.get('text') }); e.target.reset(); say('已记录'); show(current); } catch (err) { say(err.message); }
  };
  for (const b of document.querySelectorAll('.actions button')) {
    b.onclick = async () => {
      const act = b.dataset.act;
      try {
        if (act === 'fail') { const reason = prompt('开标失败原因（如：投标人少于3个）'); if (!reason) return; await api('POST', '/api/openings/' + current + '/fail', { reason }); }
        else { const r = await api('POST', '/api/openings/' + current + '/' + act); if (r.token) prompt('评标系统令牌（仅显示一次）', r.token); }
        say('完成'); refresh();
      } catch (err) { say(err.message); }
    };
  }
  refresh();
})();
