// The console's editor model (functions/admin-api/console/editor-model.js) in plain Node: a
// draft made from a touchpoint or from the API's limits, edited, and the request body it makes.
// Run by `npm test` here, next to the browser tests; alone: node --test editor-model.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  addRow, createDraft, moveRow, removeRow, toRequestBody, update, updateRow,
} from '../../functions/admin-api/console/editor-model.js';

const LIMITS = { nameMax: 15, batchMin: 1, batchMax: 500, batchDefault: 500, timeoutMin: 5, timeoutMax: 10080, timeoutDefault: 60 };

/** A touchpoint as GET /v1/touchpoints/{id} answers it. */
const TOUCHPOINT = {
  id: 'tp_1',
  version: 7,
  name: 'SMS gateway',
  description: 'Sends texts',
  kind: 'benefit',
  url: 'https://sms.example.com/touch',
  tokenSet: true,
  batchSize: 100,
  enabled: false,
  spaceIds: ['space-a'],
  receipt: { mode: 'async', receiptUrl: 'https://sms.example.com/receipt', timeoutMinutes: 30 },
  userAttributes: [
    { attribute: 'usr_name', identifier: 'name', displayName: 'Name', default: 'member' },
    { attribute: 'usr_phone', displayName: 'Phone' },
  ],
  templateParams: [
    { identifier: 'title', displayName: 'Title', type: 'text', required: true },
    {
      identifier: 'jump', displayName: 'Jump', type: 'enum', required: true, default: 'NO_JUMP',
      enum: { source: 'manual', multiple: false, options: [{ code: 'JUMP_H5', name: '跳转到 h5 页面' }, { code: 'NO_JUMP', name: '无跳转' }] },
    },
  ],
};

/** Equal, and with the keys in the same order (the body is sent as JSON as it is built). */
function sameJson(actual, expected) {
  assert.deepEqual(actual, expected);
  assert.equal(JSON.stringify(actual), JSON.stringify(expected));
}

test('a draft of a touchpoint, unchanged, gives back its settings with its version and keeps the token', () => {
  const draft = createDraft(TOUCHPOINT, LIMITS);
  assert.equal(draft.batchSize, '100', 'inputs hold text');
  assert.equal(draft.templateParams[1].options, 'JUMP_H5 | 跳转到 h5 页面\nNO_JUMP | 无跳转');
  sameJson(toRequestBody(draft), {
    name: 'SMS gateway',
    kind: 'benefit',
    url: 'https://sms.example.com/touch',
    batchSize: 100,
    receipt: { mode: 'async', receiptUrl: 'https://sms.example.com/receipt', timeoutMinutes: 30 },
    userAttributes: [
      { attribute: 'usr_name', displayName: 'Name', identifier: 'name', default: 'member' },
      { attribute: 'usr_phone', displayName: 'Phone' },
    ],
    templateParams: [
      { identifier: 'title', displayName: 'Title', type: 'text', required: true },
      {
        identifier: 'jump', displayName: 'Jump', type: 'enum', required: true, default: 'NO_JUMP',
        enum: { source: 'manual', multiple: false, options: [{ code: 'JUMP_H5', name: '跳转到 h5 页面' }, { code: 'NO_JUMP', name: '无跳转' }] },
      },
    ],
    description: 'Sends texts',
    version: 7,
  });
});

