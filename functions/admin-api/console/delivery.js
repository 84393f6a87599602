// The delivery pages: a touchpoint's or a campaign's totals over a window with an hourly chart,
// the top failure reasons and the campaigns using the touchpoint; one dispatch and its
// batches; one batch and its per-user results.
import { api, enc } from './api.js';
import { field, fmtNumber, fmtRate, fmtTime, h, nextId, s } from './dom.js';
import { t } from './i18n.js';
import { go } from './router.js';

function back() {
  return h('p', {}, h('a', { href: '#/', text: `← ${t('backToList')}` }));
}

export async function renderDelivery(main, scope, id, hours = 24) {
  const title = h('h2', { text: scope === 'touchpoint' ? t('deliveryOf', { name: id }) : t('campaignDelivery', { name: id }) });
  const body = h('div', {}, h('p.muted', { role: 'status', text: t('loading') }));
  const rangeName = nextId('range');
  const ranges = h('div.segmented', { role: 'radiogroup', 'aria-label': t('window') }, [24, 72, 168].map((n) => {
    const r = h('input', { type: 'radio', name: rangeName, id: nextId('r'), checked: n === hours, value: String(n) });
    r.addEventListener('change', () => renderDelivery(main, scope, id, n));
    return h('label.inline', { for: r.id }, r, ' ', t('lastHours', { n }));
  }));
  const lookup = (label, to) => {
    const input = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false' });
    return h('form.inline-add', { onsubmit: (e) => { e.preventDefault(); const v = input.value.trim(); if (v) go(to(enc(v))); } },
      field(label, input), h('button', { type: 'submit', text: t('open') }));
  };
  main.replaceChildren(h('section', {}, back(), h('div.toolbar', {}, title, ranges), body,
    lookup(t('lookupDispatch'), (v) => `#/dispatches/${v}`),
    lookup(t('lookupCampaign'), (v) => `#/campaigns/${v}/delivery`)));
  const path = scope === 'touchpoint' ? `/v1/touchpoints/${enc(id)}` : `/v1/campaigns/${enc(id)}`;
  try {
    const [stats, tp] = await Promise.all([
      api('GET', `${path}/stats?hours=${hours}`),
      scope === 'touchpoint' ? api('GET', path) : Promise.resolve(null),
    ]);
    if (tp) title.textContent = t('deliveryOf', { name: tp.name });
    const parts = [
      h('div.cards', {},
        card(t('sent'), fmtNumber(stats.sent)), card(t('succeeded'), fmtNumber(stats.succeeded), 'ok'),
        card(t('failed'), fmtNumber(stats.failed), 'bad'), card(t('pending'), fmtNumber(stats.pending), 'wait'),
        card(t('successRateWindow', { n: hours }), fmtRate(stats.window.successRate))),
      chart(stats.series),
      reasons(stats.failureReasons),
    ];
    if (tp) parts.push(await campaignsOf(tp));
    body.replaceChildren(...parts);
  } catch (e) {
    body.replaceChildren(h('p.error-text', { role: 'alert', text: e.message }));
  }
}

function card(label, value, cls) {
  return h(`div.card.stat${cls ? '.' + cls : ''}`, {}, h('span.label', { text: label }), h('span.value', { text: value }));
}

