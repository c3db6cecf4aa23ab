/**
 * Issue 12, point 2 (first step): for every project-scoped operation of the served
 * OpenAPI document, a token scoped to proj-a gets 403 on proj-b, never data.
 */
import { describe, expect, it } from 'vitest';
import { SCOPED, makeApi } from '../unit/controller-helpers.js';

describe('project isolation', () => {
  it('a proj-a token gets 403 with the API error shape on every proj-b operation', async () => {
    const { app } = makeApi();
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json();
    let checked = 0;
    for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
      if (!path.includes('{project_id}')) continue;
      for (const method of Object.keys(item)) {
        if (!['get', 'post', 'put', 'delete', 'patch'].includes(method)) continue;
        const url = path.replace('{project_id}', 'proj-b').replace(/\{[^}]+\}/g, '00000000-0000-4000-8000-000000000001');
        const bodyless = method === 'get' || method === 'delete';
        const r = await app.inject({
          method: method.toUpperCase() as 'GET',
          url,
          headers: bodyless ? { 'x-auth-token': SCOPED } : { 'x-auth-token': SCOPED, 'content-type': 'application/json' },
          ...(bodyless ? {} : { payload: '{}' }),
        });
        expect(r.statusCode, `${method} ${url}`).toBe(403);
        expect(r.json().error_code, `${method} ${url}`).toBe('SG.0003');
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(5);
  });
});
