// The spaces dialog: which spaces a touchpoint is authorized in, from those seen on the list
// page plus any typed in.
import { api, enc } from './api.js';
import { closeDialog, openDialog, showApiErrors } from './dialog.js';
import { clearErrors, field, h, nextId, toast } from './dom.js';
import { t } from './i18n.js';
import { route } from './router.js';
import { listState } from './state.js';

export function openSpaces(tp) {
  const list = h('ul.checks');
  const known = new Set([...tp.spaceIds, ...listState.known.flatMap((x) => x.spaceIds)]);
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