function chart(series) {
  const W = 720, H = 180, pad = 28;
  const max = Math.max(1, ...series.map((x) => Math.max(x.sent, x.succeeded, x.failed, x.pending || 0)));
  const bw = (W - pad) / series.length;
  const y = (v) => H - pad - (v / max) * (H - pad - 8);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': t('chartLabel'), class: 'chart' });
  svg.append(s('line', { x1: pad, y1: H - pad, x2: W, y2: H - pad, class: 'axis' }));
  svg.append(s('text', { x: 2, y: 12, class: 'tick' }, fmtNumber(max)));
  series.forEach((pt, i) => {
    const x = pad + i * bw;
    const g = s('g', {});
    const okH = (H - pad) - y(pt.succeeded);
    const failH = (H - pad) - y(pt.failed);
    g.append(s('rect', { x: x + 1, y: y(pt.succeeded), width: Math.max(1, bw * 0.38), height: Math.max(0, okH), class: 'ok' }));
    g.append(s('rect', { x: x + 1 + bw * 0.4, y: y(pt.failed), width: Math.max(1, bw * 0.38), height: Math.max(0, failH), class: 'bad' }));
    if (pt.sent) g.append(s('rect', { x: x + 1, y: y(pt.sent), width: Math.max(1, bw * 0.78), height: 2, class: 'sent' }));
    g.append(s('title', {}, `${fmtTime(pt.hour)} — ${t('sent')} ${pt.sent}, ${t('succeeded')} ${pt.succeeded}, ${t('failed')} ${pt.failed}, ${t('pendingAtEnd')} ${pt.pending}`));
    if (i % Math.ceil(series.length / 8) === 0) svg.append(s('text', { x, y: H - 10, class: 'tick' }, fmtTime(pt.hour, false)));
    if (pt.lastOrderNo) {
      const a = s('a', { href: `#/batches/${enc(pt.lastOrderNo)}`, 'aria-label': t('openHourBatch', { hour: fmtTime(pt.hour) }) }, g);
      svg.append(a);
    } else svg.append(g);
  });
  // Users still pending at the end of each hour, as a line.
  svg.append(s('polyline', { class: 'pending', points: series.map((pt, i) => `${pad + (i + 0.5) * bw},${y(pt.pending || 0)}`).join(' ') }));
  const legend = h('p.legend', {}, h('span.key.ok', { text: t('succeeded') }), h('span.key.bad', { text: t('failed') }), h('span.key.sent', { text: t('sent') }),
    h('span.key.wait', { text: t('pendingAtEnd') }));
  const active = series.filter((x) => x.sent || x.succeeded || x.failed || x.pending);
  const table = h('details', {}, h('summary', { text: t('chartAsTable') }),
    h('table.small', {}, h('thead', {}, h('tr', {}, ['hour', 'sent', 'succeeded', 'failed', 'pendingAtEnd', 'batch'].map((k) => h('th', { scope: 'col', text: t(k) })))),
      h('tbody', {}, active.map((x) => h('tr', {}, h('td', { text: fmtTime(x.hour) }), h('td.num', { text: x.sent }), h('td.num', { text: x.succeeded }), h('td.num', { text: x.failed }), h('td.num', { text: x.pending }),
        h('td', {}, x.lastOrderNo ? h('a', { href: `#/batches/${enc(x.lastOrderNo)}`, text: t('viewBatch') }) : '—'))))));
  return h('figure.chart-box', {}, h('figcaption', { text: t('overTime') }), svg, legend, table);
}

function reasons(list) {
  return h('section', { 'aria-labelledby': 'reasons-title' }, h('h3', { id: 'reasons-title', text: t('topReasons') }),
    list.length
      ? h('table.small.reasons', {}, h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: t('reason') }), h('th', { scope: 'col', text: t('users') }), h('th', { scope: 'col', text: t('example') }))),
        h('tbody', {}, list.map((r) => h('tr', {}, h('td', { text: r.reason }), h('td.num', { text: fmtNumber(r.count) }),
          h('td', {}, r.sampleOrderNo ? h('a', { href: `#/batches/${enc(r.sampleOrderNo)}`, text: t('viewBatch') }) : '—')))))
      : h('p.muted', { text: t('noFailures') }));
}

