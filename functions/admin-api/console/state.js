// The console's only shared state: the key the user signed in with (sessionStorage: this tab
// only, forgotten on sign-out or when the tab closes), the language (remembered in
// localStorage), and where the touchpoint list is (its filters and paging).

const KEY = 'touchpoint.key';
const LANG = 'touchpoint.lang';

export const signedInKey = () => sessionStorage.getItem(KEY);
export const keepKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

/** 'zh' or 'en'; set at start by `pickLanguage`, changed by `setLanguage`. */
export let lang = 'en';

/** The language saved for this browser, else the browser's own. */
export function pickLanguage() {
  const saved = localStorage.getItem(LANG);
  if (saved === 'zh' || saved === 'en') lang = saved;
  else lang = /^zh\b/i.test(navigator.language || '') ? 'zh' : 'en';
}

export function setLanguage(value) {
  lang = value;
  localStorage.setItem(LANG, value);
}

/** The list's filters, the cursor of each page seen so far, and the touchpoints on screen. */
export const listState = { kind: '', state: '', q: '', cursors: [null], page: 0, known: [] };

export function resetPaging() {
  listState.cursors = [null];
  listState.page = 0;
}
