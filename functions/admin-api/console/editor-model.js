// The touchpoint being added or edited, as a plain object the editor renders from and writes
// into, and the request body it becomes. Text fields hold what is typed, as typed; `toRequestBody`
// does the trimming and converting. Every function here is pure: it returns a new draft and
// leaves the one it was given alone, and none touches the page (so Node can test this module).
//
// A draft: { id, version, tokenSet (of the touchpoint edited; id null when adding),
//   name, kind, description, url, batchSize, requestTimeoutSeconds, maxConcurrency,
//   maxRequestsPerSecond (the last three '' when absent: the deployment's default applies), token, tokenMode ('keep' | 'replace' | 'clear'),
//   receiptMode ('sync' | 'async'), receiptUrl, timeoutMinutes,
//   userAttributes: [{ attribute, identifier, displayName, default }],
//   templateParams: [{ identifier, displayName, type, default, required,
//                      enumSource ('manual' | 'api'), multiple, options, optionsUrl }] }
// where `options` is the text of the options box, one `code | name` a line.

/** The draft of `tp`, or of a new touchpoint (`tp` null) with the defaults of `limits`. */
export function createDraft(tp, limits) {
  const v = tp || { name: '', kind: 'notification', url: '', batchSize: limits.batchDefault, receipt: { mode: 'sync' }, userAttributes: [], templateParams: [], description: '' };
  return {
    id: tp ? tp.id : null,
    version: tp ? tp.version : undefined,
    tokenSet: !!(tp && tp.tokenSet),
    name: v.name,
    kind: v.kind,
    description: v.description || '',
    url: v.url,
    batchSize: String(v.batchSize),
    requestTimeoutSeconds: optionalText(v.requestTimeoutSeconds),
    maxConcurrency: optionalText(v.maxConcurrency),
    maxRequestsPerSecond: optionalText(v.maxRequestsPerSecond),
    token: '',
    tokenMode: 'keep',
    receiptMode: v.receipt.mode,
    receiptUrl: v.receipt.receiptUrl || '',
    timeoutMinutes: String(v.receipt.timeoutMinutes || limits.timeoutDefault),
    userAttributes: (v.userAttributes || []).map(attributeDraft),
    templateParams: (v.templateParams || []).map(paramDraft),
  };
}

/** The text of an optional number: '' when the touchpoint has none. */
const optionalText = (n) => (n === undefined || n === null ? '' : String(n));

/** A row of `userAttributes`, from one of the API's (or an empty one). */
function attributeDraft(a = {}) {
  return {
    attribute: a.attribute || '',
    identifier: a.identifier || '',
    displayName: a.displayName || '',
    default: a.default === undefined ? '' : String(a.default),
  };
}

/** A row of `templateParams`, from one of the API's (or an empty one). */
function paramDraft(p = {}) {
  const e = p.enum || { source: 'manual', multiple: false, options: [] };
  return {
    identifier: p.identifier || '',
    displayName: p.displayName || '',
    type: p.type || 'text',
    default: p.default === undefined ? '' : Array.isArray(p.default) ? p.default.join(',') : String(p.default),
    required: !!p.required,
    enumSource: e.source === 'api' ? 'api' : 'manual',
    multiple: !!e.multiple,
    options: (e.options || []).map((o) => `${o.code} | ${o.name}`).join('\n'),
    optionsUrl: e.optionsUrl || '',
  };
}

const EMPTY_ROW = { userAttributes: attributeDraft, templateParams: paramDraft };

/** The draft with the top-level fields in `changes` set. */
export function update(draft, changes) {
  return { ...draft, ...changes };
}

/** The draft with an empty row at the end of `list` ('userAttributes' or 'templateParams'). */
export function addRow(draft, list) {
  return { ...draft, [list]: [...draft[list], EMPTY_ROW[list]()] };
}

/** The draft with the fields in `changes` set on row `index` of `list`. */
export function updateRow(draft, list, index, changes) {
  return { ...draft, [list]: draft[list].map((row, i) => (i === index ? { ...row, ...changes } : row)) };
}

export function removeRow(draft, list, index) {
  return { ...draft, [list]: draft[list].filter((_, i) => i !== index) };
}

/** The draft with row `from` of `list` moved to position `to`. */
export function moveRow(draft, list, from, to) {
  const rows = [...draft[list]];
  rows.splice(to, 0, ...rows.splice(from, 1));
  return { ...draft, [list]: rows };
}

/** What happens to the token on save: set or cleared only when asked, else kept. */
function tokenAction(draft) {
  if (draft.id !== null) return draft.tokenMode;
  return draft.token ? 'replace' : 'keep';
}

const numberOrNull = (text) => (text === '' ? null : Number(text));
/** A number as a number; anything else as typed, for the server to refuse at its path. */
const numberOrText = (text) => (Number.isNaN(Number(text)) ? text : Number(text));

/** The body of `POST /v1/touchpoints` (adding) or `PUT /v1/touchpoints/{id}` (editing). */
export function toRequestBody(draft) {
  const body = {
    name: draft.name,
    kind: draft.kind,
    url: draft.url.trim(),
    batchSize: numberOrNull(draft.batchSize),
    receipt: draft.receiptMode === 'async'
      ? { mode: 'async', receiptUrl: draft.receiptUrl.trim(), timeoutMinutes: numberOrNull(draft.timeoutMinutes) }
      : { mode: 'sync' },
    userAttributes: draft.userAttributes.map(attributeBody),
    templateParams: draft.templateParams.map(paramBody),
  };
  if (draft.description.trim()) body.description = draft.description.trim();
  // Left empty, these are absent and the deployment's defaults apply (its request timeout, 4 in
  // flight, no rate limit). An edit sends them as they are: the API replaces the touchpoint whole.
  for (const key of ['requestTimeoutSeconds', 'maxConcurrency', 'maxRequestsPerSecond']) {
    const text = draft[key].trim();
    if (text !== '') body[key] = numberOrText(text);
  }
  const token = tokenAction(draft);
  if (token === 'replace') body.token = draft.token;
  if (token === 'clear') body.token = null;
  if (draft.id !== null) body.version = draft.version;
  return body;
}

function attributeBody(row) {
  const a = { attribute: row.attribute.trim(), displayName: row.displayName.trim() };
  const id = row.identifier.trim();
  if (id) a.identifier = id;
  if (row.default !== '') a.default = row.default;
  return a;
}

function paramBody(p) {
  const out = { identifier: p.identifier.trim(), displayName: p.displayName.trim(), type: p.type, required: p.required };
  if (p.default !== '') {
    if (p.type === 'number' && p.default.trim() !== '' && !Number.isNaN(Number(p.default))) out.default = Number(p.default);
    else if (p.type === 'enum' && p.multiple) out.default = p.default.split(',').map((x) => x.trim()).filter(Boolean);
    else out.default = p.default;
  }
  if (p.type === 'enum') {
    out.enum = p.enumSource === 'api'
      ? { source: 'api', multiple: p.multiple, optionsUrl: p.optionsUrl.trim() }
      : { source: 'manual', multiple: p.multiple, options: parseOptions(p.options) };
  }
  return out;
}

/** The options typed one a line as `code | name` (or just `code`, which is then the name too). */
function parseOptions(text) {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
    const cut = l.indexOf('|');
    return cut < 0 ? { code: l, name: l } : { code: l.slice(0, cut).trim(), name: l.slice(cut + 1).trim() };
  });
}
