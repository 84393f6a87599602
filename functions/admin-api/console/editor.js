// The add / edit dialog (read-only for an enabled touchpoint). It renders a draft from
// editor-model.js, writes every change of an input into it, and saves the body the draft makes.
// Each input carries the API path it edits (data-path), so the server's errors land beside it.
import { api, enc, KINDS, limits, TYPES } from './api.js';
import { closeDialog, openDialog, showApiErrors } from './dialog.js';
import { clearErrors, field, h, nextId, toast } from './dom.js';
import { addRow, createDraft, removeRow, toRequestBody, update, updateRow } from './editor-model.js';
import { t } from './i18n.js';
import { route } from './router.js';

/** The add / edit dialog; `readOnly` shows a touchpoint's settings without changing them. */
export function openEditor(tp, readOnly = false) {
  const editing = !!tp;
  let draft = createDraft(tp, limits);
  /** Applies a change from editor-model.js to the draft, and returns the new draft. */
  const edit = (change, ...args) => (draft = change(draft, ...args));
  const set = (key) => (value) => edit(update, { [key]: value });
  const root = h('div.editor');

  // Basic information
  const counter = h('span.counter', { 'aria-live': 'polite' });
  const count = () => {
    const n = [...draft.name].length;
    counter.textContent = `${n}/${limits.nameMax}`;
    counter.classList.toggle('over', n > limits.nameMax);
  };
  const name = onEdit(h('input', { type: 'text', value: draft.name, autocomplete: 'off' }), (value) => { edit(update, { name: value }); count(); });
  count();
  const kind = onEdit(h('select', { disabled: editing }, KINDS.map((k) => h('option', { value: k, text: t('kind_' + k), selected: draft.kind === k }))), set('kind'));
  const description = onEdit(h('textarea', { rows: '2', value: draft.description }), set('description'));
  const url = onEdit(h('input', { type: 'url', value: draft.url, placeholder: 'https://', autocomplete: 'off', spellcheck: 'false' }), set('url'));
  const batch = onEdit(h('input', { type: 'number', min: String(limits.batchMin), max: String(limits.batchMax), step: '1', value: draft.batchSize }), set('batchSize'));
  // Left empty, the deployment's defaults apply, which the placeholders show.
  const concurrency = onEdit(h('input', { type: 'number', min: String(limits.concurrencyMin), max: String(limits.concurrencyMax), step: '1', value: draft.maxConcurrency, placeholder: String(limits.concurrencyDefault) }), set('maxConcurrency'));
  const rate = onEdit(h('input', { type: 'number', min: String(limits.rateMin), max: String(limits.rateMax), step: '1', value: draft.maxRequestsPerSecond, placeholder: t('noLimit') }), set('maxRequestsPerSecond'));
  const requestTimeout = onEdit(h('input', { type: 'number', min: String(limits.requestTimeoutMin), max: String(limits.requestTimeoutMax), step: '1', value: draft.requestTimeoutSeconds, placeholder: t('deploymentDefault') }), set('requestTimeoutSeconds'));

  // Token: write-only
  const tokenInput = onEdit(h('input', { type: 'password', autocomplete: 'new-password', spellcheck: 'false' }), set('token'));
  let tokenField;
  if (editing) {
    const choiceName = nextId('tok');
    const choices = (draft.tokenSet ? ['keep', 'replace', 'clear'] : ['keep', 'replace']).map((c) => {
      const r = h('input', { type: 'radio', name: choiceName, value: c, checked: c === draft.tokenMode, id: nextId('r') });
      r.addEventListener('change', () => {
        edit(update, { tokenMode: c });
        tokenInput.disabled = draft.tokenMode !== 'replace';
        if (!tokenInput.disabled) tokenInput.focus();
      });
      return h('label.inline', { for: r.id }, r, ' ', t((draft.tokenSet ? 'token_' : 'tokenNone_') + c));
    });
    tokenInput.disabled = true;
    tokenField = h('fieldset.field.wide', {}, h('legend', { text: `${t('token')} — ${draft.tokenSet ? t('tokenIsSet') : t('tokenNotSet')}` }),
      h('div.choices', {}, choices), field(t('newToken'), tokenInput, { path: 'token', hint: t('tokenHint') }));
  } else {
    tokenField = field(t('tokenOptional'), tokenInput, { path: 'token', hint: t('tokenHint') });
  }

  // Receipt
  const modeName = nextId('mode');
  const receiptUrl = onEdit(h('input', { type: 'url', value: draft.receiptUrl, placeholder: 'https://', spellcheck: 'false' }), set('receiptUrl'));
  const timeout = onEdit(h('input', { type: 'number', min: String(limits.timeoutMin), max: String(limits.timeoutMax), step: '1', value: draft.timeoutMinutes }), set('timeoutMinutes'));
  const asyncPart = h('div.grid', {},
    field(t('receiptUrl'), receiptUrl, { path: 'receipt.receiptUrl', required: true }),
    field(t('receiptTimeout'), timeout, { path: 'receipt.timeoutMinutes', hint: t('receiptTimeoutHint') }));
  const modes = ['sync', 'async'].map((m) => {
    const r = h('input', { type: 'radio', name: modeName, value: m, checked: draft.receiptMode === m, id: nextId('r') });
    r.addEventListener('change', () => {
      edit(update, { receiptMode: m });
      asyncPart.hidden = draft.receiptMode !== 'async';
    });
    return h('label.inline', { for: r.id }, r, ' ', t(m === 'sync' ? 'receiptSyncLong' : 'receiptAsyncLong'));
  });
  asyncPart.hidden = draft.receiptMode !== 'async';

  // Send parameters
  const attrRows = h('tbody');
  const attrTable = h('table.rows', { id: nextId('attrs'), 'data-path': 'userAttributes' },
    h('caption', { text: t('userAttributes') }),
    h('thead', {}, h('tr', {}, ['attrSource', 'attrIdentifier', 'displayName', 'default', ''].map((k) => h('th', { scope: 'col', text: k ? t(k) : '' })))),
    attrRows);
  const paramRows = h('div.params', { id: nextId('params'), 'data-path': 'templateParams' });
  const rows = { userAttributes: attrRows, templateParams: paramRows };
  const remove = (list, rowEl) => {
    edit(removeRow, list, rowIndex(rowEl));
    rowEl.remove();
    renumber(rows[list], list);
  };
  const showAttr = (a, i) => attrRows.append(attributeRow(a, i, edit, remove));
  const showParam = (p, i) => paramRows.append(paramEditor(p, i, edit, remove));
  draft.userAttributes.forEach(showAttr);
  draft.templateParams.forEach(showParam);
  const addAttr = () => {
    const list = edit(addRow, 'userAttributes').userAttributes;
    showAttr(list[list.length - 1], list.length - 1);
    attrRows.lastChild.querySelector('input').focus();
  };
  const addParam = () => {
    const list = edit(addRow, 'templateParams').templateParams;
    showParam(list[list.length - 1], list.length - 1);
    paramRows.lastChild.querySelector('input').focus();
  };

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
        field(t('maxConcurrency'), concurrency, { path: 'maxConcurrency', hint: t('maxConcurrencyHint') }),
        field(t('maxRequestsPerSecond'), rate, { path: 'maxRequestsPerSecond', hint: t('maxRequestsPerSecondHint') }),
        field(t('requestTimeoutSeconds'), requestTimeout, { path: 'requestTimeoutSeconds', hint: t('requestTimeoutSecondsHint') }),
        field(t('description'), description, { path: 'description', wide: true })),
      h('fieldset.field.wide', {}, h('legend', { text: t('receiptMode') }), h('div.choices', {}, modes), asyncPart)),
    h('fieldset.section', {}, h('legend', { text: t('sendParams') }),
      h('div.table-wrap', {}, attrTable),
      h('p.error', { id: attrTable.id + '-err', hidden: true }),
      h('button', { type: 'button', text: t('addAttribute'), onclick: addAttr }),
      h('h3', { text: t('templateParams') }),
      paramRows,
      h('p.error', { id: paramRows.id + '-err', hidden: true }),
      h('button', { type: 'button', text: t('addParam'), onclick: addParam })));

  const save = async () => {
    clearErrors(root);
    general.hidden = true;
    const body = toRequestBody(draft);
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

/** A row of the user-attribute table for draft row `a`, at index `i`. */
function attributeRow(a, i, edit, remove) {
  const rowEl = h('tr.attr');
  const cell = (label, key, attrs) => {
    const input = onEdit(h('input', { type: 'text', value: a[key], ...attrs }),
      (value) => edit(updateRow, 'userAttributes', rowIndex(rowEl), { [key]: value }));
    input.dataset.path = `userAttributes[${i}].${key}`;
    input.setAttribute('aria-label', label);
    input.id = nextId('a');
    return h('td', {}, input, h('p.error', { id: input.id + '-err', hidden: true }));
  };
  rowEl.append(
    cell(t('attrSource'), 'attribute', { class: 'k-attribute' }),
    cell(t('attrIdentifier'), 'identifier', { class: 'k-identifier', placeholder: t('sameAsSource') }),
    cell(t('displayName'), 'displayName', { class: 'k-display' }),
    cell(t('default'), 'default', { class: 'k-default' }),
    h('td', {}, h('button.icon', { type: 'button', 'aria-label': t('removeRow'), text: '×', onclick: () => remove('userAttributes', rowEl) })));
  return rowEl;
}

/** The box of one template parameter for draft row `p`, at index `i`. */
function paramEditor(p, i, edit, remove) {
  const box = h('fieldset.param');
  const change = (changes) => {
    const at = rowIndex(box);
    show(edit(updateRow, 'templateParams', at, changes).templateParams[at]);
  };
  const bind = (key) => (value) => change({ [key]: value });
  const identifier = onEdit(h('input', { type: 'text', value: p.identifier }), bind('identifier'));
  const display = onEdit(h('input', { type: 'text', value: p.displayName }), bind('displayName'));
  const type = onEdit(h('select', {}, TYPES.map((x) => h('option', { value: x, text: t('type_' + x), selected: p.type === x }))), bind('type'));
  const def = onEdit(h('input', { type: 'text', value: p.default }), bind('default'));
  const required = onEdit(h('input', { type: 'checkbox', checked: p.required, id: nextId('c') }), bind('required'));
  const source = onEdit(h('select', {}, ['manual', 'api'].map((x) => h('option', { value: x, text: t('source_' + x), selected: p.enumSource === x }))), bind('enumSource'));
  const multiple = onEdit(h('input', { type: 'checkbox', checked: p.multiple, id: nextId('c') }), bind('multiple'));
  const options = onEdit(h('textarea', { rows: '3', value: p.options, placeholder: 'JUMP_H5 | 跳转到 h5 页面' }), bind('options'));
  const optionsUrl = onEdit(h('input', { type: 'url', value: p.optionsUrl, placeholder: 'https://' }), bind('optionsUrl'));
  const manualPart = field(t('enumOptions'), options, { hint: t('enumOptionsHint'), wide: true });
  const apiPart = field(t('optionsUrl'), optionsUrl, { wide: true });
  const enumPart = h('div.grid.enum', {},
    field(t('enumSource'), source),
    h('div.field', {}, h('label.inline', { for: multiple.id }, multiple, ' ', t('multiple'))),
    manualPart, apiPart);
  // Only an enum has options, entered here or read from a URL.
  const show = (row) => {
    enumPart.hidden = row.type !== 'enum';
    manualPart.hidden = row.enumSource !== 'manual';
    apiPart.hidden = row.enumSource !== 'api';
  };
  box.append(
    h('legend', { text: t('param') }),
    h('div.grid', {},
      field(t('paramIdentifier'), identifier, { required: true }),
      field(t('displayName'), display, { required: true }),
      field(t('type'), type),
      field(t('default'), def, { hint: t('defaultHint') }),
      h('div.field', {}, h('label.inline', { for: required.id }, required, ' ', t('required')))),
    enumPart,
    h('button.link', { type: 'button', text: t('removeParam'), onclick: () => remove('templateParams', box) }));
  show(p);
  // The API paths its inputs edit, where the server's errors about them are shown.
  const path = (suffix) => `templateParams[${i}]${suffix}`;
  identifier.dataset.path = path('.identifier');
  display.dataset.path = path('.displayName');
  type.dataset.path = path('.type');
  def.dataset.path = path('.default');
  required.dataset.path = path('.required');
  source.dataset.path = path('.enum.source');
  options.dataset.path = path('.enum.options');
  optionsUrl.dataset.path = path('.enum.optionsUrl');
  enumPart.dataset.path = path('.enum');
  return box;
}

/** Calls `write` with the input's value (a checkbox's checked state) each time it changes. */
function onEdit(input, write) {
  const checkbox = input.type === 'checkbox';
  input.addEventListener(checkbox || input.tagName === 'SELECT' ? 'change' : 'input', () => write(checkbox ? input.checked : input.value));
  return input;
}

/** Where a row (a table row or a parameter box) is in its list, which is its index in the draft. */
const rowIndex = (rowEl) => [...rowEl.parentNode.children].indexOf(rowEl);

/** After a row is removed, gives each row of `list` the paths of its place. */
function renumber(container, list) {
  [...container.children].forEach((rowEl, i) => rowEl.querySelectorAll('[data-path]').forEach((el) => {
    el.dataset.path = el.dataset.path.replace(/^\w+\[\d+\]/, `${list}[${i}]`);
  }));
}
