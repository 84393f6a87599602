// The touchpoint admin console's entry point: plain DOM modules, no framework, no build step.
// Every string comes from i18n.js; every value from the API is put in the page as text, never
// as markup. The key the user signs in with is sent only to this origin; touchpoint tokens are
// write-only and never come back from the API. This module wires the page's fixed controls and
// shows the first page once the API's limits are read; it is the only one acting on load.
import { loadLimits } from './api.js';
import { afterClose, closeDialog, dialog } from './dialog.js';
import { t } from './i18n.js';
import { route, signOut } from './router.js';
import { lang, pickLanguage, setLanguage } from './state.js';

/** Puts the current language into the page's fixed text (marked data-i18n / data-i18n-label). */
function applyStatic() {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  document.title = t('title') + ' · touchpoint';
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll('[data-i18n-label]')) el.setAttribute('aria-label', t(el.dataset.i18nLabel));
  document.getElementById('lang').value = lang;
}

pickLanguage();
applyStatic();
document.getElementById('lang').addEventListener('change', (e) => {
  setLanguage(e.target.value);
  applyStatic();
  if (!dialog().open) route();
});
document.getElementById('sign-out').addEventListener('click', () => signOut(null));
document.getElementById('dialog-close').addEventListener('click', closeDialog);
dialog().addEventListener('close', afterClose);
window.addEventListener('hashchange', route);
loadLimits().finally(route);
