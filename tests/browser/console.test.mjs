// The admin console in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real local binary on a free port, with the project's reference
// receiver for test sends and a small receiver here that fails every third user.
//
// Run by infra/test.sh; by hand: cargo build -p touchpoint-local && (cd tests/browser &&
// npm ci && npm test). Screenshots go to target/browser-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.TOUCHPOINT_BIN || join(ROOT, 'target/debug/touchpoint');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'target/browser-artifacts');
const ADMIN = 'console-admin-key-7d1f0a';
const CAMPAIGN = 'console-campaign-key-99b2';
// The touchpoint token typed into the dialog: it must never come back.
const TOKEN = 'whsec_c2VjcmV0LWJyb3dzZXItdG9rZW4tNDI=';
// The token a rotation brings in: it must never come back either.
const ROTATED = 'rotated-browser-token-5e1b';
const NOTIFY_TOKEN = 'notify-browser-token-77aa';
/** How the audit log names an API key: `key-` and the first 8 hex digits of its SHA-256. */
const keyId = (key) => `key-${createHash('sha256').update(key).digest('hex').slice(0, 8)}`;

// What every touchpoint created through the API here carries (at least one of each is required).
const PARAMS = {
  userAttributes: [{ attribute: 'usr_phone', identifier: 'phone', displayName: 'Phone' }],
  templateParams: [{ identifier: 'title', displayName: 'Title', type: 'text', required: false }],
};
const children = [];
let service, receiver, failing, browser, dataDir;

/** Starts a process and resolves with the address it prints after "listening on http://". */
function start(args, env) {
  return new Promise((ok, fail) => {
    const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    const timer = setTimeout(() => fail(new Error(`${args.join(' ')} did not start: ${out}`)), 30000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on http:\/\/(\S+)/);
      if (m) { clearTimeout(timer); ok({ child, addr: m[1], out: () => out }); }
    });
    child.stderr.on('data', (d) => { out += d; });
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`${BIN} exited ${code}: ${out}`)); });
  });
}

