// The notifications page (#/notifications): where the project's operational webhooks go, the
// token they are signed with (write-only: left empty, the current one is kept) and which
// events are sent; save or remove.
import { api } from './api.js';
import { showApiErrors } from './dialog.js';
import { clearErrors, field, fmtTime, h, toast } from './dom.js';
import { t } from './i18n.js';

export const EVENTS = ['touchpoint.paused', 'touchpoint.resumed', 'dispatch.completed',
  'batch.retries_exhausted', 'receipt.timeout'];

export async function renderNotifications(main) {
  const status = h('p.muted', { role: 'status', text: t('loading') });
  main.replaceChildren(h('section', { 'aria-labelledby': 'notify-title' },
    h('div.toolbar', {},
      h('h2', { id: 'notify-title', text: t('notifications') }),
      h('a.button', { href: '#/', text: `← ${t('backToList')}` })),
    status));
  let current = null;
  try {
    current = await api('GET', '/v1/notifications');
  } catch (e) {
    if (e.status !== 404) {
      status.textContent = e.message;
      return;
    }
  }
  const url = h('input', { type: 'url', required: true, spellcheck: 'false', value: current ? current.url : '' });
  const token = h('input', {
    type: 'password', autocomplete: 'new-password', spellcheck: 'false', required: !current,
    placeholder: current ? t('tokenKept') : '',
  });
  const boxes = EVENTS.map((name) => h('input', {
    type: 'checkbox', value: name, checked: current ? current.events.includes(name) : true,
  }));
  const events = h('fieldset.events', { 'data-path': 'events' },
    h('legend', { text: t('notifyEvents') }),
    ...boxes.map((box) => h('label.check', {}, box, ' ', h('code', { text: box.value }), ' ',
      h('span.muted', { text: t('event_' + box.value.replaceAll('.', '_')) }))),
    h('p.error', { hidden: true }));
  const general = h('div.error-box', { role: 'alert', hidden: true });
  const remove = h('button.danger', { type: 'button', text: t('removeNotifications'), hidden: !current, onclick: removeAll });
  const form = h('form.notify', { onsubmit: save },
    general,
    h('p', { text: t('notifyIntro') }),
    field(t('notifyUrl'), url, { path: 'url', required: true, wide: true }),
    field(t('notifyToken'), token, { path: 'token', required: !current, wide: true, hint: t('notifyTokenHint') }),
    events,
    h('div.actions', {}, remove, h('button.primary', { type: 'submit', text: t('save') })),
    current ? h('p.muted', { text: t('notifyUpdated', { at: fmtTime(current.updatedAt) }) }) : null);
  status.replaceWith(form);

  async function save(ev) {
    ev.preventDefault();
    clearErrors(form);
    general.hidden = true;
    const body = { url: url.value.trim(), events: boxes.filter((b) => b.checked).map((b) => b.value) };
    if (token.value) body.token = token.value;
    try {
      await api('PUT', '/v1/notifications', body);
      toast(t('notifySaved'), 'ok');
      renderNotifications(main);
    } catch (e) {
      showApiErrors(form, general, e);
    }
  }

  async function removeAll() {
    if (!window.confirm(t('removeNotificationsConfirm'))) return;
    try {
      await api('DELETE', '/v1/notifications');
      toast(t('notifyRemoved'), 'ok');
      renderNotifications(main);
    } catch (e) {
      showApiErrors(form, general, e);
    }
  }
}