test('edits, an added and a removed parameter make the body of the PUT', () => {
  let draft = createDraft(TOUCHPOINT, LIMITS);
  draft = update(draft, { batchSize: '200', url: '  https://sms.example.com/v2  ', receiptMode: 'sync', description: '   ' });
  draft = update(draft, { tokenMode: 'replace', token: 'whsec_new' });
  draft = updateRow(draft, 'userAttributes', 1, { identifier: ' phone ', default: '' });
  draft = removeRow(draft, 'templateParams', 0);
  draft = addRow(draft, 'templateParams');
  draft = updateRow(draft, 'templateParams', 1, { identifier: ' count ', displayName: 'Count', type: 'number', default: '3' });
  draft = addRow(draft, 'templateParams');
  draft = updateRow(draft, 'templateParams', 2, {
    identifier: 'channels', displayName: 'Channels', type: 'enum', multiple: true, default: 'A, B,',
    enumSource: 'api', optionsUrl: ' https://opts.example.com/channels ',
  });
  draft = updateRow(draft, 'templateParams', 0, { options: 'JUMP_H5 | h5\n\n  NO_JUMP  \n' });
  const body = toRequestBody(draft);
  sameJson(body, {
    name: 'SMS gateway',
    kind: 'benefit',
    url: 'https://sms.example.com/v2',
    batchSize: 200,
    receipt: { mode: 'sync' },
    userAttributes: [
      { attribute: 'usr_name', displayName: 'Name', identifier: 'name', default: 'member' },
      { attribute: 'usr_phone', displayName: 'Phone', identifier: 'phone' },
    ],
    templateParams: [
      {
        identifier: 'jump', displayName: 'Jump', type: 'enum', required: true, default: 'NO_JUMP',
        enum: { source: 'manual', multiple: false, options: [{ code: 'JUMP_H5', name: 'h5' }, { code: 'NO_JUMP', name: 'NO_JUMP' }] },
      },
      { identifier: 'count', displayName: 'Count', type: 'number', required: false, default: 3 },
      {
        identifier: 'channels', displayName: 'Channels', type: 'enum', required: false, default: ['A', 'B'],
        enum: { source: 'api', multiple: true, optionsUrl: 'https://opts.example.com/channels' },
      },
    ],
    token: 'whsec_new',
    version: 7,
  });
});

test('the token is sent only when replaced or cleared', () => {
  const draft = createDraft(TOUCHPOINT, LIMITS);
  assert.equal('token' in toRequestBody(update(draft, { token: 'typed, then kept' })), false);
  assert.equal(toRequestBody(update(draft, { tokenMode: 'clear' })).token, null);
  assert.equal(toRequestBody(update(draft, { tokenMode: 'replace', token: 'whsec_x' })).token, 'whsec_x');
});

test('a new touchpoint starts from the API limits and is sent without a version', () => {
  let draft = createDraft(null, LIMITS);
  assert.equal(draft.batchSize, '500');
  assert.equal(draft.timeoutMinutes, '60');
  sameJson(toRequestBody(draft), {
    name: '', kind: 'notification', url: '', batchSize: 500, receipt: { mode: 'sync' }, userAttributes: [], templateParams: [],
  });
  draft = update(draft, { name: 'Coupons', receiptMode: 'async', receiptUrl: 'https://r.example.com', batchSize: '', token: 'whsec_t' });
  draft = addRow(draft, 'userAttributes');
  draft = updateRow(draft, 'userAttributes', 0, { attribute: ' usr_id ', displayName: 'Id' });
  sameJson(toRequestBody(draft), {
    name: 'Coupons',
    kind: 'notification',
    url: '',
    batchSize: null,
    receipt: { mode: 'async', receiptUrl: 'https://r.example.com', timeoutMinutes: 60 },
    userAttributes: [{ attribute: 'usr_id', displayName: 'Id' }],
    templateParams: [],
    token: 'whsec_t',
  });
});

test('rows move, and no function changes the draft it is given', () => {
  const draft = createDraft(TOUCHPOINT, LIMITS);
  const before = JSON.stringify(draft);
  const moved = moveRow(draft, 'templateParams', 1, 0);
  assert.deepEqual(moved.templateParams.map((p) => p.identifier), ['jump', 'title']);
  update(draft, { name: 'x' });
  addRow(draft, 'userAttributes');
  updateRow(draft, 'userAttributes', 0, { attribute: 'x' });
  removeRow(draft, 'userAttributes', 0);
  toRequestBody(draft);
  assert.equal(JSON.stringify(draft), before);
});

