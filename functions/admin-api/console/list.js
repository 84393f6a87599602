// The touchpoint list: filters, search and paging, each row's 24-hour success rate (one stats
// request per page), each touchpoint's health, and the row actions: edit, enable / disable,
// pause / resume, spaces, test, rotate token, delivery, history, delete.
import { api, enc, KINDS } from './api.js';
import { closeDialog, openDialog, showApiErrors } from './dialog.js';
import { clearErrors, field, fmtRate, fmtTime, h, hostOf, nextId, toast } from './dom.js';
import { openEditor } from './editor.js';
import { t } from './i18n.js';
import { route } from './router.js';
import { openRotate } from './rotate.js';
import { openSpaces } from './spaces.js';
import { listState, resetPaging } from './state.js';
import { openTest } from './test-send.js';

const PAGE_SIZE = 10;

export function renderList(main) {
  const kind = h('select', { onchange: (e) => { listState.kind = e.target.value; resetPaging(); load(); } },
    h('option', { value: '', text: t('allKinds') }),
    KINDS.map((k) => h('option', { value: k, text: t('kind_' + k), selected: listState.kind === k })));
  const state = h('select', { onchange: (e) => { listState.state = e.target.value; resetPaging(); load(); } },
    h('option', { value: '', text: t('allStates') }),
    h('option', { value: 'true', text: t('enabled'), selected: listState.state === 'true' }),
    h('option', { value: 'false', text: t('disabled'), selected: listState.state === 'false' }));
  let timer;
  const search = h('input', {
    type: 'search', value: listState.q, placeholder: t('searchPlaceholder'),
    oninput: (e) => { clearTimeout(timer); timer = setTimeout(() => { listState.q = e.target.value.trim(); resetPaging(); load(); }, 250); },
  });
  kind.value = listState.kind;
  state.value = listState.state;
  const tbody = h('tbody');
  const status = h('p.muted', { role: 'status' });
  const prev = h('button', { type: 'button', text: t('previous'), onclick: () => { listState.page--; load(); } });
  const next = h('button', { type: 'button', text: t('next'), onclick: () => { listState.page++; load(); } });
  const pageLabel = h('span.muted');
  main.replaceChildren(h('section', { 'aria-labelledby': 'list-title' },
    h('div.toolbar', {},
      h('h2', { id: 'list-title', text: t('touchpoints') }),
      h('a.button', { href: '#/audit', text: t('auditLog') }),
      h('a.button', { href: '#/notifications', text: t('notifications') }),
      h('button.primary', { type: 'button', text: t('addTouchpoint'), onclick: () => openEditor(null) })),
    h('form.filters', { role: 'search', onsubmit: (e) => e.preventDefault() },
      field(t('kind'), kind), field(t('state'), state), field(t('search'), search)),
    h('div.table-wrap', {}, h('table.list', {},
      h('caption.sr-only', { text: t('touchpoints') }),
      h('thead', {}, h('tr', {}, ['name', 'kind', 'urlHost', 'batchSize', 'receipt', 'state', 'spaces', 'success24h', 'actions']
        .map((k) => h('th', { scope: 'col', text: t('col_' + k) })))),
      tbody)),
    status,
    h('nav.pager', { 'aria-label': t('paging') }, prev, pageLabel, next)));

  async function load() {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (listState.kind) params.set('kind', listState.kind);
    if (listState.state) params.set('enabled', listState.state);
    if (listState.q) params.set('q', listState.q);
    const cursor = listState.cursors[listState.page];
    if (cursor) params.set('cursor', cursor);
    status.textContent = t('loading');
    let page;
    try {
      page = await api('GET', `/v1/touchpoints?${params}`);
    } catch (e) {
      status.textContent = e.message;
      return;
    }
    listState.cursors[listState.page + 1] = page.nextCursor || null;
    listState.cursors.length = listState.page + 2;
    prev.disabled = listState.page === 0;
    next.disabled = !page.nextCursor;
    pageLabel.textContent = t('pageN', { n: listState.page + 1 });
    status.textContent = page.items.length ? '' : t('noTouchpoints');
    const rateCells = new Map();
    tbody.replaceChildren(...page.items.map((tp) => {
      const rate = h('td.num', { text: '…' });
      rateCells.set(tp.id, rate);
      return row(tp, rate);
    }));
    listState.known = page.items;
    fillRates(rateCells);
  }

  load();
}

/** Fills each row's success rate over the last 24 hours, from one request for the whole page. */
async function fillRates(cells) {
  if (!cells.size) return;
  let rates = new Map();
  try {
    const ids = [...cells.keys()].map(enc).join(',');
    const stats = await api('GET', `/v1/stats/touchpoints?ids=${ids}&hours=24`);
    rates = new Map(stats.items.map((item) => [item.touchpointId, item.successRate]));
  } catch {
    // Every rate then shows as unknown.
  }
  for (const [id, cell] of cells) cell.textContent = fmtRate(rates.get(id));
}