async function call(method, path, key, body) {
  const r = await fetch(`http://${service.addr}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'touchpoint-console-'));
  receiver = await start(['receiver', '--listen', '127.0.0.1:0', '--token', TOKEN], {});
  // Fails every third user with a reason, answers the rest as delivered.
  failing = createServer((req, res) => {
    let raw = '';
    req.on('data', (d) => { raw += d; });
    req.on('end', () => {
      const body = JSON.parse(raw);
      const sendStatusList = body.dataList.map((u) => (u.gid % 3 === 0
        ? { gid: u.gid, status: 'TOU_FAIL', errorMsg: 'number blocked' }
        : { gid: u.gid, status: 'TOU_SUCC', errorMsg: '' }));
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ code: 0, message: '', orderNo: body.orderNo, sendStatusList }));
    });
  });
  await new Promise((ok) => failing.listen(0, '127.0.0.1', ok));
  service = await start(['--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    TOUCHPOINT_API_KEYS: `${ADMIN}=1:admin,${CAMPAIGN}=1:campaign`,
    TOUCHPOINT_ALLOW_PRIVATE_NETWORKS: 'true',
    TOUCHPOINT_LOG: 'warn',
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children) c.kill('SIGTERM');
  if (failing) failing.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** A page that records every response body it receives and every console error. */
async function openPage(locale) {
  const context = await browser.newContext({ locale, viewport: { width: 1366, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  const bodies = [];
  const errors = [];
  page.on('response', async (r) => {
    try { bodies.push({ url: r.url(), text: await r.text() }); } catch { /* a body already gone */ }
  });
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`http://${service.addr}/`);
  return { context, page, bodies, errors };
}

async function signIn(page) {
  await page.getByLabel('API key or bearer token').fill(ADMIN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Touchpoints', exact: true }).waitFor();
}

/** A step of one walk-through: after a failed step the rest are skipped, not failed in turn. */
let broken = null;
async function step(t, name, fn) {
  await t.test(name, { skip: broken ? `skipped: "${broken}" failed` : false }, async () => {
    try { await fn(); } catch (e) { broken = name; throw e; }
  });
}

/** Waits until `selector` matches exactly `n` elements (a locator's count() does not wait). */
async function rowsAre(page, selector, n) {
  try {
    await page.waitForFunction(([sel, want]) => document.querySelectorAll(sel).length === want, [selector, n], { timeout: 10000 });
  } catch (e) {
    assert.equal(await page.locator(selector).count(), n, `${selector}: ${e.message}`);
  }
}

const row = (page, name) => page.locator('table.list tbody tr', { has: page.locator('.name', { hasText: name }) });

test('the console does everything on the product page, in English and Chinese', async (t) => {
  const { context, page, bodies, errors } = await openPage('en-US');
  const dialog = page.locator('dialog');

  await step(t, 'sign in: a wrong key is refused in place, the right one kept for the tab only', async () => {
    assert.equal(await page.getByRole('heading', { name: 'Sign in' }).count(), 1);
    await page.getByLabel('API key or bearer token').fill('not-a-key');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('This key or token was not accepted.').waitFor();
    await signIn(page);
    await page.getByText('No touchpoints match.').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('touchpoint.key')), ADMIN);
    assert.equal(await page.evaluate(() => JSON.stringify(localStorage)).then((s) => s.includes(ADMIN)), false);
  });

  let id;
  await step(t, 'add a touchpoint through the dialog, fixing a validation error in place', async () => {
    await page.getByRole('button', { name: 'Add touchpoint' }).click();
    await dialog.getByRole('heading', { name: 'Add touchpoint' }).waitFor();
    const name = dialog.getByLabel(/^Name/);
    await name.fill('SMS gateway');
    await dialog.getByText('11/15').waitFor();
    await dialog.getByLabel(/^Kind/).selectOption('benefit');
    const url = dialog.getByLabel(/^Request URL/);
    await url.fill('ftp://sms.example.com/touch');
    await dialog.getByLabel('Token (optional)').fill(TOKEN);
    // The receipt URL is asked for only in async mode.
    const receiptUrl = dialog.getByLabel(/^Receipt URL/);
    assert.equal(await receiptUrl.isVisible(), false);
    await dialog.getByLabel(/Async: results polled/).check();
    assert.equal(await receiptUrl.isVisible(), true);
    // The form's bounds and defaults are the API's, read from its OpenAPI document.
    const timeout = dialog.getByLabel(/^Receipt timeout/);
    assert.deepEqual([await timeout.getAttribute('min'), await timeout.getAttribute('max'), await timeout.inputValue()], ['5', '10080', '60']);
    const batchSize = dialog.getByLabel(/^Batch size/);
    assert.deepEqual([await batchSize.getAttribute('min'), await batchSize.getAttribute('max'), await batchSize.inputValue()], ['1', '500', '500']);
    await dialog.getByLabel(/Sync: results in/).check();
    assert.equal(await receiptUrl.isVisible(), false);
    await dialog.getByLabel(/^Batch size/).fill('100');
    await dialog.getByRole('button', { name: 'Save' }).click();

    // The server's complaint sits under the URL field, which is marked invalid and focused.
    const urlId = await url.getAttribute('id');
    const err = page.locator(`#${urlId}-err`);
    await err.waitFor({ state: 'visible' });
    assert.match(await err.textContent(), /http or https/);
    assert.equal(await url.getAttribute('aria-invalid'), 'true');
    assert.equal(await url.evaluate((el) => el === document.activeElement), true);
    assert.match(await url.getAttribute('aria-describedby'), new RegExp(`${urlId}-err`));
    await page.screenshot({ path: join(ARTIFACTS, 'dialog-validation-error.png') });
    // Errors about whole lists sit under those lists.
    assert.match(await dialog.locator('div.table-wrap + .error').textContent(), /at least 1 user attribute/);
    assert.match(await dialog.locator('div.params + .error').textContent(), /at least 1 template parameter/);

    await dialog.getByRole('button', { name: 'Add user attribute' }).click();
    const attr = dialog.locator('tr.attr').first();
    await attr.getByLabel('Attribute').fill('usr_name');
    await attr.getByLabel('Identifier').fill('name');
    await attr.getByLabel('Display name').fill('Name');
    await attr.getByLabel('Default').fill('member');
    await dialog.getByRole('button', { name: 'Add template parameter' }).click();
    const param = dialog.locator('fieldset.param').first();
    await param.getByLabel(/^Identifier/).fill('title');
    await param.getByLabel(/^Display name/).fill('Title');
    await param.getByLabel('Required').check();
    // An enum entered by hand, and a date.
    await dialog.getByRole('button', { name: 'Add template parameter' }).click();
    const jump = dialog.locator('fieldset.param').nth(1);
    await jump.getByLabel(/^Identifier/).fill('jump');
    await jump.getByLabel(/^Display name/).fill('Jump');
    assert.equal(await jump.getByLabel('Options', { exact: true }).isVisible(), false, 'options only for an enum');
    await jump.getByLabel(/^Type/).selectOption('enum');
    await jump.getByLabel('Options', { exact: true }).fill('JUMP_H5 | 跳转到 h5 页面\nNO_JUMP | 无跳转');
    await jump.getByLabel('Required').check();
    await dialog.getByRole('button', { name: 'Add template parameter' }).click();
    const day = dialog.locator('fieldset.param').nth(2);
    await day.getByLabel(/^Identifier/).fill('startDate');
    await day.getByLabel(/^Display name/).fill('Start');
    await day.getByLabel(/^Type/).selectOption('date');
    await url.fill(`http://${receiver.addr}/touch`);
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.getByText('“SMS gateway” is created.').waitFor();
    const r = row(page, 'SMS gateway');
    await r.waitFor();
    id = await r.getAttribute('data-id');
    const cells = await r.locator('td').allTextContents();
    assert.deepEqual(cells.slice(0, 6), ['Benefit', receiver.addr, '100', 'Sync', 'Enabled', '—']);
    // Nothing typed into the dialog stays in the page.
    assert.equal(await page.evaluate((tok) => document.documentElement.outerHTML.includes(tok)
      || [...document.querySelectorAll('input, textarea')].some((i) => i.value.includes(tok)), TOKEN), false);
  });

  await step(t, 'authorize a space', async () => {
    await row(page, 'SMS gateway').getByRole('button', { name: 'Spaces' }).click();
    const input = dialog.getByLabel('Another space ID');
    await input.fill('space-a');
    await input.press('Enter');
    await input.fill('space-b');
    await dialog.getByRole('button', { name: 'Add', exact: true }).click();
    await dialog.getByLabel('space-b').uncheck();
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await row(page, 'SMS gateway').locator('td', { hasText: 'space-a' }).waitFor();
    const tp = await call('GET', `/v1/touchpoints/${id}`, ADMIN);
    assert.deepEqual(tp.body.spaceIds, ['space-a']);
  });

  await step(t, 'test send to the reference receiver shows the request, status, latency and receipt', async () => {
    await row(page, 'SMS gateway').getByRole('button', { name: 'Test' }).click();
    await dialog.getByLabel('Name (usr_name)').fill('Alice');
    const title = dialog.getByLabel(/^Title \(title\)/);
    await title.fill('Hi ');
    await dialog.getByLabel('Insert a user attribute…').selectOption('name');
    assert.equal(await title.inputValue(), 'Hi {{name}}');
    const jump = dialog.getByLabel(/^Jump \(jump\)/);
    await jump.locator('option', { hasText: '无跳转 (NO_JUMP)' }).waitFor({ state: 'attached' });
    await jump.selectOption('NO_JUMP');
    const start = dialog.getByLabel(/^Start \(startDate\)/);
    assert.equal(await start.getAttribute('type'), 'date', 'a date picker');
    await start.fill('2026-12-01');
    await dialog.getByRole('button', { name: 'Send' }).click();
    const result = dialog.locator('section.result');
    await result.getByRole('heading', { name: 'Result' }).waitFor();
    assert.match(await result.locator('dl.facts').textContent(), /HTTP status200Latency\d+ ms/);
    assert.match(await result.locator('table').textContent(), /1TOU_SUCC/);
    await result.getByText('Request sent (token never shown)').click();
    const sent = JSON.parse(await result.locator('pre').first().textContent());
    assert.equal(sent.body.dataList[0].temData.title, 'Hi Alice');
    assert.equal(sent.body.dataList[0].dynamicData.name, 'Alice');
    assert.equal(sent.body.dataList[0].temData.jump, 'NO_JUMP');
    assert.equal(sent.body.dataList[0].temData.startDate, '2026-12-01');
    assert.equal(JSON.stringify(sent).includes(TOKEN), false);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    const stats = await fetch(`http://${receiver.addr}/stats`).then((r) => r.json());
    assert.equal(JSON.stringify(stats).includes('"rejected":0'), true, `the receiver verified the signature: ${JSON.stringify(stats)}`);
  });

  await step(t, 'editing an enabled touchpoint is refused with the reason; disable, edit, enable', async () => {
    const r = row(page, 'SMS gateway');
    const edit = r.getByRole('button', { name: 'Edit' });
    assert.equal(await edit.getAttribute('aria-disabled'), 'true');
    // Still focusable, so keyboard and screen-reader users hear why.
    await edit.focus();
    await page.keyboard.press('Enter');
    await page.locator('#toast').getByText('An enabled touchpoint cannot be edited: disable it first.').waitFor();
    assert.equal(await dialog.isVisible(), false);
    // Its settings can still be read: the name opens them, read-only.
    await r.getByRole('button', { name: 'SMS gateway' }).click();
    await dialog.getByRole('heading', { name: '“SMS gateway”' }).waitFor();
    assert.equal(await dialog.getByLabel(/^Request URL/).isDisabled(), true);
    assert.equal(await dialog.getByLabel(/^Request URL/).inputValue(), `http://${receiver.addr}/touch`);
    assert.match(await dialog.locator('fieldset.param').nth(1).getByLabel('Options', { exact: true }).inputValue(), /NO_JUMP \| 无跳转/);
    assert.equal(await dialog.getByRole('button', { name: 'Save' }).count(), 0);
    await dialog.getByRole('button', { name: 'Close' }).last().click();
    await dialog.waitFor({ state: 'hidden' });

    await r.getByRole('button', { name: 'Disable' }).click();
    await r.locator('.badge', { hasText: 'Disabled' }).waitFor();
    await r.getByRole('button', { name: 'Edit' }).click();
    await dialog.getByRole('heading', { name: 'Edit “SMS gateway”' }).waitFor();
    assert.equal(await dialog.getByLabel(/^Kind/).isDisabled(), true, 'the kind is locked');
    assert.equal(await dialog.getByLabel('Keep the current token').isChecked(), true);
    assert.equal(await dialog.getByLabel('New token').isDisabled(), true);
    await dialog.getByLabel(/^Batch size/).fill('200');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await r.locator('td', { hasText: '200' }).waitFor();
    const tp = await call('GET', `/v1/touchpoints/${id}`, ADMIN);
    assert.equal(tp.body.tokenSet, true, 'the token was kept');
    assert.equal(tp.body.templateParams[0].required, true);
    assert.deepEqual(tp.body.templateParams[1].enum.options.map((o) => o.code), ['JUMP_H5', 'NO_JUMP'], 'the edit kept the enum');

    await r.getByRole('button', { name: 'Enable' }).click();
    await r.locator('.badge', { hasText: 'Enabled' }).waitFor();
  });

  await step(t, 'disabling while a running campaign uses it names the campaign', async () => {
    const put = await call('PUT', `/v1/touchpoints/${id}/campaigns/cmp-1111`, CAMPAIGN, { name: '双十一大促', state: 'running' });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    await row(page, 'SMS gateway').getByRole('button', { name: 'Disable' }).click();
    await dialog.getByRole('heading', { name: 'Cannot disable' }).waitFor();
    assert.match(await dialog.locator('ul.campaigns').textContent(), /双十一大促 cmp-1111 · running/);
    await dialog.getByRole('button', { name: 'OK' }).click();
    await row(page, 'SMS gateway').locator('.badge', { hasText: 'Enabled' }).waitFor();
  });

  await step(t, 'rotate the token while enabled, then read who did what in the audit log', async () => {
    await row(page, 'SMS gateway').getByRole('button', { name: 'Rotate token' }).click();
    await dialog.getByRole('heading', { name: 'Rotate the token' }).waitFor();
    const hours = dialog.getByLabel(/^Overlap \(hours\)/);
    assert.equal(await hours.inputValue(), '24', 'the API default');
    assert.equal(await hours.getAttribute('max'), '168');
    await dialog.getByLabel(/^New token/).fill(ROTATED);
    await hours.fill('200');
    await dialog.getByRole('button', { name: 'Rotate' }).click();
    await dialog.getByText('must be a number of hours from 0 to 168').waitFor();
    await hours.fill('2');
    await dialog.getByRole('button', { name: 'Rotate' }).click();
    await page.getByText(/The token of “SMS gateway” is rotated; the old one is used beside it until/).waitFor();
    const tp = (await call('GET', `/v1/touchpoints/${id}`, ADMIN)).body;
    assert.equal(tp.enabled, true);
    const ahead = Date.parse(tp.tokenOverlapUntil) - Date.now();
    assert.ok(ahead > 7_000_000 && ahead <= 7_200_000, `overlap ends in ${ahead} ms`);

    await row(page, 'SMS gateway').getByRole('link', { name: 'History' }).click();
    await page.getByRole('heading', { name: `Audit log of ${id}` }).waitFor();
    const rows = page.locator('table.audit tbody tr');
    await rows.first().waitFor();
    const first = rows.first();
    assert.equal(await first.getAttribute('data-action'), 'touchpoint.token.rotate');
    assert.match(await first.textContent(), new RegExp(`${keyId(ADMIN)}Token rotated`));
    assert.match(await first.locator('ul.changes').textContent(), /token: changed/);
    const campaignRow = page.locator('table.audit tbody tr[data-action="campaign.put"]').first();
    assert.match(await campaignRow.textContent(), new RegExp(`${keyId(CAMPAIGN)}Campaign reference recordedcmp-1111`));
    assert.match(await campaignRow.locator('ul.changes').textContent(), /state: .*→ running/);
    const actions = await page.locator('table.audit tbody tr').evaluateAll((trs) => trs.map((tr) => tr.dataset.action));
    assert.equal(actions.at(-1), 'touchpoint.create');
    assert.ok(actions.includes('touchpoint.spaces') && actions.includes('touchpoint.disable') && actions.includes('touchpoint.edit'), actions.join());
    await page.screenshot({ path: join(ARTIFACTS, 'audit.png'), fullPage: true });
    await page.getByRole('link', { name: '← All touchpoints' }).click();
    await page.getByRole('heading', { name: 'Touchpoints', exact: true }).waitFor();
  });

  await step(t, 'pause by hand with a reason, see it in the list and the health, then resume', async () => {
    const r = row(page, 'SMS gateway');
    await r.getByRole('button', { name: 'Pause' }).click();
    await dialog.getByRole('heading', { name: 'Pause the touchpoint' }).waitFor();
    await dialog.getByLabel('Reason (optional)').fill('gateway maintenance');
    await dialog.getByRole('button', { name: 'Pause' }).click();
    await page.getByText('“SMS gateway” is paused.').waitFor();
    const badge = row(page, 'SMS gateway').locator('[data-health="paused"]');
    await badge.waitFor();
    assert.equal(await badge.textContent(), 'Paused');
    assert.match(await badge.getAttribute('title'), /gateway maintenance/);
    const health = (await call('GET', `/v1/touchpoints/${id}`, ADMIN)).body.health;
    assert.equal(health.state, 'paused');
    assert.equal(health.manual, true);
    await row(page, 'SMS gateway').getByRole('button', { name: 'Resume' }).click();
    await page.getByText('“SMS gateway” is resumed.').waitFor();
    await row(page, 'SMS gateway').getByRole('button', { name: 'Pause' }).waitFor();
    assert.equal(await row(page, 'SMS gateway').locator('[data-health]').count(), 0, 'healthy: no badge');
    assert.equal((await call('GET', `/v1/touchpoints/${id}`, ADMIN)).body.health.state, 'healthy');
  });

  await step(t, 'set where notifications go, keep their token on the next save, and remove them', async () => {
    await page.getByRole('link', { name: 'Notifications' }).click();
    await page.getByRole('heading', { name: 'Notifications', exact: true }).waitFor();
    const url = page.getByLabel(/^Endpoint URL/);
    await url.fill('ftp://ops.example.com/hooks');
    await page.getByLabel(/^Signing token/).fill(NOTIFY_TOKEN);
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByText('must be an http or https URL').waitFor();
    await url.fill('https://ops.example.com/hooks');
    await page.getByRole('checkbox', { name: /receipt\.timeout/ }).uncheck();
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByText('Notifications saved.').waitFor();
    let kept = (await call('GET', '/v1/notifications', ADMIN)).body;
    assert.equal(kept.url, 'https://ops.example.com/hooks');
    assert.deepEqual(kept.events, ['touchpoint.paused', 'touchpoint.resumed', 'dispatch.completed', 'batch.retries_exhausted']);
    assert.equal(kept.tokenSet, true);
    // Shown again: the token is not, and saving without one keeps it.
    const token = page.getByLabel(/^Signing token/);
    await token.waitFor();
    assert.equal(await token.inputValue(), '');
    assert.equal(await token.getAttribute('placeholder'), 'kept (type to replace)');
    assert.equal(await page.getByRole('checkbox', { name: /receipt\.timeout/ }).isChecked(), false);
    await page.getByRole('checkbox', { name: /dispatch\.completed/ }).uncheck();
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByText('Notifications saved.').waitFor();
    kept = (await call('GET', '/v1/notifications', ADMIN)).body;
    assert.equal(kept.events.includes('dispatch.completed'), false);
    const audit = (await call('GET', '/v1/audit?limit=2', ADMIN)).body.items;
    assert.deepEqual(audit.map((e) => e.action), ['notifications.put', 'notifications.put']);
    assert.equal(audit[0].changes.some((c) => c.field === 'token'), false, 'the token was kept');
    page.once('dialog', (d) => d.accept());
    await page.getByRole('button', { name: 'Remove' }).click();
    await page.getByText('Notifications removed.').waitFor();
    assert.equal((await call('GET', '/v1/notifications', ADMIN)).status, 404);
    await page.getByRole('link', { name: '← All touchpoints' }).click();
    await page.getByRole('heading', { name: 'Touchpoints', exact: true }).waitFor();
  });

  await step(t, 'delivery view: totals, chart, failure reasons and a batch drill-down', async () => {
    const created = await call('POST', '/v1/touchpoints', ADMIN, {
      name: 'Coupons', kind: 'benefit', url: `http://127.0.0.1:${failing.address().port}/touch`, batchSize: 30, receipt: { mode: 'sync' }, ...PARAMS,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const other = created.body;
    await call('PUT', `/v1/touchpoints/${other.id}/spaces`, ADMIN, { spaceIds: ['space-a'] });
    await call('POST', `/v1/touchpoints/${other.id}/enable`, ADMIN, null);
    const users = Array.from({ length: 30 }, (_, i) => ({ gid: i + 1, attributes: {} }));
    const d = await call('POST', '/v1/dispatches', CAMPAIGN, {
      dispatchId: 'console-d1', projectId: 1, spaceId: 'space-a', campaignId: 'cmp-2222', touchpointId: other.id, templateValues: {}, users,
    });
    assert.equal(d.status, 202, JSON.stringify(d.body));
    for (let i = 0; i < 100; i++) {
      const s = await call('GET', '/v1/dispatches/console-d1', CAMPAIGN);
      if (s.body.state === 'completed') break;
      await new Promise((ok) => setTimeout(ok, 100));
    }
    await page.reload();
    await row(page, 'Coupons').locator('td', { hasText: '66.7%' }).waitFor();
    await row(page, 'Coupons').getByRole('link', { name: 'Delivery' }).click();
    await page.getByRole('heading', { name: 'Delivery of “Coupons”' }).waitFor();
    const cards = await page.locator('.cards .stat').allTextContents();
    assert.deepEqual(cards, ['Sent30', 'Succeeded20', 'Failed10', 'Pending0', 'Success rate, last 24 h66.7%']);
    assert.ok(await page.locator('svg.chart rect.ok').count() >= 24, 'a bar per hour');
    assert.equal(await page.locator('svg.chart polyline.pending').count(), 1, 'a line of pending users');
    await page.screenshot({ path: join(ARTIFACTS, 'delivery.png'), fullPage: true });
    const reason = page.locator('table.reasons tbody tr');
    assert.deepEqual(await reason.first().locator('td').allTextContents(), ['number blocked', '10', 'View batch']);
    await page.getByRole('radio', { name: 'Last 168 h' }).check();
    await page.getByText('Success rate, last 168 h').waitFor();
    await page.locator('table.reasons tbody tr').first().getByRole('link', { name: 'View batch' }).click();
    await page.getByRole('heading', { name: 'Batch' }).waitFor();
    await rowsAre(page, 'table.small tbody tr', 30);
    await page.getByRole('radio', { name: 'Failed' }).check();
    await rowsAre(page, 'table.small tbody tr', 10);
    assert.match(await page.locator('table.small tbody tr').first().textContent(), /3TOU_FAILnumber blocked/);
    // Per campaign, through the dispatch.
    await page.getByRole('link', { name: 'console-d1' }).click();
    await page.getByRole('heading', { name: 'Dispatch console-d1' }).waitFor();
    await page.getByRole('link', { name: 'cmp-2222' }).click();
    await page.getByRole('heading', { name: 'Delivery of campaign cmp-2222' }).waitFor();
    assert.equal((await page.locator('.cards .stat').first().textContent()), 'Sent30');
    // Straight to a campaign or a dispatch by its ID.
    await page.getByLabel('Open a campaign’s delivery by its ID').fill('cmp-2222');
    await page.getByLabel('Open a campaign’s delivery by its ID').press('Enter');
    await page.getByRole('heading', { name: 'Delivery of campaign cmp-2222' }).waitFor();
    await page.getByLabel('Open a dispatch by its ID').fill('no-such-dispatch');
    await page.getByLabel('Open a dispatch by its ID').press('Enter');
    await page.getByText('No dispatch with this ID.').waitFor();
    await page.getByRole('link', { name: '← All touchpoints' }).click();
    await row(page, 'Coupons').waitFor();
  });

  await step(t, 'a dispatch of more than 100 batches is listed a page at a time', async () => {
    const created = await call('POST', '/v1/touchpoints', ADMIN, {
      name: 'Single', kind: 'benefit', url: `http://127.0.0.1:${failing.address().port}/touch`, batchSize: 1, receipt: { mode: 'sync' }, ...PARAMS,
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const single = created.body;
    await call('PUT', `/v1/touchpoints/${single.id}/spaces`, ADMIN, { spaceIds: ['space-a'] });
    await call('POST', `/v1/touchpoints/${single.id}/enable`, ADMIN, null);
    const users = Array.from({ length: 150 }, (_, i) => ({ gid: i + 1, attributes: {} }));
    const d = await call('POST', '/v1/dispatches', CAMPAIGN, {
      dispatchId: 'console-paged', projectId: 1, spaceId: 'space-a', campaignId: 'cmp-3333', touchpointId: single.id, templateValues: {}, users,
    });
    assert.equal(d.status, 202, JSON.stringify(d.body));
    for (let i = 0; i < 200; i++) {
      const s = await call('GET', '/v1/dispatches/console-paged', CAMPAIGN);
      if (s.body.state === 'completed') break;
      await new Promise((ok) => setTimeout(ok, 100));
    }
    await page.goto(`http://${service.addr}/#/dispatches/console-paged`);
    await page.getByRole('heading', { name: 'Dispatch console-paged' }).waitFor();
    await page.getByText('Batches 1–100 of 150').waitFor();
    await rowsAre(page, 'table.small tbody tr', 100);
    assert.equal(await page.getByRole('link', { name: 'Previous batches' }).count(), 0);
    await page.getByRole('link', { name: 'More batches' }).click();
    await page.getByText('Batches 101–150 of 150').waitFor();
    await rowsAre(page, 'table.small tbody tr', 50);
    assert.equal(await page.getByRole('link', { name: 'More batches' }).count(), 0);
    await page.getByRole('link', { name: 'Previous batches' }).click();
    await page.getByText('Batches 1–100 of 150').waitFor();
    // Gone again, so the list the next steps count is as it was.
    const off = await call('POST', `/v1/touchpoints/${single.id}/disable`, ADMIN, null);
    assert.equal(off.status, 200, JSON.stringify(off.body));
    const gone = await call('DELETE', `/v1/touchpoints/${single.id}?version=${off.body.version}`, ADMIN, null);
    assert.equal(gone.status, 204, JSON.stringify(gone.body));
    await page.goto(`http://${service.addr}/`);
    await row(page, 'Coupons').waitFor();
  });

  await step(t, 'filter, search and page the list', async () => {
    for (let i = 0; i < 10; i++) {
      await call('POST', '/v1/touchpoints', ADMIN, { name: `Extra ${i}`, kind: 'other', url: 'https://example.com/t', batchSize: 10, receipt: { mode: 'sync' }, ...PARAMS });
    }
    await page.reload();
    await page.getByText('Page 1').waitFor();
    await rowsAre(page, 'table.list tbody tr', 10);
    await page.getByRole('button', { name: 'Next' }).click();
    await page.getByText('Page 2').waitFor();
    await rowsAre(page, 'table.list tbody tr', 2);
    await page.getByRole('button', { name: 'Previous' }).click();
    await page.getByText('Page 1').waitFor();
    await page.getByLabel('Kind').selectOption('benefit');
    await page.waitForFunction(() => document.querySelectorAll('table.list tbody tr').length === 2);
    await page.getByLabel('State').selectOption('true');
    await page.waitForFunction(() => document.querySelectorAll('table.list tbody tr').length === 2);
    await page.getByLabel('Search by name').fill('SMS');
    await page.waitForFunction(() => document.querySelectorAll('table.list tbody tr').length === 1);
    await page.getByLabel('Search by name').fill('');
    await page.getByLabel('Kind').selectOption('');
    await page.getByLabel('State').selectOption('');
    await page.waitForFunction(() => document.querySelectorAll('table.list tbody tr').length === 10);
    await page.screenshot({ path: join(ARTIFACTS, 'list.png'), fullPage: true });
  });

  await step(t, 'disable once the campaign ended, then delete after confirming', async () => {
    await call('PUT', `/v1/touchpoints/${id}/campaigns/cmp-1111`, CAMPAIGN, { name: '双十一大促', state: 'ended' });
    const r = row(page, 'SMS gateway');
    const del = r.getByRole('button', { name: 'Delete' });
    assert.equal(await del.getAttribute('aria-disabled'), 'true', 'an enabled touchpoint cannot be deleted');
    await r.getByRole('button', { name: 'Disable' }).click();
    await r.locator('.badge', { hasText: 'Disabled' }).waitFor();
    await r.getByRole('button', { name: 'Delete' }).click();
    await dialog.getByText('Delete “SMS gateway”? This cannot be undone.').waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await r.waitFor();
    await r.getByRole('button', { name: 'Delete' }).click();
    await dialog.getByRole('button', { name: 'Delete' }).click();
    await page.getByText('“SMS gateway” is deleted.').waitFor();
    assert.equal(await row(page, 'SMS gateway').count(), 0);
    assert.equal((await call('GET', `/v1/touchpoints/${id}`, ADMIN)).status, 404);
  });

  await step(t, 'dialogs work from the keyboard; every control is labelled; focus is visible', async () => {
    const add = page.getByRole('button', { name: 'Add touchpoint' });
    await add.focus();
    await page.keyboard.press('Enter');
    await dialog.getByRole('heading', { name: 'Add touchpoint' }).waitFor();
    assert.equal(await dialog.getByLabel(/^Name/).evaluate((el) => el === document.activeElement), true, 'focus moves into the dialog');
    await dialog.getByRole('button', { name: 'Add user attribute' }).press('Enter');
    await dialog.getByRole('button', { name: 'Add template parameter' }).press('Enter');
    await dialog.locator('fieldset.param').getByLabel(/^Type/).selectOption('enum');
    const unlabelled = await page.evaluate(() => [...document.querySelectorAll('dialog input, dialog select, dialog textarea')]
      .filter((el) => !el.closest('[hidden]') && el.labels.length === 0 && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
      .map((el) => el.outerHTML));
    assert.deepEqual(unlabelled, []);
    await page.keyboard.press('Tab');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'the focused control shows an outline');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await add.evaluate((el) => el === document.activeElement), true, 'focus returns to the button');
  });

  await step(t, 'switch to Chinese: every visible string changes', async () => {
    await page.getByLabel('Language').selectOption('zh');
    await page.getByRole('heading', { name: '自定义触点管理' }).waitFor();
    await page.getByRole('button', { name: '添加触点' }).waitFor();
    const headers = await page.locator('table.list thead th').allTextContents();
    assert.deepEqual(headers, ['触点名称', '触点类型', '请求地址主机', '批次设定', '回执', '状态', '空间', '近 24 小时成功率', '操作']);
    await row(page, 'Coupons').locator('.badge', { hasText: '已启用' }).waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'list-zh.png'), fullPage: true });
    await page.getByRole('button', { name: '添加触点' }).click();
    await dialog.getByRole('heading', { name: '添加触点' }).waitFor();
    await dialog.getByText('基础信息').waitFor();
    await dialog.getByText('发送参数').waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'dialog-zh.png') });
    await page.keyboard.press('Escape');
    // The choice is remembered for the next visit.
    await page.reload();
    await page.getByRole('heading', { name: '触点列表', exact: true }).waitFor();
  });

  await step(t, 'the token never reaches the page, and nothing failed in it', async () => {
    assert.ok(bodies.length > 20, `responses seen: ${bodies.length}`);
    const leaking = bodies.filter((b) => b.text.includes(TOKEN) || b.text.includes('c2VjcmV0LWJyb3dzZXItdG9rZW4tNDI') || b.text.includes(ROTATED) || b.text.includes(NOTIFY_TOKEN));
    assert.deepEqual(leaking.map((b) => b.url), []);
    assert.equal(await page.evaluate((tok) => document.documentElement.outerHTML.includes(tok), TOKEN), false);
    assert.equal(await page.evaluate((tok) => document.documentElement.outerHTML.includes(tok), ROTATED), false);
    assert.deepEqual(errors.filter((e) => !/status of 4\d\d/.test(e)), []);
  });

  await context.close();
});

