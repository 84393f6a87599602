// The page's one modal dialog (add / edit, spaces, test send, confirmations): opening it with a
// title, body and buttons, closing it without leaving anything typed into it in the page, and
// putting the API's validation errors next to the fields they name.
import { h, showError } from './dom.js';
import { t } from './i18n.js';

export const dialog = () => document.getElementById('dialog');
let returnFocus = null;

/** Shows the dialog; `onSubmit` runs when its form is submitted (Enter, or a submit button). */
export function openDialog(title, body, foot, onSubmit) {
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

export function closeDialog() {
  const d = dialog();
  if (d.open) d.close();
}

/** On the dialog's `close` event. */
export function afterClose() {
  // Nothing typed into a dialog (a token above all) stays in the page.
  document.getElementById('dialog-body').replaceChildren();
  document.getElementById('dialog-foot').replaceChildren();
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
  returnFocus = null;
}

/** Puts each server validation error next to the field it names; the rest on top. */
export function showApiErrors(root, general, e) {
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
