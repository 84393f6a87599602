// The test-send dialog: one user and the template values sent to a touchpoint now, and the
// report of what was sent and what came back.
import { api, enc } from './api.js';
import { closeDialog, openDialog, showApiErrors } from './dialog.js';
import { clearErrors, field, h } from './dom.js';
import { t } from './i18n.js';

export function openTest(tp) {
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