test('a Chinese browser gets the console in Chinese', async () => {
  const { context, page, errors } = await openPage('zh-CN');
  await page.getByRole('heading', { name: '登录' }).waitFor();
  await page.getByLabel('API 密钥或 Bearer 令牌').fill(ADMIN);
  await page.getByRole('button', { name: '登录' }).click();
  await page.getByRole('heading', { name: '触点列表', exact: true }).waitFor();
  await page.getByRole('button', { name: '退出' }).click();
  await page.getByRole('heading', { name: '登录' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('touchpoint.key')), null);
  assert.deepEqual(errors.filter((e) => !/status of 4\d\d/.test(e)), []);
  await context.close();
});

test('the console files are served with a strict content security policy', async () => {
  for (const path of ['/', '/console/main.js', '/console/i18n.js', '/console/app.css']) {
    const r = await fetch(`http://${service.addr}${path}`);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-security-policy'), /default-src 'none'; script-src 'self'/);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  }
  assert.equal((await fetch(`http://${service.addr}/console/missing.js`)).status, 404);
  // Both languages hold the same strings.
  // (The module the binary embeds, read from the source tree: it imports its siblings.)
  const { I18N } = await import('../../functions/admin-api/console/i18n.js');
  assert.deepEqual(Object.keys(I18N.zh).sort(), Object.keys(I18N.en).sort());
  // And none is written twice in a language (the later one would silently win).
  const source = readFileSync(join(ROOT, 'functions/admin-api/console/i18n.js'), 'utf8');
  for (const block of source.split(/^  (?:en|zh): \{$/m).slice(1)) {
    const keys = [...block.split(/^  \},?$/m)[0].matchAll(/^    (\w+):/gm)].map((m) => m[1]);
    assert.deepEqual(keys.filter((k, i) => keys.indexOf(k) !== i), [], 'keys written twice');
  }
});