async function campaignsOf(tp) {
  const box = h('section', { 'aria-labelledby': 'camp-title' }, h('h3', { id: 'camp-title', text: t('campaignsUsing') }));
  try {
    const { items } = await api('GET', `/v1/touchpoints/${enc(tp.id)}/campaigns`);
    box.append(items.length
      ? h('ul.campaigns', {}, items.map((c) => h('li', {}, h('a', { href: `#/campaigns/${enc(c.campaignId)}/delivery`, text: c.name }), ' ',
        h('span.muted', { text: `${c.campaignId} · ${t('cstate_' + c.state)}` }))))
      : h('p.muted', { text: t('noCampaigns') }));
  } catch (e) {
    box.append(h('p.error-text', { text: e.message }));
  }
  return box;
}

/** Batches the API lists at most per request for a dispatch. */
const BATCH_PAGE = 100;

/** The address of a dispatch's page listing its batches from index `from` on. */
const dispatchHref = (id, from) => `#/dispatches/${enc(id)}${from > 0 ? `?from=${from}` : ''}`;

/** A dispatch with its batches from index `from` on (a page of at most BATCH_PAGE). */
export async function renderDispatch(main, id, from = 0) {
  const body = h('div', {}, h('p.muted', { role: 'status', text: t('loading') }));
  main.replaceChildren(h('section', {}, back(), h('h2', { text: t('dispatchTitle', { id }) }), body));
  try {
    const d = await api('GET', `/v1/dispatches/${enc(id)}?batchesFrom=${from}`);
    const c = d.counts || {};
    const batches = d.batches || [];
    // A refused dispatch lists one pseudo-batch (index -1): shown as it is, without paging.
    const refused = batches.some((b) => b.index < 0);
    const next = Number.isSafeInteger(d.nextBatchesFrom) && d.nextBatchesFrom > from ? d.nextBatchesFrom : null;
    let caption = t('batches');
    if (!refused && batches.length && Number.isFinite(c.batches)) {
      caption = t('batchesShown', { first: fmtNumber(batches[0].index + 1), last: fmtNumber(batches[batches.length - 1].index + 1), total: fmtNumber(c.batches) });
    }
    const paging = !refused && (from > 0 || next !== null);
    body.replaceChildren(
      h('dl.facts', {},
        h('dt', { text: t('state') }), h('dd', { text: t('dstate_' + d.state) }),
        d.campaignId ? h('dt', { text: t('campaign') }) : null, d.campaignId ? h('dd', {}, h('a', { href: `#/campaigns/${enc(d.campaignId)}/delivery`, text: d.campaignId })) : null,
        d.touchpointId ? h('dt', { text: t('touchpoint') }) : null, d.touchpointId ? h('dd', {}, h('a', { href: `#/touchpoints/${enc(d.touchpointId)}/delivery`, text: d.touchpointId })) : null,
        h('dt', { text: t('receivedAt') }), h('dd', { text: fmtTime(d.receivedAt) }),
        d.rejected ? h('dt', { text: t('rejected') }) : null, d.rejected ? h('dd.error-text', { text: d.rejected }) : null),
      d.counts ? h('div.cards', {}, card(t('users'), fmtNumber(c.users)), card(t('succeeded'), fmtNumber(c.succeeded), 'ok'), card(t('failed'), fmtNumber(c.failed), 'bad'), card(t('pending'), fmtNumber(c.pending), 'wait')) : null,
      h('table.small', {}, h('caption', { text: caption }),
        h('thead', {}, h('tr', {}, ['batchNo', 'state', 'users', 'succeeded', 'failed', 'attempts', 'httpStatus', 'error'].map((k) => h('th', { scope: 'col', text: t(k) })))),
        h('tbody', {}, batches.map((b) => h('tr', {},
          h('td', {}, h('a', { href: `#/batches/${enc(b.orderNo)}`, text: `#${b.index < 0 ? '—' : b.index + 1}` })),
          h('td', { text: t('bstate_' + b.state) }), h('td.num', { text: b.users }), h('td.num', { text: b.succeeded }), h('td.num', { text: b.failed }),
          h('td.num', { text: b.attempts }), h('td', { text: b.lastHttpStatus ?? '—' }), h('td', { text: b.lastError || '' }))))),
      !refused && !batches.length && from > 0 ? h('p.muted', { text: t('batchesNoneFrom', { n: fmtNumber(from + 1) }) }) : null,
      paging ? h('nav.pager', { 'aria-label': t('batchPages') },
        from > 0 ? h('a', { href: dispatchHref(id, Math.max(0, from - BATCH_PAGE)), text: t('previousBatches') }) : null,
        next !== null ? h('a', { href: dispatchHref(id, next), text: t('moreBatches') }) : null) : null);
  } catch (e) {
    body.replaceChildren(h('p.error-text', { role: 'alert', text: e.status === 404 ? t('noSuchDispatch') : e.message }));
  }
}

