// The token rotation dialog: a new token, and how many hours the old one stays in use beside it
// (the API's default and bound, read from its OpenAPI document). Allowed while enabled.
import { api, enc, limits } from './api.js';
import { closeDialog, openDialog, showApiErrors } from './dialog.js';
import { clearErrors, field, fmtTime, h, toast } from './dom.js';
import { t } from './i18n.js';
import { route } from './router.js';

export function openRotate(tp) {
  const token = h('input', { type: 'password', autocomplete: 'new-password', spellcheck: 'false', required: true });
  const hours = h('input', {
    type: 'number', min: '0', max: String(limits.overlapMax), step: 'any', value: String(limits.overlapDefault), required: true,
  });
  const general = h('div.error-box', { role: 'alert', hidden: true });
  const body = h('div', {}, general,
    h('p', { text: t('rotateIntro', { name: tp.name }) }),
    tp.tokenOverlapUntil && Date.parse(tp.tokenOverlapUntil) > Date.now()
      ? h('p.hint', { text: t('rotateInOverlap', { until: fmtTime(tp.tokenOverlapUntil) }) }) : null,
    field(t('newToken'), token, { path: 'token', required: true, wide: true }),
    field(t('overlapHours'), hours, { path: 'overlapHours', hint: t('overlapHint', { max: limits.overlapMax }) }));
  openDialog(t('rotateTitle'), [body], [
    h('button', { type: 'button', text: t('cancel'), onclick: closeDialog }),
    h('button.primary', { type: 'submit', text: t('rotate') }),
  ], async () => {
    clearErrors(body);
    general.hidden = true;
    const overlap = hours.value.trim() === '' ? null : Number(hours.value);
    try {
      const next = await api('POST', `/v1/touchpoints/${enc(tp.id)}/token/rotate`,
        { token: token.value, overlapHours: overlap, version: tp.version });
      closeDialog();
      toast(next.tokenOverlapUntil
        ? t('rotatedToast', { name: tp.name, until: fmtTime(next.tokenOverlapUntil) })
        : t('rotatedNowToast', { name: tp.name }), 'ok');
      route();
    } catch (e) {
      showApiErrors(body, general, e);
    }
  });
}
