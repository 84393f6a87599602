// Which page shows: the sign-in form until a key is kept, then the page the address's hash
// names (#/, #/touchpoints/{id}/delivery, #/campaigns/{id}/delivery, #/dispatches/{id},
// #/dispatches/{id}?from={batch index}, #/batches/{orderNo}, #/audit, #/audit?touchpoint={id},
// #/notifications);
// and signing in and out. Path
// segments are URL-encoded, so a `?` in the hash starts its query.
import { api } from './api.js';
import { renderAudit } from './audit.js';
import { renderBatch, renderDelivery, renderDispatch } from './delivery.js';
import { closeDialog } from './dialog.js';
import { field, h, showError, toast } from './dom.js';
import { t } from './i18n.js';
import { renderList } from './list.js';
import { renderNotifications } from './notifications.js';
import { forgetKey, keepKey, signedInKey } from './state.js';

/** Shows the page for the current address. */
export function route() {
  const main = document.getElementById('main');
  document.getElementById('sign-out').hidden = !signedInKey();
  if (!signedInKey()) return renderSignIn(main);
  const hash = location.hash.replace(/^#/, '') || '/';
  const q = hash.indexOf('?');
  const query = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
  const parts = (q < 0 ? hash : hash.slice(0, q)).split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'touchpoints' && parts[2] === 'delivery') return renderDelivery(main, 'touchpoint', parts[1]);
  if (parts[0] === 'campaigns' && parts[2] === 'delivery') return renderDelivery(main, 'campaign', parts[1]);
  if (parts[0] === 'dispatches' && parts[1]) return renderDispatch(main, parts[1], index(query.get('from')));
  if (parts[0] === 'batches' && parts[1]) return renderBatch(main, parts[1]);
  if (parts[0] === 'audit') return renderAudit(main, query.get('touchpoint'));
  if (parts[0] === 'notifications') return renderNotifications(main);
  return renderList(main);
}

/** A query value that is a whole number ≥ 0, else 0. */
function index(value) {
  const n = /^\d+$/.test(value || '') ? Number(value) : 0;
  return Number.isSafeInteger(n) ? n : 0;
}

export function go(hash) {
  if (location.hash === hash) route(); else location.hash = hash;
}

export function signOut(message) {
  forgetKey();
  closeDialog();
  route();
  if (message) toast(message, 'error');
}

function renderSignIn(main) {
  const input = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  const f = field(t('keyLabel'), input, { hint: t('keyHint') });
  const err = f.querySelector('.error');
  const form = h('form.card.signin', {
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return showError(err, input, t('keyMissing'));
      keepKey(key);
      try {
        await api('GET', '/v1/touchpoints?limit=1', undefined, { signingIn: true });
        input.value = '';
        location.hash = '#/';
        route();
        document.getElementById('main').focus();
      } catch (ex) {
        forgetKey();
        showError(err, input, ex.status === 401 ? t('keyRefused') : ex.status === 403 ? t('keyNotAdmin') : ex.message);
        input.focus();
      }
    },
  }, h('h2', { text: t('signIn') }), h('p', { text: t('signInIntro') }), f,
  h('button.primary', { type: 'submit', text: t('signIn') }));
  main.replaceChildren(form);
  input.focus();
}
