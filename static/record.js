// The opening record (开标记录), from /api/openings/{id}/record, laid out to be read and printed.
(function () {
  const main = document.getElementById('record');
  const opening = main.dataset.opening;
  const status = document.getElementById('record-status');
  function esc(s) { return String(s == null ? '' : s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c])); }
  function time(ms) { return ms == null ? '—' : new Date(ms).toLocaleString('zh-CN'); }
  function bidderName(b) { return b ? b.name + '（' + b.uscc + '）' : '—'; }

  async function load() {
    const res = await fetch('/api/openings/' + opening + '/record', { credentials: 'same-origin' });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) { status.textContent = data.message || res.statusText; return; }
    // The version issued for the bidders to confirm (扫码签章), if any: fetched before anything is
    // shown, so that the page appears whole.
    const issued = await fetch('/api/openings/' + opening + '/record/issued', { credentials: 'same-origin' });
    const i = issued.ok ? await issued.json() : null;
    const r = data.record, o = r.opening;
    const times = [['投标截止时间', time(o.deadline_ms)], ['开标时间', time(o.opening_ms)], ['开始解密', time(o.decrypt_started_ms)],
      ['解密时限', o.decrypt_deadline_ms == null ? '—' : time(o.decrypt_deadline_ms)]];
    if (o.failure) times.push(['开标失败原因', o.failure]);
    document.getElementById('times').innerHTML = times.map(([k, v]) => '<tr><th>' + esc(k) + '</th><td>' + esc(v) + '</td></tr>').join('');
    document.getElementById('record-bids').innerHTML = r.bids.map(b => {
      const s = b.summary;
      const fields = s ? Object.entries(s.fields || {}).map(([k, v]) => esc(k) + '：' + esc(v)).join('<br>') : '';
      const signed = b.bidder && b.bidder.signed_in_ms ? '<div class="rate">签到 ' + esc(time(b.bidder.signed_in_ms)) + '</div>' : '<div class="rate">未签到</div>';
      return '<tr><td>' + esc(bidderName(b.bidder)) + signed + '</td><td>' + esc(time(b.received_ms)) + '</td><td><code>' + esc(b.sm3) + '</code></td>' +
        '<td>' + esc(b.outcome) + (b.failure ? '<div class="refusal">' + esc(b.failure) + '</div>' : '') + '</td>' +
        '<td>' + (s ? '¥' + esc((s.price_fen / 100).toFixed(2)) : '') + '</td><td>' + (s ? esc(s.duration_days) + ' 天' : '') + '</td>' +
        '<td>' + (s ? esc(s.quality) : '') + '</td><td>' + fields + '</td></tr>';
    }).join('') || '<tr><td colspan="8">无投标文件</td></tr>';
    const without = document.getElementById('without-bid');
    without.hidden = !r.bidders_without_bid.length;
    without.textContent = '已登记未递交投标文件：' + r.bidders_without_bid.map(bidderName).join('、');
    document.getElementById('record-objections').innerHTML = r.objections.map(x =>
      '<li data-n="' + x.n + '"><div class="objection">' + esc((x.bidder ? x.bidder.name + '：' : '') + x.text) + '（' + esc(time(x.raised_ms)) + '）</div>' +
      '<div class="answer">' + (x.answer == null ? '（待答复）' : '答复：' + esc(x.answer) + '（' + esc(time(x.answered_ms)) + '）') + '</div></li>').join('') || '<li>无</li>';
    document.getElementById('digest').textContent = data.digest;
    document.getElementById('log-seq').textContent = r.log.seq;
    document.getElementById('log-hash').textContent = r.log.hash;
    document.getElementById('log-signature').textContent = data.log_head.signature;
    if (i) {
      const el = document.getElementById('confirmations');
      el.hidden = false;
      el.textContent = '第 ' + i.version + ' 版已发出签章确认（摘要 ' + i.digest + '），已确认：' +
        (i.confirmations.map(c => c.name + '（' + time(c.confirmed_ms) + '）').join('、') || '无');
    }
    status.hidden = true;
    document.getElementById('record-body').hidden = false;
  }
  load().catch(e => { status.textContent = '无法加载开标记录：' + e.message; });
})();
