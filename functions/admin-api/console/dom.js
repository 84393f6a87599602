// Building the page: the `h` (HTML) and `s` (SVG) element builders, a labelled field with its
// error slot, the toast, and formatting values for display. Every value is put in the page as
// text, never as markup.
import { lang } from './state.js';

let uid = 0;
export const nextId = (p) => `${p}-${++uid}`;

/** h('tag.class', {attr: v, onclick: f}, ...children): children are nodes or text. */
export function h(spec, attrs, ...children) {
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
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** A labelled input with its error slot; `path` is the API field it edits. */
export function field(labelText, input, opts = {}) {
  input.id = input.id || nextId('f');
  if (opts.path) input.dataset.path = opts.path;
  const err = h('p.error', { id: input.id + '-err', hidden: true });
  const hint = opts.hint ? h('p.hint', { id: input.id + '-hint', text: opts.hint }) : null;
  if (hint) input.setAttribute('aria-describedby', hint.id);
  return h(`div.field${opts.wide ? '.wide' : ''}`, {},
    h('label', { for: input.id }, labelText, opts.required ? h('span.req', { 'aria-hidden': 'true', text: ' *' }) : null),
    opts.extra || null, input, hint, err);
}

/** Shows `message` in an error slot and ties it to the input it is about. */
export function showError(slot, input, message) {
  slot.textContent = message;
  slot.hidden = false;
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    const ids = new Set((input.getAttribute('aria-describedby') || '').split(' ').filter(Boolean));
    ids.add(slot.id);
    input.setAttribute('aria-describedby', [...ids].join(' '));
  }
}

export function clearErrors(root) {
  for (const e of root.querySelectorAll('.error')) { e.hidden = true; e.textContent = ''; }
  for (const i of root.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
}

let toastTimer;
export function toast(message, kind = 'info') {
  const box = document.getElementById('toast');
  box.replaceChildren(h(`div.toast.${kind}`, { text: message }));
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.replaceChildren(), 6000);
}

export const fmtNumber = (n) => new Intl.NumberFormat(lang === 'zh' ? 'zh-CN' : 'en').format(n);
export const fmtRate = (r) => (r === null || r === undefined ? '—' : `${(r * 100).toFixed(1)}%`);
export function fmtTime(iso, withDate = true) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString(lang === 'zh' ? 'zh-CN' : 'en', withDate
    ? { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { hour: '2-digit', minute: '2-digit' });
}
export function hostOf(url) {
  try { return new URL(url).host; } catch { return url; }
}
