// Talking to the API: `api()` sends the signed-in key to this origin only and turns error
// answers into ApiError; `limits` are the bounds the API enforces, read from its own OpenAPI
// document at start so the form and the server agree.
import { t } from './i18n.js';
import { signOut } from './router.js';
import { signedInKey } from './state.js';

export const KINDS = ['notification', 'benefit', 'other'];
export const TYPES = ['text', 'date', 'number', 'enum'];

/** The values here are only what the form uses if reading the API's own fails. */
export const limits = {
  nameMax: 15, batchMin: 1, batchMax: 500, batchDefault: 500, timeoutMin: 5, timeoutMax: 10080, timeoutDefault: 60,
  // maxConcurrency and maxRequestsPerSecond; absent, the deployment's 4 in flight and no rate limit apply.
  concurrencyMin: 1, concurrencyMax: 64, concurrencyDefault: 4, rateMin: 1, rateMax: 10000,
  // requestTimeoutSeconds; absent, the deployment's request timeout applies.
  requestTimeoutMin: 1, requestTimeoutMax: 60,
  // A token rotation's overlap, in hours.
  overlapDefault: 24, overlapMax: 168,
};

export async function loadLimits() {
  try {
    const r = await fetch('/v1/openapi.json', { headers: { Accept: 'application/json' } });
    if (!r.ok) return;
    const schemas = (await r.json()).components.schemas;
    const p = schemas.TouchpointInput.properties;
    const receipt = schemas.ReceiptInput.oneOf.find((v) => v.properties?.mode?.enum?.includes('async'));
    const timeout = receipt?.properties?.timeoutMinutes ?? {};
    const pick = (v, fallback) => (Number.isFinite(v) ? v : fallback);
    limits.nameMax = pick(p.name?.maxLength, limits.nameMax);
    limits.batchMin = pick(p.batchSize?.minimum, limits.batchMin);
    limits.batchMax = pick(p.batchSize?.maximum, limits.batchMax);
    limits.batchDefault = pick(p.batchSize?.default, limits.batchDefault);
    limits.timeoutMin = pick(timeout.minimum, limits.timeoutMin);
    limits.timeoutMax = pick(timeout.maximum, limits.timeoutMax);
    limits.timeoutDefault = pick(timeout.default, limits.timeoutDefault);
    limits.concurrencyMin = pick(p.maxConcurrency?.minimum, limits.concurrencyMin);
    limits.concurrencyMax = pick(p.maxConcurrency?.maximum, limits.concurrencyMax);
    limits.rateMin = pick(p.maxRequestsPerSecond?.minimum, limits.rateMin);
    limits.rateMax = pick(p.maxRequestsPerSecond?.maximum, limits.rateMax);
    limits.requestTimeoutMin = pick(p.requestTimeoutSeconds?.minimum, limits.requestTimeoutMin);
    limits.requestTimeoutMax = pick(p.requestTimeoutSeconds?.maximum, limits.requestTimeoutMax);
    const overlap = schemas.RotateInput?.properties?.overlapHours ?? {};
    limits.overlapDefault = pick(overlap.default, limits.overlapDefault);
    limits.overlapMax = pick(overlap.maximum, limits.overlapMax);
  } catch (e) {
    console.warn('could not read the API limits; using built-in ones', e);
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Calls the API with the signed-in key; a 401 ends the session, unless `signingIn`. */
export async function api(method, path, body, { signingIn = false } = {}) {
  const headers = { Authorization: `Bearer ${signedInKey() || ''}`, Accept: 'application/json' };
  const init = { method, headers, redirect: 'error', cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: { code: 'network', message: t('networkError') } });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: { code: 'not_json', message: text.slice(0, 200) } }; }
  }
  if (response.status === 401 && !signingIn) {
    signOut(t('sessionEnded'));
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const enc = encodeURIComponent;