function row(tp, rate) {
  const actions = h('div.actions', {},
    actionButton(t('edit'), tp.enabled ? t('editLocked') : null, () => openEditor(tp)),
    tp.enabled
      ? h('button', { type: 'button', text: t('disable'), onclick: () => disable(tp) })
      : h('button', { type: 'button', text: t('enable'), onclick: () => enable(tp) }),
    tp.health && tp.health.state === 'paused'
      ? h('button', { type: 'button', text: t('resume'), onclick: () => resume(tp) })
      : h('button', { type: 'button', text: t('pause'), onclick: () => openPause(tp) }),
    h('button', { type: 'button', text: t('authorize'), onclick: () => openSpaces(tp) }),
    h('button', { type: 'button', text: t('testSend'), onclick: () => openTest(tp) }),
    h('button', { type: 'button', text: t('rotateToken'), onclick: () => openRotate(tp) }),
    h('a.button', { href: `#/touchpoints/${enc(tp.id)}/delivery`, text: t('delivery') }),
    h('a.button', { href: `#/audit?touchpoint=${enc(tp.id)}`, text: t('history') }),
    actionButton(t('delete'), tp.enabled ? t('deleteLocked') : null, () => confirmDelete(tp), 'danger'));
  return h('tr', { 'data-id': tp.id },
    h('th', { scope: 'row' },
      h('button.link.name', { type: 'button', text: tp.name, title: t('showDetails'), onclick: () => openEditor(tp, true) }),
      tp.description ? h('span.sub', { text: tp.description }) : null),
    h('td', { text: t('kind_' + tp.kind) }),
    h('td', { text: hostOf(tp.url) }),
    h('td.num', { text: tp.batchSize }),
    h('td', { text: tp.receipt.mode === 'async' ? t('receiptAsync') : t('receiptSync') }),
    h('td', {}, h(`span.badge.${tp.enabled ? 'on' : 'off'}`, { text: tp.enabled ? t('enabled') : t('disabled') }),
      healthBadge(tp.health)),
    h('td', { text: tp.spaceIds.length ? tp.spaceIds.join(', ') : '—' }),
    rate,
    h('td', {}, actions));
}

/** The receiver's health when it is not healthy: paused (by an admin or the breaker) or degraded. */
function healthBadge(health) {
  if (!health || health.state === 'healthy') return null;
  const text = health.state === 'paused'
    ? (health.manual ? t('pausedByAdmin') : t('pausedByBreaker'))
    : t('degraded');
  const why = [health.reason, health.probeAt ? t('nextProbe', { at: fmtTime(health.probeAt) }) : null]
    .filter(Boolean).join(' · ');
  return h(`span.badge.${health.state}`, { text, title: why || null, 'data-health': health.state });
}

function openPause(tp) {
  const reason = h('input', { type: 'text', maxlength: '200', autocomplete: 'off' });
  const general = h('div.error-box', { role: 'alert', hidden: true });
  const body = h('div', {}, general, h('p', { text: t('pauseIntro', { name: tp.name }) }),
    field(t('pauseReason'), reason, { path: 'reason', wide: true }));
  openDialog(t('pauseTitle'), [body], [
    h('button', { type: 'button', text: t('cancel'), onclick: closeDialog }),
    h('button.primary', { type: 'submit', text: t('pause') }),
  ], async () => {
    clearErrors(body);
    general.hidden = true;
    try {
      const v = reason.value.trim();
      await api('POST', `/v1/touchpoints/${enc(tp.id)}/pause`, { reason: v || null, version: tp.version });
      closeDialog();
      toast(t('pausedToast', { name: tp.name }), 'ok');
      route();
    } catch (e) {
      showApiErrors(body, general, e);
    }
  });
}

async function resume(tp) {
  try {
    await api('POST', `/v1/touchpoints/${enc(tp.id)}/resume`, { version: tp.version });
    toast(t('resumedToast', { name: tp.name }), 'ok');
  } catch (e) {
    toast(e.message, 'error');
  }
  route();
}

/** A button that, when `lockedWhy` is set, stays focusable but explains instead of acting. */
function actionButton(label, lockedWhy, act, cls) {
  const b = h(`button${cls ? '.' + cls : ''}`, { type: 'button', text: label });
  if (lockedWhy) {
    b.setAttribute('aria-disabled', 'true');
    b.title = lockedWhy;
    const why = h('span.sr-only', { id: nextId('why'), text: lockedWhy });
    b.setAttribute('aria-describedby', why.id);
    b.addEventListener('click', () => toast(lockedWhy, 'info'));
    return h('span.locked', {}, b, why);
  }
  b.addEventListener('click', act);
  return b;
}

async function enable(tp) {
  try {
    await api('POST', `/v1/touchpoints/${enc(tp.id)}/enable`, { version: tp.version });
    toast(t('enabledToast', { name: tp.name }), 'ok');
  } catch (e) {
    toast(e.message, 'error');
  }
  route();
}

async function disable(tp) {
  try {
    await api('POST', `/v1/touchpoints/${enc(tp.id)}/disable`, { version: tp.version });
    toast(t('disabledToast', { name: tp.name }), 'ok');
    route();
  } catch (e) {
    if (e.body && e.body.error && e.body.error.code === 'touchpoint_in_use') {
      const campaigns = e.body.error.campaigns || [];
      openDialog(t('cannotDisable'), [
        h('p', { role: 'alert', text: t('cannotDisableWhy', { name: tp.name }) }),
        h('ul.campaigns', {}, campaigns.filter((c) => c.blocksDisable !== false).map((c) => h('li', {},
          h('strong', { text: c.name }), ' ', h('span.muted', { text: `${c.campaignId} · ${t('cstate_' + c.state)}` })))),
      ], [h('button.primary', { type: 'button', text: t('ok'), onclick: closeDialog })]);
    } else {
      toast(e.message, 'error');
      route();
    }
  }
}

function confirmDelete(tp) {
  openDialog(t('deleteTitle'), [h('p', { text: t('deleteConfirm', { name: tp.name }) })], [
    h('button', { type: 'button', text: t('cancel'), onclick: closeDialog }),
    h('button.danger', {
      type: 'button', text: t('delete'),
      onclick: async () => {
        try {
          await api('DELETE', `/v1/touchpoints/${enc(tp.id)}?version=${tp.version}`);
          closeDialog();
          toast(t('deletedToast', { name: tp.name }), 'ok');
          route();
        } catch (e) {
          closeDialog();
          toast(e.message, 'error');
        }
      },
    }),
  ]);
}
