// The touchpoint admin console: plain DOM, no framework, no build step. Every string comes
// from i18n.js; every value from the API is put in the page as text, never as markup. The key
// the user signs in with lives in sessionStorage (this tab only) and is sent only to this
// origin; touchpoint tokens are write-only and never come back from the API.
'use strict';

(() => {
  const KEY = 'touchpoint.key';
  const LANG = 'touchpoint.lang';
  const PAGE_SIZE = 10;
  const KINDS = ['notification', 'benefit', 'other'];
  const TYPES = ['text', 'date', 'number', 'enum'];

  // The limits the API enforces, read from its own OpenAPI document at start (the values here
  // are only what the form uses if that read fails), so the form and the server agree.
  const limits = { nameMax: 15, batchMin: 1, batchMax: 500, batchDefault: 500, timeoutMin: 5, timeoutMax: 10080, timeoutDefault: 60 };

  async function loadLimits() {
    try {
      const r = await fetch('/v1/openapi.json', { headers: { Accept: 'application/json' } });
      if (!r.ok) return;
      const schemas = (await r.json()).components.schemas;
      const p = schemas.TouchpointInput.properties;
      const receipt = schemas.ReceiptInput.oneOf.find((v) => v.properties?.mode?.enum?.includes('async'));
      const timeout = receipt?.properties?.timeoutMinutes ?? {};
      const pick = (v, fallback) => (Number.isFinite(v) ? v : fallback);
      limits.nameMax = pick(p.name?.maxLength, limits.nameMax);
      limits.batchMin = pick(p.batchSize?.minimum, limits.batchMin);
      limits.batchMax = pick(p.batchSize?.maximum, limits.batchMax);
      limits.batchDefault = pick(p.batchSize?.default, limits.batchDefault);
      limits.timeoutMin = pick(timeout.minimum, limits.timeoutMin);
      limits.timeoutMax = pick(timeout.maximum, limits.timeoutMax);
      limits.timeoutDefault = pick(timeout.default, limits.timeoutDefault);
    } catch (e) {
      console.warn('could not read the API limits; using built-in ones', e);
    }
  }

  // ---------------------------------------------------------------- language

  let lang = pickLanguage();

  function pickLanguage() {
    const saved = localStorage.getItem(LANG);
    if (saved === 'zh' || saved === 'en') return saved;
    return /^zh\b/i.test(navigator.language || '') ? 'zh' : 'en';
  }

  function t(key, vars) {
    let s = window.I18N[lang][key];
    if (s === undefined) {
      console.error('missing translation', lang, key);
      s = window.I18N.en[key] ?? key;
    }
    return s.replace(/\{(\w+)\}/g, (_, k) => (vars && vars[k] !== undefined ? String(vars[k]) : ''));
  }

  function applyStatic() {
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
    document.title = t('title') + ' · touchpoint';
    for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
    document.getElementById('lang').value = lang;
  }

  // ---------------------------------------------------------------- DOM helpers

  let uid = 0;
  const nextId = (p) => `${p}-${++uid}`;

  /** h('tag.class', {attr: v, onclick: f}, ...children): children are nodes or text. */
  function h(spec, attrs, ...children) {
    const [tag, ...classes] = spec.split('.');
    const el = document.createElement(tag);
    if (classes.length) el.className = classes.join(' ');
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else if (k === 'value') el.value = v;
      else if (k === 'checked' || k === 'selected' || k === 'disabled' || k === 'multiple') el[k] = !!v;
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  /** A labelled input with its error slot; `path` is the API field it edits. */
  function field(labelText, input, opts = {}) {
    input.id = input.id || nextId('f');
    if (opts.path) input.dataset.path = opts.path;
    const err = h('p.error', { id: input.id + '-err', hidden: true });
    const hint = opts.hint ? h('p.hint', { id: input.id + '-hint', text: opts.hint }) : null;
    if (hint) input.setAttribute('aria-describedby', hint.id);
    return h(`div.field${opts.wide ? '.wide' : ''}`, {},
      h('label', { for: input.id }, labelText, opts.required ? h('span.req', { 'aria-hidden': 'true', text: ' *' }) : null),
      opts.extra || null, input, hint, err);
  }

  function toast(message, kind = 'info') {
    const box = document.getElementById('toast');
    box.replaceChildren(h(`div.toast.${kind}`, { text: message }));
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => box.replaceChildren(), 6000);
  }

  const fmtNumber = (n) => new Intl.NumberFormat(lang === 'zh' ? 'zh-CN' : 'en').format(n);
  const fmtRate = (r) => (r === null || r === undefined ? '—' : `${(r * 100).toFixed(1)}%`);
  function fmtTime(iso, withDate = true) {
    if (!iso) return '—';
    const d = new Date(iso);
    return d.toLocaleString(lang === 'zh' ? 'zh-CN' : 'en', withDate
      ? { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }
      : { hour: '2-digit', minute: '2-digit' });
  }
  function hostOf(url) {
    try { return new URL(url).host; } catch { return url; }
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  /** Calls the API with the signed-in key; a 401 ends the session, unless `signingIn`. */
  async function api(method, path, body, { signingIn = false } = {}) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ''}`, Accept: 'application/json' };
    const init = { method, headers, redirect: 'error', cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { error: { code: 'network', message: t('networkError') } });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: { code: 'not_json', message: text.slice(0, 200) } }; }
    }
    if (response.status === 401 && !signingIn) {
      signOut(t('sessionEnded'));
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- routing

  function route() {
    const main = document.getElementById('main');
    document.getElementById('sign-out').hidden = !sessionStorage.getItem(KEY);
    if (!sessionStorage.getItem(KEY)) return renderSignIn(main);
    const hash = location.hash.replace(/^#/, '') || '/';
    const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
    if (parts[0] === 'touchpoints' && parts[2] === 'delivery') return renderDelivery(main, 'touchpoint', parts[1]);
    if (parts[0] === 'campaigns' && parts[2] === 'delivery') return renderDelivery(main, 'campaign', parts[1]);
    if (parts[0] === 'dispatches' && parts[1]) return renderDispatch(main, parts[1]);
    if (parts[0] === 'batches' && parts[1]) return renderBatch(main, parts[1]);
    return renderList(main);
  }

  function go(hash) {
    if (location.hash === hash) route(); else location.hash = hash;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    closeDialog();
    route();
    if (message) toast(message, 'error');
  }

  // ---------------------------------------------------------------- sign-in

  function renderSignIn(main) {
    const input = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
    const f = field(t('keyLabel'), input, { hint: t('keyHint') });
    const err = f.querySelector('.error');
    const form = h('form.card.signin', {
      onsubmit: async (e) => {
        e.preventDefault();
        const key = input.value.trim();
        if (!key) return showError(err, input, t('keyMissing'));
        sessionStorage.setItem(KEY, key);
        try {
          await api('GET', '/v1/touchpoints?limit=1', undefined, { signingIn: true });
          input.value = '';
          location.hash = '#/';
          route();
          document.getElementById('main').focus();
        } catch (ex) {
          sessionStorage.removeItem(KEY);
          showError(err, input, ex.status === 401 ? t('keyRefused') : ex.status === 403 ? t('keyNotAdmin') : ex.message);
          input.focus();
        }
      },
    }, h('h2', { text: t('signIn') }), h('p', { text: t('signInIntro') }), f,
    h('button.primary', { type: 'submit', text: t('signIn') }));
    main.replaceChildren(form);
    input.focus();
  }

  function showError(slot, input, message) {
    slot.textContent = message;
    slot.hidden = false;
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      const ids = new Set((input.getAttribute('aria-describedby') || '').split(' ').filter(Boolean));
      ids.add(slot.id);
      input.setAttribute('aria-describedby', [...ids].join(' '));
    }
  }

  function clearErrors(root) {
    for (const e of root.querySelectorAll('.error')) { e.hidden = true; e.textContent = ''; }
    for (const i of root.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
  }

  // ---------------------------------------------------------------- list

  const listState = { kind: '', state: '', q: '', cursors: [null], page: 0 };

  function renderList(main) {
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
      tbody.replaceChildren(...page.items.map(row));
      listState.known = page.items;
    }

    function row(tp) {
      const rate = h('td.num', { text: '…' });
      api('GET', `/v1/touchpoints/${enc(tp.id)}/stats?hours=24`).then(
        (st) => { rate.textContent = fmtRate(st.window.successRate); },
        () => { rate.textContent = '—'; });
      const lockedEdit = tp.enabled;
      const actions = h('div.actions', {},
        actionButton(t('edit'), lockedEdit ? t('editLocked') : null, () => openEditor(tp)),
        tp.enabled
          ? h('button', { type: 'button', text: t('disable'), onclick: () => disable(tp) })
          : h('button', { type: 'button', text: t('enable'), onclick: () => enable(tp) }),
        h('button', { type: 'button', text: t('authorize'), onclick: () => openSpaces(tp) }),
        h('button', { type: 'button', text: t('testSend'), onclick: () => openTest(tp) }),
        h('a.button', { href: `#/touchpoints/${enc(tp.id)}/delivery`, text: t('delivery') }),
        actionButton(t('delete'), tp.enabled ? t('deleteLocked') : null, () => confirmDelete(tp), 'danger'));
      return h('tr', { 'data-id': tp.id },
        h('th', { scope: 'row' },
          h('button.link.name', { type: 'button', text: tp.name, title: t('showDetails'), onclick: () => openEditor(tp, true) }),
          tp.description ? h('span.sub', { text: tp.description }) : null),
        h('td', { text: t('kind_' + tp.kind) }),
        h('td', { text: hostOf(tp.url) }),
        h('td.num', { text: tp.batchSize }),
        h('td', { text: tp.receipt.mode === 'async' ? t('receiptAsync') : t('receiptSync') }),
        h('td', {}, h(`span.badge.${tp.enabled ? 'on' : 'off'}`, { text: tp.enabled ? t('enabled') : t('disabled') })),
        h('td', { text: tp.spaceIds.length ? tp.spaceIds.join(', ') : '—' }),
        rate,
        h('td', {}, actions));
    }

    load();
  }

  function resetPaging() {
    listState.cursors = [null];
    listState.page = 0;
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

  // ---------------------------------------------------------------- dialog

  const dialog = () => document.getElementById('dialog');
  let returnFocus = null;

  function openDialog(title, body, foot, onSubmit) {
    const d = dialog();
    if (!d.open) returnFocus = document.activeElement;
    document.getElementById('dialog-title').textContent = title;
    document.getElementById('dialog-body').replaceChildren(...body);
    document.getElementById('dialog-foot').replaceChildren(...foot);
    document.getElementById('dialog-form').onsubmit = (e) => {
      e.preventDefault();
      if (onSubmit) onSubmit();
    };
    if (!d.open) d.showModal();
    const first = d.querySelector('#dialog-body input:not([type=hidden]), #dialog-body select, #dialog-body textarea, #dialog-foot button');
    if (first) first.focus({ preventScroll: true });
    document.getElementById('dialog-body').scrollTop = 0;
  }

  function closeDialog() {
    const d = dialog();
    if (d.open) d.close();
  }

  function afterClose() {
    // Nothing typed into a dialog (a token above all) stays in the page.
    document.getElementById('dialog-body').replaceChildren();
    document.getElementById('dialog-foot').replaceChildren();
    if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
    returnFocus = null;
  }

  // ---------------------------------------------------------------- add / edit

  /** The add / edit dialog; `readOnly` shows a touchpoint's settings without changing them. */
  function openEditor(tp, readOnly = false) {
    const editing = !!tp;
    const v = tp || { name: '', kind: 'notification', url: '', batchSize: limits.batchDefault, receipt: { mode: 'sync' }, userAttributes: [], templateParams: [], description: '' };
    const root = h('div.editor');

    // Basic information
    const name = h('input', { type: 'text', value: v.name, autocomplete: 'off' });
    const counter = h('span.counter', { 'aria-live': 'polite' });
    const count = () => {
      const n = [...name.value].length;
      counter.textContent = `${n}/${limits.nameMax}`;
      counter.classList.toggle('over', n > limits.nameMax);
    };
    name.addEventListener('input', count);
    count();
    const kind = h('select', { disabled: editing }, KINDS.map((k) => h('option', { value: k, text: t('kind_' + k), selected: v.kind === k })));
    const description = h('textarea', { rows: '2', value: v.description || '' });
    const url = h('input', { type: 'url', value: v.url, placeholder: 'https://', autocomplete: 'off', spellcheck: 'false' });
    const batch = h('input', { type: 'number', min: String(limits.batchMin), max: String(limits.batchMax), step: '1', value: String(v.batchSize) });

    // Token: write-only
    const tokenInput = h('input', { type: 'password', autocomplete: 'new-password', spellcheck: 'false' });
    let tokenMode = () => (tokenInput.value ? 'replace' : 'keep');
    let tokenField;
    if (editing) {
      const name_ = nextId('tok');
      const choices = (v.tokenSet ? ['keep', 'replace', 'clear'] : ['keep', 'replace']).map((c) => {
        const r = h('input', { type: 'radio', name: name_, value: c, checked: c === 'keep', id: nextId('r') });
        r.addEventListener('change', () => { tokenInput.disabled = c !== 'replace' || !r.checked; if (c === 'replace') tokenInput.focus(); });
        return h('label.inline', { for: r.id }, r, ' ', t((v.tokenSet ? 'token_' : 'tokenNone_') + c));
      });
      tokenInput.disabled = true;
      tokenMode = () => root.querySelector(`input[name="${name_}"]:checked`).value;
      tokenField = h('fieldset.field.wide', {}, h('legend', { text: `${t('token')} — ${v.tokenSet ? t('tokenIsSet') : t('tokenNotSet')}` }),
        h('div.choices', {}, choices), field(t('newToken'), tokenInput, { path: 'token', hint: t('tokenHint') }));
    } else {
      tokenField = field(t('tokenOptional'), tokenInput, { path: 'token', hint: t('tokenHint') });
    }

    // Receipt
    const modeName = nextId('mode');
    const receiptUrl = h('input', { type: 'url', value: v.receipt.receiptUrl || '', placeholder: 'https://', spellcheck: 'false' });
    const timeout = h('input', { type: 'number', min: String(limits.timeoutMin), max: String(limits.timeoutMax), step: '1', value: String(v.receipt.timeoutMinutes || limits.timeoutDefault) });
    const asyncPart = h('div.grid', {},
      field(t('receiptUrl'), receiptUrl, { path: 'receipt.receiptUrl', required: true }),
      field(t('receiptTimeout'), timeout, { path: 'receipt.timeoutMinutes', hint: t('receiptTimeoutHint') }));
    const modes = ['sync', 'async'].map((m) => {
      const r = h('input', { type: 'radio', name: modeName, value: m, checked: v.receipt.mode === m, id: nextId('r') });
      r.addEventListener('change', () => { asyncPart.hidden = m !== 'async'; });
      return h('label.inline', { for: r.id }, r, ' ', t(m === 'sync' ? 'receiptSyncLong' : 'receiptAsyncLong'));
    });
    asyncPart.hidden = v.receipt.mode !== 'async';

    // Send parameters
    const attrRows = h('tbody');
    const attrTable = h('table.rows', { id: nextId('attrs'), 'data-path': 'userAttributes' },
      h('caption', { text: t('userAttributes') }),
      h('thead', {}, h('tr', {}, ['attrSource', 'attrIdentifier', 'displayName', 'default', ''].map((k) => h('th', { scope: 'col', text: k ? t(k) : '' })))),
      attrRows);
    const addAttr = (a = {}) => {
      const i = attrRows.children.length;
      const cell = (label, input, path) => { input.dataset.path = path; input.setAttribute('aria-label', label); input.id = nextId('a'); const err = h('p.error', { id: input.id + '-err', hidden: true }); return h('td', {}, input, err); };
      const rowEl = h('tr.attr', {},
        cell(t('attrSource'), h('input', { type: 'text', value: a.attribute || '', class: 'k-attribute' }), `userAttributes[${i}].attribute`),
        cell(t('attrIdentifier'), h('input', { type: 'text', value: a.identifier || '', class: 'k-identifier', placeholder: t('sameAsSource') }), `userAttributes[${i}].identifier`),
        cell(t('displayName'), h('input', { type: 'text', value: a.displayName || '', class: 'k-display' }), `userAttributes[${i}].displayName`),
        cell(t('default'), h('input', { type: 'text', value: a.default === undefined ? '' : String(a.default), class: 'k-default' }), `userAttributes[${i}].default`),
        h('td', {}, h('button.icon', { type: 'button', 'aria-label': t('removeRow'), text: '×', onclick: () => { rowEl.remove(); renumber(); } })));
      attrRows.append(rowEl);
    };
    const paramRows = h('div.params', { id: nextId('params'), 'data-path': 'templateParams' });
    const addParam = (p = {}) => paramRows.append(paramEditor(p));
    const renumber = () => {
      [...attrRows.children].forEach((r, i) => r.querySelectorAll('[data-path]').forEach((el) => { el.dataset.path = el.dataset.path.replace(/^userAttributes\[\d+\]/, `userAttributes[${i}]`); }));
      [...paramRows.children].forEach((r, i) => r.querySelectorAll('[data-path]').forEach((el) => { el.dataset.path = el.dataset.path.replace(/^templateParams\[\d+\]/, `templateParams[${i}]`); }));
    };
    paramRows.renumber = renumber;
    (v.userAttributes || []).forEach(addAttr);
    (v.templateParams || []).forEach(addParam);

    const general = h('div.error-box', { role: 'alert', hidden: true });
    root.append(
      general,
      h('fieldset.section', {}, h('legend', { text: t('basicInfo') }),
        h('div.grid', {},
          field(t('name'), name, { path: 'name', required: true, extra: counter, hint: t('nameHint') }),
          field(t('kind'), kind, { path: 'kind', required: true, hint: editing ? t('kindLocked') : null }),
          field(t('url'), url, { path: 'url', required: true, wide: true, hint: t('urlHint') }),
          tokenField,
          field(t('batchSize'), batch, { path: 'batchSize', required: true, hint: t('batchHint') }),
          field(t('description'), description, { path: 'description', wide: true })),
        h('fieldset.field.wide', {}, h('legend', { text: t('receiptMode') }), h('div.choices', {}, modes), asyncPart)),
      h('fieldset.section', {}, h('legend', { text: t('sendParams') }),
        h('div.table-wrap', {}, attrTable),
        h('p.error', { id: attrTable.id + '-err', hidden: true }),
        h('button', { type: 'button', text: t('addAttribute'), onclick: () => { addAttr(); attrRows.lastChild.querySelector('input').focus(); } }),
        h('h3', { text: t('templateParams') }),
        paramRows,
        h('p.error', { id: paramRows.id + '-err', hidden: true }),
        h('button', { type: 'button', text: t('addParam'), onclick: () => { addParam(); paramRows.lastChild.querySelector('input').focus(); } })));

    const save = async () => {
      clearErrors(root);
      general.hidden = true;
      const body = {
        name: name.value,
        kind: kind.value,
        url: url.value.trim(),
        batchSize: batch.value === '' ? null : Number(batch.value),
        receipt: root.querySelector(`input[name="${modeName}"]:checked`).value === 'async'
          ? { mode: 'async', receiptUrl: receiptUrl.value.trim(), timeoutMinutes: timeout.value === '' ? null : Number(timeout.value) }
          : { mode: 'sync' },
        userAttributes: [...attrRows.children].map((r) => {
          const a = { attribute: r.querySelector('.k-attribute').value.trim(), displayName: r.querySelector('.k-display').value.trim() };
          const id = r.querySelector('.k-identifier').value.trim();
          const d = r.querySelector('.k-default').value;
          if (id) a.identifier = id;
          if (d !== '') a.default = d;
          return a;
        }),
        templateParams: [...paramRows.children].map((p) => p.read()),
      };
      if (description.value.trim()) body.description = description.value.trim();
      const mode = tokenMode();
      if (mode === 'replace') body.token = tokenInput.value;
      if (mode === 'clear') body.token = null;
      if (editing) body.version = tp.version;
      try {
        const saved = editing
          ? await api('PUT', `/v1/touchpoints/${enc(tp.id)}`, body)
          : await api('POST', '/v1/touchpoints', body);
        tokenInput.value = '';
        closeDialog();
        toast(t(editing ? 'savedToast' : 'createdToast', { name: saved.name }), 'ok');
        route();
      } catch (e) {
        showApiErrors(root, general, e);
      }
    };

    if (readOnly) {
      for (const el of root.querySelectorAll('input, select, textarea, button')) el.disabled = true;
      const foot = [h('button', { type: 'button', text: t('close'), onclick: closeDialog })];
      if (!tp.enabled) foot.push(h('button.primary', { type: 'button', text: t('edit'), onclick: () => openEditor(tp) }));
      root.prepend(h('p.muted', { text: tp.enabled ? t('editLocked') : t('detailsHint') }));
      openDialog(t('detailsTitle', { name: tp.name }), [root], foot, null);
      return;
    }
    openDialog(editing ? t('editTitle', { name: tp.name }) : t('addTitle'), [root], [
      h('button', { type: 'button', text: t('cancel'), onclick: closeDialog }),
      h('button.primary', { type: 'submit', text: t('save') }),
    ], save);
    name.focus({ preventScroll: true });
  }

  function paramEditor(p) {
    const box = h('fieldset.param');
    const index = () => (box.parentNode ? [...box.parentNode.children].indexOf(box) : 0);
    const path = (suffix) => `templateParams[${index()}]${suffix}`;
    const identifier = h('input', { type: 'text', value: p.identifier || '' });
    const display = h('input', { type: 'text', value: p.displayName || '' });
    const type = h('select', {}, TYPES.map((x) => h('option', { value: x, text: t('type_' + x), selected: (p.type || 'text') === x })));
    const def = h('input', { type: 'text', value: p.default === undefined ? '' : Array.isArray(p.default) ? p.default.join(',') : String(p.default) });
    const required = h('input', { type: 'checkbox', checked: !!p.required, id: nextId('c') });
    const e = p.enum || { source: 'manual', multiple: false, options: [] };
    const source = h('select', {}, ['manual', 'api'].map((x) => h('option', { value: x, text: t('source_' + x), selected: e.source === x })));
    const multiple = h('input', { type: 'checkbox', checked: !!e.multiple, id: nextId('c') });
    const options = h('textarea', { rows: '3', value: (e.options || []).map((o) => `${o.code} | ${o.name}`).join('\n'), placeholder: 'JUMP_H5 | 跳转到 h5 页面' });
    const optionsUrl = h('input', { type: 'url', value: e.optionsUrl || '', placeholder: 'https://' });
    const manualPart = field(t('enumOptions'), options, { hint: t('enumOptionsHint'), wide: true });
    const apiPart = field(t('optionsUrl'), optionsUrl, { wide: true });
    const enumPart = h('div.grid.enum', {},
      field(t('enumSource'), source),
      h('div.field', {}, h('label.inline', { for: multiple.id }, multiple, ' ', t('multiple'))),
      manualPart, apiPart);
    const sync = () => {
      enumPart.hidden = type.value !== 'enum';
      manualPart.hidden = source.value !== 'manual';
      apiPart.hidden = source.value !== 'api';
    };
    type.addEventListener('change', sync);
    source.addEventListener('change', sync);
    box.append(
      h('legend', { text: t('param') }),
      h('div.grid', {},
        field(t('paramIdentifier'), identifier, { required: true }),
        field(t('displayName'), display, { required: true }),
        field(t('type'), type),
        field(t('default'), def, { hint: t('defaultHint') }),
        h('div.field', {}, h('label.inline', { for: required.id }, required, ' ', t('required')))),
      enumPart,
      h('button.link', { type: 'button', text: t('removeParam'), onclick: () => { const parent = box.parentNode; box.remove(); parent.renumber && parent.renumber(); } }));
    // Paths are assigned when the box is in the list, and renumbered when a box is removed.
    queueMicrotask(() => {
      identifier.dataset.path = path('.identifier');
      display.dataset.path = path('.displayName');
      type.dataset.path = path('.type');
      def.dataset.path = path('.default');
      required.dataset.path = path('.required');
      source.dataset.path = path('.enum.source');
      options.dataset.path = path('.enum.options');
      optionsUrl.dataset.path = path('.enum.optionsUrl');
      enumPart.dataset.path = path('.enum');
    });
    sync();
    box.read = () => {
      const out = { identifier: identifier.value.trim(), displayName: display.value.trim(), type: type.value, required: required.checked };
      if (def.value !== '') {
        if (type.value === 'number' && def.value.trim() !== '' && !Number.isNaN(Number(def.value))) out.default = Number(def.value);
        else if (type.value === 'enum' && multiple.checked) out.default = def.value.split(',').map((x) => x.trim()).filter(Boolean);
        else out.default = def.value;
      }
      if (type.value === 'enum') {
        out.enum = source.value === 'api'
          ? { source: 'api', multiple: multiple.checked, optionsUrl: optionsUrl.value.trim() }
          : {
            source: 'manual', multiple: multiple.checked,
            options: options.value.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
              const cut = l.indexOf('|');
              return cut < 0 ? { code: l, name: l } : { code: l.slice(0, cut).trim(), name: l.slice(cut + 1).trim() };
            }),
          };
      }
      return out;
    };
    return box;
  }

  /** Puts each server validation error next to the field it names; the rest on top. */
  function showApiErrors(root, general, e) {
    const details = (e.body && e.body.error && e.body.error.details) || [];
    const inputs = [...root.querySelectorAll('[data-path]')];
    const leftover = [];
    let first = null;
    for (const d of details) {
      // The field whose path is the longest prefix of the error's path.
      let best = null;
      for (const el of inputs) {
        const p = el.dataset.path;
        if ((d.path === p || d.path.startsWith(p + '.') || d.path.startsWith(p + '[')) && (!best || p.length > best.dataset.path.length)) best = el;
      }
      const slot = best && (document.getElementById(best.id + '-err') || best.closest('.field, td, .grid')?.querySelector('.error'));
      if (best && slot) {
        const prev = slot.hidden ? '' : slot.textContent + ' ';
        showError(slot, best.matches('input, select, textarea') ? best : null, prev + d.message);
        if (!first && best.matches('input, select, textarea')) first = best;
      } else {
        leftover.push(d.path ? `${d.path}: ${d.message}` : d.message);
      }
    }
    if (!details.length) leftover.push(e.message);
    if (leftover.length) {
      general.replaceChildren(h('p', { text: details.length ? t('fixFields') : '' }), h('ul', {}, leftover.map((m) => h('li', { text: m }))));
      general.hidden = false;
    }
    if (first) first.focus();
    else (general.hidden ? root.querySelector('.error:not([hidden])') : general)?.scrollIntoView({ block: 'nearest' });
  }

  // ---------------------------------------------------------------- spaces

  function openSpaces(tp) {
    const list = h('ul.checks');
    const known = new Set([...tp.spaceIds, ...((listState.known || []).flatMap((x) => x.spaceIds))]);
    const add = (space, checked) => {
      if ([...list.querySelectorAll('input')].some((i) => i.value === space)) return;
      const c = h('input', { type: 'checkbox', value: space, checked, id: nextId('s') });
      list.append(h('li', {}, h('label.inline', { for: c.id }, c, ' ', space)));
    };
    [...known].sort().forEach((sp) => add(sp, tp.spaceIds.includes(sp)));
    const input = h('input', { type: 'text', autocomplete: 'off', placeholder: 'space-a' });
    const addField = field(t('addSpace'), input, { path: 'spaceIds', hint: t('addSpaceHint') });
    const addNow = () => {
      const v = input.value.trim();
      if (v) { add(v, true); input.value = ''; input.focus(); }
    };
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); addNow(); } });
    const general = h('div.error-box', { role: 'alert', hidden: true });
    const body = h('div', {}, general,
      h('fieldset.field', {}, h('legend', { text: t('spacesFor', { name: tp.name }) }), list),
      h('div.inline-add', {}, addField, h('button', { type: 'button', text: t('add'), onclick: addNow })));
    openDialog(t('authorizeTitle'), [body], [
      h('button', { type: 'button', text: t('cancel'), onclick: closeDialog }),
      h('button.primary', { type: 'submit', text: t('save') }),
    ], async () => {
      clearErrors(body);
      general.hidden = true;
      const spaceIds = [...list.querySelectorAll('input:checked')].map((i) => i.value);
      try {
        await api('PUT', `/v1/touchpoints/${enc(tp.id)}/spaces`, { spaceIds, version: tp.version });
        closeDialog();
        toast(t('spacesSaved', { name: tp.name }), 'ok');
        route();
      } catch (e) {
        showApiErrors(body, general, e);
      }
    });
  }

  // ---------------------------------------------------------------- test send

  function openTest(tp) {
    const form = h('div.test');
    const gid = h('input', { type: 'number', step: '1', min: '0', value: '1' });
    const attrInputs = (tp.userAttributes || []).map((a) => {
      const input = h('input', { type: 'text' });
      input.dataset.attribute = a.attribute;
      return field(`${a.displayName} (${a.attribute})`, input, { hint: a.default !== undefined ? t('defaultIs', { value: a.default }) : null });
    });
    const idents = (tp.userAttributes || []).map((a) => a.identifier || a.attribute);
    const values = [];
    const paramFields = (tp.templateParams || []).map((p) => {
      let input;
      if (p.type === 'date') input = h('input', { type: 'date' });
      else if (p.type === 'number') input = h('input', { type: 'number', step: 'any' });
      else if (p.type === 'enum') {
        input = h('select', { multiple: !!(p.enum && p.enum.multiple) }, h('option', { value: '', text: t('loading') }));
        loadOptions(tp, p, input);
      } else input = h('textarea', { rows: '2' });
      if (p.default !== undefined && p.type !== 'enum') input.value = String(p.default);
      input.dataset.path = `templateValues.${p.identifier}`;
      let extra = null;
      if (p.type === 'text' && idents.length) {
        const pick = h('select', { 'aria-label': t('insertAttribute') }, h('option', { value: '', text: t('insertAttribute') }), idents.map((i) => h('option', { value: i, text: `{{${i}}}` })));
        pick.addEventListener('change', () => {
          if (!pick.value) return;
          const token = `{{${pick.value}}}`;
          const at = input.selectionStart ?? input.value.length;
          input.value = input.value.slice(0, at) + token + input.value.slice(input.selectionEnd ?? at);
          input.focus();
          input.selectionStart = input.selectionEnd = at + token.length;
          pick.value = '';
        });
        extra = pick;
      }
      values.push({ p, input });
      const f = field(`${p.displayName} (${p.identifier})`, input, { required: p.required, hint: p.type === 'date' ? t('dateHint') : null });
      if (extra) f.append(extra);
      return f;
    });
    const general = h('div.error-box', { role: 'alert', hidden: true });
    const result = h('section.result', { 'aria-live': 'polite' });
    form.append(general,
      h('fieldset.section', {}, h('legend', { text: t('testUser') }), h('div.grid', {}, field('gid', gid, { path: 'users[0].gid', required: true }), attrInputs)),
      paramFields.length ? h('fieldset.section', {}, h('legend', { text: t('templateParams') }), h('div.grid', {}, paramFields)) : null,
      result);
    const send = async () => {
      clearErrors(form);
      general.hidden = true;
      const attributes = {};
      for (const i of form.querySelectorAll('input[data-attribute]')) if (i.value !== '') attributes[i.dataset.attribute] = i.value;
      const templateValues = {};
      for (const { p, input } of values) {
        if (input.tagName === 'SELECT' && input.multiple) {
          const picked = [...input.selectedOptions].map((o) => o.value).filter(Boolean);
          if (picked.length) templateValues[p.identifier] = picked;
        } else if (input.value !== '') {
          templateValues[p.identifier] = p.type === 'number' ? Number(input.value) : input.value;
        }
      }
      result.replaceChildren(h('p.muted', { text: t('sending') }));
      try {
        const report = await api('POST', `/v1/touchpoints/${enc(tp.id)}/test`, { users: [{ gid: Number(gid.value), attributes }], templateValues });
        result.replaceChildren(...testReport(report));
      } catch (e) {
        result.replaceChildren();
        showApiErrors(form, general, e);
      }
    };
    openDialog(t('testTitle', { name: tp.name }), [form], [
      h('button', { type: 'button', text: t('close'), onclick: closeDialog }),
      h('button.primary', { type: 'submit', text: t('send') }),
    ], send);
  }

  async function loadOptions(tp, p, select) {
    try {
      const view = await api('GET', `/v1/touchpoints/${enc(tp.id)}/params/${enc(p.identifier)}/options`);
      const flat = [];
      const walk = (nodes, depth) => nodes.forEach((n) => { flat.push([n, depth]); walk(n.children || [], depth + 1); });
      walk(view.options, 0);
      select.replaceChildren(...(select.multiple ? [] : [h('option', { value: '', text: t('choose') })]),
        ...flat.map(([n, depth]) => h('option', { value: n.code, text: `${'  '.repeat(depth)}${n.name} (${n.code})`, selected: p.default === n.code || (Array.isArray(p.default) && p.default.includes(n.code)) })));
    } catch (e) {
      select.replaceChildren(h('option', { value: '', text: t('optionsFailed', { message: e.message }) }));
    }
  }

  function testReport(r) {
    const ok = r.ok === true;
    const rows = (r.results || []).map((u) => h('tr', {},
      h('td.num', { text: u.gid }), h('td', {}, h(`span.badge.${u.status === 'TOU_SUCC' ? 'on' : u.status === 'PENDING' ? 'wait' : 'off'}`, { text: u.status })), h('td', { text: u.errorMsg || '' })));
    return [
      h('h3', { text: t('testResult') }),
      h('dl.facts', {},
        h('dt', { text: t('httpStatus') }), h('dd', {}, h(`span.badge.${ok ? 'on' : 'off'}`, { text: r.httpStatus ?? '—' })),
        h('dt', { text: t('latency') }), h('dd', { text: r.latencyMs === null || r.latencyMs === undefined ? '—' : `${r.latencyMs} ms` }),
        h('dt', { text: 'orderNo' }), h('dd', {}, h('code', { text: r.orderNo })),
        r.error ? h('dt', { text: t('error') }) : null, r.error ? h('dd.error-text', { text: r.error }) : null),
      h('table.small', {}, h('caption', { text: t('receiptPerUser') }),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'gid' }), h('th', { scope: 'col', text: t('status') }), h('th', { scope: 'col', text: t('reason') }))),
        h('tbody', {}, rows)),
      h('details', {}, h('summary', { text: t('requestSent') }), h('pre', { text: JSON.stringify(r.request, null, 2) })),
      r.responseExcerpt ? h('details', {}, h('summary', { text: t('responseReceived') }), h('pre', { text: r.responseExcerpt })) : null,
    ];
  }

  // ---------------------------------------------------------------- delivery

  function back() {
    return h('p', {}, h('a', { href: '#/', text: `← ${t('backToList')}` }));
  }

  async function renderDelivery(main, scope, id, hours = 24) {
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

  async function renderDispatch(main, id) {
    const body = h('div', {}, h('p.muted', { role: 'status', text: t('loading') }));
    main.replaceChildren(h('section', {}, back(), h('h2', { text: t('dispatchTitle', { id }) }), body));
    try {
      const d = await api('GET', `/v1/dispatches/${enc(id)}`);
      const c = d.counts || {};
      body.replaceChildren(
        h('dl.facts', {},
          h('dt', { text: t('state') }), h('dd', { text: t('dstate_' + d.state) }),
          d.campaignId ? h('dt', { text: t('campaign') }) : null, d.campaignId ? h('dd', {}, h('a', { href: `#/campaigns/${enc(d.campaignId)}/delivery`, text: d.campaignId })) : null,
          d.touchpointId ? h('dt', { text: t('touchpoint') }) : null, d.touchpointId ? h('dd', {}, h('a', { href: `#/touchpoints/${enc(d.touchpointId)}/delivery`, text: d.touchpointId })) : null,
          h('dt', { text: t('receivedAt') }), h('dd', { text: fmtTime(d.receivedAt) }),
          d.rejected ? h('dt', { text: t('rejected') }) : null, d.rejected ? h('dd.error-text', { text: d.rejected }) : null),
        d.counts ? h('div.cards', {}, card(t('users'), fmtNumber(c.users)), card(t('succeeded'), fmtNumber(c.succeeded), 'ok'), card(t('failed'), fmtNumber(c.failed), 'bad'), card(t('pending'), fmtNumber(c.pending), 'wait')) : null,
        h('table.small', {}, h('caption', { text: t('batches') }),
          h('thead', {}, h('tr', {}, ['batchNo', 'state', 'users', 'succeeded', 'failed', 'attempts', 'httpStatus', 'error'].map((k) => h('th', { scope: 'col', text: t(k) })))),
          h('tbody', {}, (d.batches || []).map((b) => h('tr', {},
            h('td', {}, h('a', { href: `#/batches/${enc(b.orderNo)}`, text: `#${b.index < 0 ? '—' : b.index + 1}` })),
            h('td', { text: t('bstate_' + b.state) }), h('td.num', { text: b.users }), h('td.num', { text: b.succeeded }), h('td.num', { text: b.failed }),
            h('td.num', { text: b.attempts }), h('td', { text: b.lastHttpStatus ?? '—' }), h('td', { text: b.lastError || '' }))))));
    } catch (e) {
      body.replaceChildren(h('p.error-text', { role: 'alert', text: e.status === 404 ? t('noSuchDispatch') : e.message }));
    }
  }

  async function renderBatch(main, order) {
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

  // ---------------------------------------------------------------- start

  document.addEventListener('DOMContentLoaded', () => {
    applyStatic();
    document.getElementById('lang').addEventListener('change', (e) => {
      lang = e.target.value;
      localStorage.setItem(LANG, lang);
      applyStatic();
      if (!dialog().open) route();
    });
    document.getElementById('sign-out').addEventListener('click', () => signOut(null));
    document.getElementById('dialog-close').addEventListener('click', closeDialog);
    dialog().addEventListener('close', afterClose);
    window.addEventListener('hashchange', route);
    loadLimits().finally(route);
  });
})();