export async function renderBatch(main, order) {
  const body = h('div', {}, h('p.muted', { role: 'status', text: t('loading') }));
  main.replaceChildren(h('section', {}, back(), h('h2', { text: t('batchTitle') }), body));
  try {
    const b = await api('GET', `/v1/batches/${enc(order)}`);
    const filterName = nextId('flt');
    const tbody = h('tbody');
    const show = (which) => tbody.replaceChildren(...b.results
      .filter((r) => which === 'all' || (which === 'failed' ? r.status !== 'TOU_SUCC' : r.status === 'TOU_SUCC'))
      .map((r) => h('tr', {}, h('td.num', { text: r.gid }), h('td', {}, h(`span.badge.${r.status === 'TOU_SUCC' ? 'on' : 'off'}`, { text: r.status })), h('td', { text: r.errorMsg || '' }))),
    ...(which !== 'succeeded' ? (b.pendingUsers || []).map((g) => h('tr', {}, h('td.num', { text: g }), h('td', {}, h('span.badge.wait', { text: t('pending') })), h('td', { text: '' }))) : []));
    const filters = h('div.segmented', { role: 'radiogroup', 'aria-label': t('filterUsers') }, ['all', 'failed', 'succeeded'].map((w) => {
      const r = h('input', { type: 'radio', name: filterName, id: nextId('r'), checked: w === 'all', value: w });
      r.addEventListener('change', () => show(w));
      return h('label.inline', { for: r.id }, r, ' ', t('show_' + w));
    }));
    show('all');
    body.replaceChildren(
      h('dl.facts', {},
        h('dt', { text: 'orderNo' }), h('dd', {}, h('code', { text: b.orderNo })),
        h('dt', { text: t('dispatch') }), h('dd', {}, h('a', { href: `#/dispatches/${enc(b.dispatchId)}`, text: b.dispatchId })),
        h('dt', { text: t('state') }), h('dd', { text: t('bstate_' + b.state) }),
        h('dt', { text: t('attempts') }), h('dd', { text: b.attempts }),
        h('dt', { text: t('httpStatus') }), h('dd', { text: b.lastHttpStatus ?? '—' }),
        h('dt', { text: t('sentAt') }), h('dd', { text: fmtTime(b.sentAt) }),
        h('dt', { text: t('resolvedAt') }), h('dd', { text: fmtTime(b.resolvedAt) }),
        b.lastError ? h('dt', { text: t('error') }) : null, b.lastError ? h('dd.error-text', { text: b.lastError }) : null),
      h('div.cards', {}, card(t('users'), fmtNumber(b.users)), card(t('succeeded'), fmtNumber(b.succeeded), 'ok'), card(t('failed'), fmtNumber(b.failed), 'bad'), card(t('pending'), fmtNumber(b.pending), 'wait')),
      filters,
      h('table.small', {}, h('caption', { text: t('perUser') }),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'gid' }), h('th', { scope: 'col', text: t('status') }), h('th', { scope: 'col', text: t('reason') }))),
        tbody));
  } catch (e) {
    body.replaceChildren(h('p.error-text', { role: 'alert', text: e.status === 404 ? t('noSuchBatch') : e.message }));
  }
}
