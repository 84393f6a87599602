// The audit log page (#/audit, or #/audit?touchpoint={id} for one touchpoint): who changed
// what and when, newest first, a page at a time; each change as its field, before and after.
import { api, enc } from './api.js';
import { fmtTime, h } from './dom.js';
import { t } from './i18n.js';

const PAGE_SIZE = 20;

/** A value as one line of text: strings as they are, everything else as JSON. */
function show(v) {
  if (v === undefined) return '—';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function renderAudit(main, touchpointId) {
  const tbody = h('tbody');
  const status = h('p.muted', { role: 'status' });
  const more = h('button', { type: 'button', text: t('older'), hidden: true, onclick: () => load(cursor) });
  let cursor = null;
  main.replaceChildren(h('section', { 'aria-labelledby': 'audit-title' },
    h('div.toolbar', {},
      h('h2', { id: 'audit-title', text: touchpointId ? t('auditOf', { id: touchpointId }) : t('auditLog') }),
      h('a.button', { href: '#/', text: `← ${t('backToList')}` })),
    h('div.table-wrap', {}, h('table.list.audit', {},
      h('caption.sr-only', { text: t('auditLog') }),
      h('thead', {}, h('tr', {}, ['at', 'actor', 'action', 'touchpoint', 'changes']
        .map((k) => h('th', { scope: 'col', text: t('audit_' + k) })))),
      tbody)),
    status, more));

  async function load(from) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (touchpointId) params.set('touchpointId', touchpointId);
    if (from) params.set('cursor', from);
    status.textContent = t('loading');
    let page;
    try {
      page = await api('GET', `/v1/audit?${params}`);
    } catch (e) {
      status.textContent = e.message;
      return;
    }
    cursor = page.nextCursor || null;
    more.hidden = !cursor;
    tbody.append(...page.items.map(entry));
    status.textContent = tbody.children.length ? '' : t('noAudit');
  }

  load(null);
}

function entry(e) {
  const action = t('action_' + e.action.replaceAll('.', '_'));
  return h('tr', { 'data-action': e.action },
    h('td', { text: fmtTime(e.at) }),
    h('td', { text: e.actor }),
    h('td', {}, action, e.target ? h('span.sub', { text: e.target }) : null),
    h('td', {}, e.touchpointId ? h('a', { href: `#/audit?touchpoint=${enc(e.touchpointId)}`, text: e.touchpointId }) : '—'),
    h('td', {}, e.changes.length
      ? h('ul.changes', {}, e.changes.map((c) => h('li', {},
        h('strong', { text: c.field }), ': ',
        c.field === 'token' ? t('tokenChange_' + c.after) : `${show(c.before)} → ${show(c.after)}`)))
      : '—'));
}