test('the receiver limits are read into the draft as text and sent back as integers', () => {
  const tp = { ...TOUCHPOINT, maxConcurrency: 16, maxRequestsPerSecond: 10000 };
  let draft = createDraft(tp, LIMITS);
  assert.equal(draft.maxConcurrency, '16', 'inputs hold text');
  assert.equal(draft.maxRequestsPerSecond, '10000');
  let body = toRequestBody(draft);
  assert.equal(body.maxConcurrency, 16);
  assert.equal(body.maxRequestsPerSecond, 10000);
  draft = update(draft, { maxConcurrency: '1', maxRequestsPerSecond: ' 20 ' });
  body = toRequestBody(draft);
  assert.equal(body.maxConcurrency, 1);
  assert.equal(body.maxRequestsPerSecond, 20);
  assert.equal(typeof body.maxRequestsPerSecond, 'number');
});

test('the receiver limits, left empty, are absent so the deployment defaults apply', () => {
  const fresh = createDraft(null, LIMITS);
  assert.equal(fresh.maxConcurrency, '');
  assert.equal(fresh.maxRequestsPerSecond, '');
  const fromApi = createDraft(TOUCHPOINT, LIMITS);
  assert.equal(fromApi.maxConcurrency, '', 'a touchpoint without the fields');
  assert.equal(fromApi.maxRequestsPerSecond, '');
  for (const body of [toRequestBody(fresh), toRequestBody(fromApi)]) {
    assert.equal('maxConcurrency' in body, false);
    assert.equal('maxRequestsPerSecond' in body, false);
  }
  // Emptied on edit, they are dropped, which (a PUT replacing the touchpoint) removes them.
  const cleared = update(createDraft({ ...TOUCHPOINT, maxConcurrency: 8, maxRequestsPerSecond: 50 }, LIMITS),
    { maxConcurrency: '', maxRequestsPerSecond: '  ' });
  const body = toRequestBody(cleared);
  assert.equal('maxConcurrency' in body, false);
  assert.equal('maxRequestsPerSecond' in body, false);
});

test('an edit keeps a request timeout set through the API, and can change or clear it', () => {
  // The API replaces a touchpoint whole: a field the editor did not carry would be wiped.
  const tp = { ...TOUCHPOINT, requestTimeoutSeconds: 45 };
  let draft = createDraft(tp, LIMITS);
  assert.equal(draft.requestTimeoutSeconds, '45');
  assert.equal(toRequestBody(draft).requestTimeoutSeconds, 45, 'kept on an edit of something else');
  draft = update(draft, { requestTimeoutSeconds: ' 5 ' });
  assert.equal(toRequestBody(draft).requestTimeoutSeconds, 5);
  draft = update(draft, { requestTimeoutSeconds: '' });
  assert.equal('requestTimeoutSeconds' in toRequestBody(draft), false, 'emptied: the default applies');
  assert.equal(createDraft(null, LIMITS).requestTimeoutSeconds, '');
  assert.equal('requestTimeoutSeconds' in toRequestBody(createDraft(TOUCHPOINT, LIMITS)), false);
});

// The model checks no bounds (nor does it for batchSize or timeoutMinutes): out-of-range and
// fractional values go to the server unchanged, whose error names the field's path (the same
// key as the body's, the editor's data-path), so it is shown beside that input.
test('a maxConcurrency out of range or fractional is sent as typed, for the server to refuse at its path', () => {
  const draft = createDraft(TOUCHPOINT, LIMITS);
  for (const [typed, sent] of [['0', 0], ['65', 65], ['2.5', 2.5], ['abc', 'abc']]) {
    const body = toRequestBody(update(draft, { maxConcurrency: typed }));
    assert.equal(body.maxConcurrency, sent, `typed ${typed}`);
    assert.equal('maxRequestsPerSecond' in body, false);
  }
});

test('a maxRequestsPerSecond out of range or fractional is sent as typed, for the server to refuse at its path', () => {
  const draft = createDraft(TOUCHPOINT, LIMITS);
  for (const [typed, sent] of [['0', 0], ['10001', 10001], ['0.5', 0.5], ['-', '-']]) {
    const body = toRequestBody(update(draft, { maxRequestsPerSecond: typed }));
    assert.equal(body.maxRequestsPerSecond, sent, `typed ${typed}`);
    assert.equal('maxConcurrency' in body, false);
  }
});
